"""Gradual rollout: a template version answers a share of one channel's new conversations
beside the live version, until an operator promotes it to everyone or rolls it back.

Why it works this way:
- New conversations only, and sticky: a user must never see the bot change its voice in the
  middle of a conversation. A conversation draws its side once, on its first bot turn, and
  the draw is stored; changing the percent only changes what later conversations draw.
- The draw is a hash of (rollout, conversation), not a random number, so a retried turn, a
  second process or a test draws the same side.
- Operators race each other (one promotes while another rolls back, two start a rollout on
  one channel): every change is a compare-and-set in one transaction on the status it
  expects, so exactly one wins and the other learns why (RolloutConflict).
- Every step is written to the audit log in the transaction that makes it.

The functions take a Store and run on the database thread (`ConversationManager.db`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from . import queries
from .store import Store, iso

ACTIVE, PROMOTED, ROLLED_BACK = "active", "promoted", "rolled_back"
CANDIDATE, LIVE = "candidate", "live"  # the two arms of a rollout
ENDED_SHOWN = 20  # ended rollouts listed, newest first


class RolloutError(Exception):
    """A rollout change that cannot be made; the message says why, for the operator."""


class NoSuchRollout(RolloutError):
    pass


class InvalidRollout(RolloutError):
    """The request itself is wrong (a percent out of range, a version that does not exist)."""


class RolloutConflict(RolloutError):
    """Someone else changed the rollout (or the channel) first: nothing was changed."""


@dataclass(frozen=True)
class Rollout:
    id: int
    template: str
    version: int
    channel: str
    percent: float
    status: str
    started_by: str
    started_at: str
    updated_at: str
    ended_by: str | None = None
    ended_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rollouts(store: Store, where: str, params: list[Any]) -> list[Rollout]:
    return [Rollout(**row) for row in store.select(f"select * from template_rollouts where {where}", params)]


def get(store: Store, rollout_id: int) -> Rollout | None:
    found = _rollouts(store, "id = ?", [rollout_id])
    return found[0] if found else None


def active(store: Store, channel: str) -> Rollout | None:
    found = _rollouts(store, f"channel = ? and status = '{ACTIVE}'", [channel])  # the partial index's own words
    return found[0] if found else None


def listed(store: Store) -> list[Rollout]:
    """Active rollouts (by channel), then the most recently ended ones."""
    return [*_rollouts(store, "status = ? order by channel", [ACTIVE]),
            *_rollouts(store, "status != ? order by ended_at desc, id desc limit ?", [ACTIVE, ENDED_SHOWN])]


def live_version(store: Store, template: str) -> int | None:
    live = store.published_template_versions(template)
    return live[0]["version"] if live else None


def _percent(percent: float) -> float:
    if not 0 <= percent <= 100:
        raise InvalidRollout(f"The percent must be between 0 and 100, not {percent:g}.")
    return float(percent)


def start(store: Store, *, template: str, channel: str, percent: float, actor: str, version: int | None = None,
          body: str | None = None) -> Rollout:
    """Roll out a stored `version` of `template`, or a draft `body` stored first as a new
    unpublished version, to `percent` of the new conversations on `channel`."""
    percent = _percent(percent)
    if (version is None) == (body is None):
        raise InvalidRollout("Give either a stored version or a draft to roll out.")
    with store.transaction():
        running = active(store, channel)
        if running is not None:
            raise RolloutConflict(f"Channel {channel} already has a rollout of {running.template} version "
                                  f"{running.version}: promote it or roll it back first.")
        if body is not None:
            version = store.add_template_version(template, body, author=actor, publish=False)
        elif queries.template_version_body(store, template, version) is None:
            raise InvalidRollout(f"Template {template} has no version {version}.")
        if version == live_version(store, template):
            raise InvalidRollout(f"Version {version} of {template} is the live version already.")
        now = iso()
        rollout_id = store.db.conn.execute(
            "insert into template_rollouts (template, version, channel, percent, status, started_by, started_at, "
            "updated_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
            [template, version, channel, percent, ACTIVE, actor, now, now],
        ).lastrowid
        store.audit(actor, "rollout_start", f"rollout:{rollout_id}", template=template, version=version,
                    channel=channel, percent=percent, draft=body is not None)
        return get(store, rollout_id)  # type: ignore[return-value]


def _change(store: Store, rollout_id: int, assignments: str, params: list[Any]) -> Rollout:
    """Compare-and-set: change an active rollout, or raise (it does not exist, or has ended)."""
    changed = store.db.conn.execute(
        f"update template_rollouts set {assignments}, updated_at = ? where id = ? and status = ?",
        [*params, iso(), rollout_id, ACTIVE],
    ).rowcount
    rollout = get(store, rollout_id)
    if rollout is None:
        raise NoSuchRollout(f"There is no rollout {rollout_id}.")
    if not changed:
        raise RolloutConflict(f"The rollout of {rollout.template} version {rollout.version} on {rollout.channel} "
                              f"was {'promoted' if rollout.status == PROMOTED else 'rolled back'} already.")
    return rollout


def set_percent(store: Store, rollout_id: int, percent: float, actor: str) -> Rollout:
    """A new share for conversations that have not drawn yet; drawn ones keep their side."""
    percent = _percent(percent)
    with store.transaction():
        before = get(store, rollout_id)
        rollout = _change(store, rollout_id, "percent = ?", [percent])
        store.audit(actor, "rollout_percent", f"rollout:{rollout_id}", template=rollout.template,
                    version=rollout.version, channel=rollout.channel, percent=percent,
                    previous=before.percent if before else None)
        return rollout


def _end(store: Store, rollout_id: int, status: str, actor: str) -> Rollout:
    return _change(store, rollout_id, "status = ?, ended_by = ?, ended_at = ?", [status, actor, iso()])


def promote(store: Store, rollout_id: int, actor: str) -> Rollout:
    """The candidate is published: the live version for every conversation, old and new."""
    with store.transaction():
        rollout = _end(store, rollout_id, PROMOTED, actor)
        previous = live_version(store, rollout.template)
        store.publish_template_version(rollout.template, rollout.version)
        store.audit(actor, "rollout_promote", f"rollout:{rollout_id}", template=rollout.template,
                    version=rollout.version, channel=rollout.channel, percent=rollout.percent,
                    previous_live=previous)
        return rollout


def roll_back(store: Store, rollout_id: int, actor: str) -> Rollout:
    """Every conversation is answered by the live version again, from its next turn."""
    with store.transaction():
        rollout = _end(store, rollout_id, ROLLED_BACK, actor)
        store.audit(actor, "rollout_rollback", f"rollout:{rollout_id}", template=rollout.template,
                    version=rollout.version, channel=rollout.channel, percent=rollout.percent)
        return rollout


def draw(rollout_id: int, conversation_id: int) -> float:
    """A conversation's fixed place in [0, 100) for one rollout: candidate when below the percent."""
    digest = hashlib.sha256(f"rollout {rollout_id} conversation {conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def candidate_for(store: Store, channel: str, template: str, conversation: Mapping[str, Any]) -> Rollout | None:
    """The rollout whose candidate answers this conversation's turn, or None for the live version.

    Only a conversation created at or after the rollout started takes part; its side is drawn
    on its first turn and stored (the first stored draw wins), then read back on every turn.
    """
    rollout = active(store, channel)
    if rollout is None or rollout.template != template or (conversation.get("created_at") or "") < rollout.started_at:
        return None
    arm = CANDIDATE if draw(rollout.id, conversation["id"]) < rollout.percent else LIVE
    with store.transaction():
        store.db.conn.execute(
            "insert or ignore into rollout_arms (conversation_id, rollout_id, arm, assigned_at) "
            "select ?, id, ?, ? from template_rollouts where id = ? and status = ?",
            [conversation["id"], arm, iso(), rollout.id, ACTIVE],
        )
        stored = store.select(
            "select a.arm, r.status from rollout_arms a join template_rollouts r on r.id = a.rollout_id "
            "where a.conversation_id = ? and a.rollout_id = ?", [conversation["id"], rollout.id])
    return rollout if stored and stored[0]["arm"] == CANDIDATE and stored[0]["status"] == ACTIVE else None
