"""`snapdesk chat`: a conversation in the terminal through the real manager and store.

The quickest way for an operator to see what users will see: answers, confidence,
hand-overs and the bot falling silent while a person owns the thread.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import uuid
from pathlib import Path

from engine.base import ModelLoadError

from .conversation import ConversationManager, TurnOutcome
from .engine_setup import make_engine, make_manager
from .messages import ChannelRegistry, Conversation, Inbound, Outbound
from .settings import Settings
from .store import StoreError

HELP = """Type a message and press Enter. Commands:
  /image PATH   attach a screenshot to your next message (repeatable)
  /human        ask for a person
  /reset        start a new conversation
  /quit         leave (or Ctrl-D)"""
HUMAN_REQUEST = "I would like to talk to a human agent, please."
LABELS = {"answer": "bot", "handover": "bot (hand-over)", "notice": "bot (notice)", "agent": "agent"}


class TerminalChannel:
    name = "cli"

    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout

    async def send(self, conversation: Conversation, outbound: Outbound) -> None:
        label = LABELS.get(outbound.kind, "bot")
        if outbound.kind == "agent" and outbound.author:
            label = f"agent {outbound.author}"
        print(f"{label}> {outbound.text}", file=self.out, flush=True)


def describe(outcome: TurnOutcome) -> str:
    confidence = "unknown" if outcome.confidence is None else f"{outcome.confidence:.2f}"
    if outcome.kind == "answered":
        return f"[answered · confidence {confidence}]"
    if outcome.kind == "handed_over":
        return f"[handed over to a person: {outcome.reason} ({outcome.detail}) · confidence {confidence}]"
    if outcome.kind == "for_agent":
        return "[a person owns this conversation: your message is stored for them and the bot stays silent]"
    return f"[{outcome.kind}]"


async def chat_loop(manager: ConversationManager, user: str, read_line) -> None:
    key = f"terminal-{uuid.uuid4().hex[:8]}"
    pending_images: list[bytes] = []
    print(HELP, flush=True)
    while True:
        line = await read_line()
        if line is None or line.strip() in ("/quit", "/exit"):
            return
        line = line.strip()
        if not line and not pending_images:
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                pending_images.append(Path(path).expanduser().read_bytes())
                print(f"[attached {path}; it goes with your next message]", flush=True)
            except OSError as exc:
                print(f"[cannot read {path}: {exc.strerror or exc}]", flush=True)
            continue
        if line == "/reset":
            key, pending_images = f"terminal-{uuid.uuid4().hex[:8]}", []
            print("[new conversation]", flush=True)
            continue
        if line == "/human":
            line = HUMAN_REQUEST
        elif line.startswith("/"):
            print(HELP, flush=True)
            continue
        inbound = Inbound(
            channel="cli", conversation_key=key, message_id=uuid.uuid4().hex, user_id=user, user_name=user,
            text=line, images=tuple(pending_images),
        )
        pending_images = []
        print(describe(await manager.handle(inbound)), flush=True)


async def _read_stdin() -> str | None:
    try:
        return await asyncio.to_thread(input, "you> ")
    except EOFError:
        return None


def run_chat(settings: Settings) -> int:
    engine = make_engine(settings)
    try:
        engine.start()
    except ModelLoadError as exc:
        print(f"snapdesk: {exc}", file=sys.stderr)
        return 1
    channels = ChannelRegistry()
    channels.register(TerminalChannel())
    try:
        manager = make_manager(settings, engine, channels)
    except StoreError as exc:
        engine.close()
        print(f"snapdesk: {exc}", file=sys.stderr)
        return 1

    async def main() -> None:
        await manager.recover()
        await chat_loop(manager, getpass.getuser(), _read_stdin)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        manager.close()
        engine.close()
    return 0
