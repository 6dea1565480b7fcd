"""Shared fixtures: a tiny real Qwen3-VL checkpoint and an engine loaded from it."""

from __future__ import annotations

import os

import pytest
import pytest_asyncio

from engine.loading import LoadOptions
from engine.tiny import build_tiny_checkpoint
from engine.transformers_engine import TransformersEngine

# Reading screenshots locally (on by default in Snapdesk) costs a second or two per screenshot
# on this machine: servers and managers built by tests leave it off unless the test is about it
# (tests/test_screenshot_*.py turn it on). Subprocesses inherit this.
os.environ.setdefault("SNAPDESK_OCR", "off")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Built once per test run with the real transformers classes; nothing is downloaded."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen3-vl"))


@pytest_asyncio.fixture(scope="session")
async def engine(tiny_model_dir):
    """The in-process engine on the tiny checkpoint, loaded through the production path."""
    eng = TransformersEngine(LoadOptions(model=str(tiny_model_dir)), batch_window_ms=50.0, max_batch_size=8)
    eng.start()
    yield eng
    eng.close()


@pytest.fixture(autouse=True)
def fresh_settings():
    """A command run in-process reads the environment once per process (get_settings is cached):
    each test starts from its own environment, whatever an earlier test's command read."""
    from bot.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
