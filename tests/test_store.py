"""The store: durable settings, migrations, idempotent intake, and what logs may contain."""

from __future__ import annotations

import logging

from bot.store import MIGRATIONS, Store
from tests.test_conversation import inbound, make, png


def test_database_is_durable_and_migrated_once(tmp_path):
    store = Store(tmp_path)
    pragma = lambda name: store.db.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
    assert pragma("journal_mode") == "wal"
    assert pragma("synchronous") == 2  # FULL
    assert pragma("busy_timeout") >= 5000
    assert store.schema_version == len(MIGRATIONS)
    tables = set(store.db.table_names())
    assert {"conversations", "messages", "attachments", "escalations", "template_versions", "users", "audit_log"} <= tables
    store.close()
    reopened = Store(tmp_path)
    assert reopened.db.execute("select count(*) from schema_migrations").fetchone()[0] == len(MIGRATIONS)


def test_shipped_templates_seed_version_one_and_channels_default_to_general(tmp_path):
    manager, _, _ = make(tmp_path)
    versions = manager.store.template_versions("billing")
    assert [v["version"] for v in versions] == [1] and versions[0]["published_at"]
    assert manager.templates.template_name_for("slack") == "general"
    manager.store.set_channel_template("slack", "billing")
    assert manager.templates.template_name_for("slack") == "billing"
    manager.templates.seed()  # seeding again adds nothing
    assert len(manager.store.template_versions("billing")) == 1


async def test_logs_hold_no_message_text(tmp_path, caplog):
    manager, _, _ = make(tmp_path)
    secret = "my card 4111 1111 1111 1111 was charged twice"
    with caplog.at_level(logging.DEBUG):
        await manager.handle(inbound(secret, images=(png(),)))
        await manager.handle(inbound("I want to talk to a human about " + secret))
    assert "4111" not in caplog.text and "charged twice" not in caplog.text
