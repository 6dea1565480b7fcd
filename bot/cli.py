"""The `snapdesk` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any, Callable
from pathlib import Path

from engine.base import ChatMessage, EngineError, GenerationRequest, ModelLoadError
from engine.images import ImageRejected, prepare_image

from . import eval_cli, inspect_cli, kb_cli
from .engine_setup import make_engine
from .settings import Settings, get_settings

EXIT_USAGE = 2


def _fail(message: str, code: int = 1) -> int:
    print(f"snapdesk: {message}", file=sys.stderr)
    return code


def _settings_with(args: argparse.Namespace) -> Settings:
    settings = get_settings()
    overrides = {}
    if getattr(args, "model", None):
        overrides["model"] = args.model
    return settings.model_copy(update=overrides) if overrides else settings


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from engine.tiny import build_tiny_checkpoint

    started = time.perf_counter()
    path = build_tiny_checkpoint(args.directory)
    print(f"wrote a tiny random-weight Qwen3-VL checkpoint to {path} in {time.perf_counter() - started:.1f} s")
    return 0


class _UnusableImage(Exception):
    """A --image file that cannot be used, with the reason to print."""


def _read_images(paths: list[str], settings: Settings) -> list:
    images = []
    for name in paths:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise _UnusableImage(f"cannot read {name}: {exc.strerror or exc}") from None
        try:
            images.append(prepare_image(data, settings.image_limits()).image)
        except ImageRejected as exc:
            raise _UnusableImage(f"{name}: {exc.message('en')} ({exc.reason})") from None
    return images


async def _ask(engine, request: GenerationRequest, stream_to_stdout: bool):
    stream = engine.stream(request)
    async for delta in stream:
        if stream_to_stdout:
            sys.stdout.write(delta)
            sys.stdout.flush()
    return await stream.result()


def cmd_ask(args: argparse.Namespace) -> int:
    settings = _settings_with(args)
    try:
        images = _read_images(args.image or [], settings)
    except _UnusableImage as exc:
        return _fail(str(exc), EXIT_USAGE)
    request = GenerationRequest(
        messages=(ChatMessage.of("user", *images, args.text),),
        max_new_tokens=args.max_new_tokens or settings.max_new_tokens,
    )
    engine = make_engine(settings)
    try:
        engine.start()
    except ModelLoadError as exc:
        return _fail(str(exc))
    try:
        generation = asyncio.run(_ask(engine, request, stream_to_stdout=not args.json))
    except EngineError as exc:
        return _fail(f"the engine could not answer: {exc}")
    finally:
        engine.close()
    if args.json:
        print(
            json.dumps(
                {
                    "reply": generation.text,
                    "confidence": generation.confidence,
                    "min_token_prob": generation.min_token_prob,
                    "finish_reason": generation.finish_reason,
                    "prompt_tokens": generation.prompt_tokens,
                    "image_tokens": generation.image_tokens,
                    "completion_tokens": generation.completion_tokens,
                    "latency_ms": round(generation.timings.total_ms, 1),
                    "first_token_ms": round(generation.timings.first_token_ms, 1),
                    "model": engine.model_name,
                },
                ensure_ascii=False,
            )
        )
    else:
        confidence = generation.confidence
        print(
            f"\n[confidence {confidence:.3f} · {generation.completion_tokens} tokens · "
            f"{generation.timings.total_ms:.0f} ms]"
            if confidence is not None
            else "",
            file=sys.stderr,
        )
    return 0


def _settings_for_data(args: argparse.Namespace) -> Settings:
    settings = _settings_with(args)
    if getattr(args, "data", None):
        settings = settings.model_copy(update={"data_dir": Path(args.data)})
    return settings


def cmd_purge(args: argparse.Namespace) -> int:
    if args.older_than < 0:
        return _fail("--older-than must be zero or more days", EXIT_USAGE)

    def purge(store) -> None:
        removed = store.purge(args.older_than)  # waits for a server's write lock, up to the bound
        print(
            f"removed {removed['conversations']} conversations, {removed['messages']} messages, "
            f"{removed['escalations']} hand-overs, {removed['attachments']} screenshot files, "
            f"{removed['platform_events']} raw platform events and {removed['regression_runs']} regression runs "
            f"older than {args.older_than:g} days"
        )

    return _on_store(args, purge)


def _on_store(args: argparse.Namespace, work: Callable[[Any], None],
              usage_errors: tuple[type[Exception], ...] = ()) -> int:
    """Run `work` on the data directory's database and close it; a refusal becomes one line on
    stderr with exit status 2 for a mistake in the command, 1 for a database that cannot serve."""
    from .store import StoreError

    store = None
    try:
        store = _settings_for_data(args).open_store()
        work(store)
    except usage_errors as exc:
        return _fail(str(exc), EXIT_USAGE)
    except StoreError as exc:
        return _fail(str(exc))
    finally:
        if store is not None:
            store.close()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .store import StoreError, check_data_dir

    settings = _settings_for_data(args)
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=updates) if updates else settings
    try:  # first, and again when the app opens the store: never bind the port with an unusable data directory
        check_data_dir(settings.data_dir)
    except StoreError as exc:
        return _fail(str(exc))
    from .web.app import serve
    from .gateway import AdapterConfigError

    try:
        serve(settings)
    except (StoreError, AdapterConfigError) as exc:
        return _fail(str(exc))
    return 0


class _Mistyped(Exception):
    """The password was not typed the same twice."""


def _read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("Repeat the password: ") != first:
        raise _Mistyped("the two passwords differ")
    return first


def _released(ids: list[int]) -> str:
    if not ids:
        return ""
    return f"; {len(ids)} claimed conversation{'s' if len(ids) != 1 else ''} went back to the queue"


def cmd_user(args: argparse.Namespace) -> int:
    """Account changes straight in the database (a running server sees them at the next request;
    its open console pages end within a keep-alive interval)."""
    from .accounts import AccountError, Accounts, hash_password

    def change(store) -> None:
        accounts = Accounts(store)
        command = args.user_command
        if command in ("add", "reset-password"):
            password = _read_password(args, "Password: " if command == "add" else "Temporary password: ")
        if command == "add":
            user = accounts.add_user(args.name, args.role, password, display_name=args.display_name)
            print(f"added {user.role} {user.name}" + (f" ({user.display_name})" if args.display_name else ""))
        elif command == "list":
            users = accounts.users()
            if not users:
                print("no users yet: add one with `snapdesk user add NAME --role admin`")
            for user in users:
                flags = "\tmust change password" if user.must_change_password else ""
                print(f"{user.name}\t{user.role}\t{'disabled' if user.disabled else 'active'}\t{user.display_name}{flags}")
        elif command == "disable":
            released = accounts.disable_user(args.name)
            print(f"disabled {args.name}; their sessions are closed{_released(released)}")
        elif command == "enable":
            accounts.enable_user(args.name)
            print(f"enabled {args.name}; they can sign in again")
        elif command == "role":
            user, released = accounts.set_role(args.name, args.role)
            print(f"{user.name} is now an {user.role}{_released(released)}")  # agent, operator, admin
        elif command == "display-name":
            user = accounts.set_display_name(args.name, args.display_name)
            print(f"users now see {user.name} as {user.display_name}")
        elif command == "reset-password":
            ended = accounts.set_password(args.name, hash_password(password), must_change=True, actor="cli")
            print(f"set a temporary password for {args.name}; they must choose their own at the next sign-in "
                  f"({ended} session{'s' if ended != 1 else ''} ended)")
        else:
            ended = accounts.end_sessions(args.name)
            print(f"signed {args.name} out everywhere ({ended} session{'s' if ended != 1 else ''} ended)")

    return _on_store(args, change, (AccountError, _Mistyped))


def cmd_apikey(args: argparse.Namespace) -> int:
    from .apikeys import ApiKeyError, ApiKeys

    def change(store) -> None:
        keys = ApiKeys(store)
        if args.apikey_command == "create":
            key, secret = keys.create(args.name)
            print(f"created API key {key.name}; it is shown only this once, store it now:")
            print(secret)
        elif args.apikey_command == "list":
            listed = keys.keys()
            if not listed:
                print("no API keys yet: create one with `snapdesk apikey create NAME`")
            for key in listed:
                print(f"{key.name}\tcreated {key.created_at}\tlast used {key.last_used_at or 'never'}\t"
                      f"{'revoked ' + key.revoked_at if key.revoked_at else 'active'}")
        else:
            keys.revoke(args.name)
            print(f"revoked API key {args.name}; requests with it are refused from now on")

    return _on_store(args, change, (ApiKeyError,))


def cmd_chat(args: argparse.Namespace) -> int:
    from .store import StoreError, check_data_dir

    settings = _settings_for_data(args)
    try:  # before the model is loaded, which can take minutes
        check_data_dir(settings.data_dir)
    except StoreError as exc:
        return _fail(str(exc))
    from .terminal_chat import run_chat

    return run_chat(settings)


def _data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="data directory (default: SNAPDESK_DATA_DIR or ./data)")


def cmd_kb(args: argparse.Namespace) -> int:
    from .knowledge.articles import KnowledgeError

    settings = _settings_for_data(args)
    status = []
    code = _on_store(args, lambda store: status.append(args.kb(store, settings, args)), usage_errors=(KnowledgeError,))
    return code or (status[0] if status else 0)


def cmd_inspect(args: argparse.Namespace) -> int:
    return inspect_cli.cmd_inspect(args, get_settings())


def cmd_eval(args: argparse.Namespace) -> int:
    return eval_cli.cmd_eval(args, _settings_for_data(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snapdesk", description="Self-hosted support bot that reads screenshots.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = commands.add_parser("tiny-model", help="write a tiny random-weight Qwen3-VL checkpoint (for tests and demos)")
    tiny.add_argument("directory", help="where to write it")
    tiny.set_defaults(func=cmd_tiny_model)

    ask = commands.add_parser("ask", help="ask the model one question, optionally about screenshots")
    ask.add_argument("--model", help="hub id or local directory of a Qwen3-VL checkpoint (default: SNAPDESK_MODEL)")
    ask.add_argument("--image", action="append", metavar="FILE", help="attach a screenshot (repeatable)")
    ask.add_argument("--json", action="store_true", help="print one JSON object with the reply and its figures")
    ask.add_argument("--max-new-tokens", type=int, default=None, help="longest answer in tokens")
    ask.add_argument("text", help="the question")
    ask.set_defaults(func=cmd_ask)

    inspect_cli.add_parser(commands)
    kb_cli.add_parser(commands)
    commands.choices["kb"].set_defaults(func=cmd_kb)
    commands.choices["inspect"].set_defaults(func=cmd_inspect)
    eval_cli.add_parser(commands)
    commands.choices["eval"].set_defaults(func=cmd_eval)

    serve = commands.add_parser("serve", help="run the server: widget, demo page, health and metrics")
    serve.add_argument("--model", help="hub id or local directory of a Qwen3-VL checkpoint (default: SNAPDESK_MODEL)")
    _data_option(serve)
    serve.add_argument("--host", help="address to listen on (default: SNAPDESK_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: SNAPDESK_PORT or 8000)")
    serve.set_defaults(func=cmd_serve)

    chat = commands.add_parser("chat", help="talk to the bot in the terminal, through the real conversation core")
    chat.add_argument("--model", help="hub id or local directory of a Qwen3-VL checkpoint (default: SNAPDESK_MODEL)")
    _data_option(chat)
    chat.set_defaults(func=cmd_chat)

    user = commands.add_parser(
        "user", help="console accounts: add, list, disable, enable, role, display-name, reset-password, sign-out")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = user_commands.add_parser("add", help="add a user (the password is asked for, or read from stdin)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["agent", "operator", "admin"])
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--display-name", metavar="NAME",
                     help="the name users see on this agent's replies (default: the user name)")
    listing = user_commands.add_parser("list", help="list users, their roles, whether they are active, display names")
    disable = user_commands.add_parser(
        "disable", help="disable a user, close their sessions and put their claimed conversations back in the queue")
    disable.add_argument("name")
    enable = user_commands.add_parser("enable", help="let a disabled user sign in again")
    enable.add_argument("name")
    role = user_commands.add_parser("role", help="change a user's role (an operator's claims go back to the queue)")
    role.add_argument("name")
    role.add_argument("role", choices=["agent", "operator", "admin"])
    display = user_commands.add_parser("display-name", help="set the name users see on an agent's replies")
    display.add_argument("name")
    display.add_argument("display_name", metavar="DISPLAY_NAME")
    reset = user_commands.add_parser(
        "reset-password",
        help="set a temporary password (asked for, or read from stdin): the user is signed out and must "
             "choose their own at the next sign-in")
    reset.add_argument("name")
    reset.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    sign_out = user_commands.add_parser("sign-out", help="end every session of a user")
    sign_out.add_argument("name")
    for sub in (add, listing, disable, enable, role, display, reset, sign_out):
        _data_option(sub)
    user.set_defaults(func=cmd_user)

    apikey = commands.add_parser("apikey", help="keys for the OpenAI-compatible API (/v1): create, list, revoke")
    apikey_commands = apikey.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    create = apikey_commands.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("name", help="who or what uses the key, e.g. moderation-pipeline")
    key_listing = apikey_commands.add_parser("list", help="list keys: created, last used, revoked (never the keys)")
    revoke = apikey_commands.add_parser("revoke", help="revoke a key: requests with it are refused at once")
    revoke.add_argument("name")
    for sub in (create, key_listing, revoke):
        _data_option(sub)
    apikey.set_defaults(func=cmd_apikey)

    purge = commands.add_parser("purge", help="delete conversations, messages and screenshots older than DAYS")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    _data_option(purge)
    purge.set_defaults(func=cmd_purge)
    return parser


def _configure_logging(verbose: bool, command: str) -> None:
    server = command == "serve"
    from .log_format import configure_logging  # user-chosen text is logged escaped, never as a new line

    configure_logging(
        logging.INFO if verbose or server else logging.WARNING,
        "%(asctime)s %(levelname)s %(name)s: %(message)s" if server else "%(levelname)s %(name)s: %(message)s",
    )
    if server:
        return  # the server log shows model loading progress
    if not verbose:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.command)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
