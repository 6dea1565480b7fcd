"""README stays true: every setting and command a user can reach is documented."""

from __future__ import annotations

from pathlib import Path

from bot.cli import build_parser
from bot.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented():
    missing = [f"SNAPDESK_{name.upper()}" for name in Settings.model_fields if f"SNAPDESK_{name.upper()}" not in README]
    assert not missing, f"settings missing from README.md: {missing}"


def test_every_command_is_documented():
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    missing = [name for name in commands if f"snapdesk {name}" not in README]
    assert not missing, f"commands missing from README.md: {missing}"


def test_readme_opens_with_run_and_test():
    head = README[:800]
    assert "make run" in head and "make test" in head
