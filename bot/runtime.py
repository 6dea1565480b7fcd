"""What one running Snapdesk holds, whichever way it is served.

The web server assembles this core once at start-up and adds its own HTTP parts around it
(bot/web/server_state.py); nothing here knows FastAPI, a page or a platform. It owns the
background work a running Snapdesk does whatever serves it: loading the model, finishing the
turns a crash interrupted, the periodic maintenance round and the retention purge.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Coroutine

from engine.base import ChatMessage, Engine, GenerationRequest, ModelLoadError

from .accounts import Accounts
from .conversation import ConversationManager
from .engine_setup import make_engine, make_manager
from .gateway import Gateway
from .messages import ChannelRegistry
from .metrics import Metrics
from .settings import Settings
from .store import Store, check_data_dir

log = logging.getLogger("snapdesk")

PURGE_EVERY_S = 24 * 3600


@dataclass(kw_only=True)
class Runtime:
    settings: Settings
    store: Store
    engine: Engine
    manager: ConversationManager
    metrics: Metrics
    accounts: Accounts
    channels: ChannelRegistry  # where a reply finds the channel its conversation came from
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once the model answered (or failed)
    load_error: str | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)  # work started after a response
    loop: asyncio.AbstractEventLoop | None = None  # the event loop it runs on, once started
    gateway: Gateway = field(init=False)  # what platform channels may ask of Snapdesk
    _background: list[asyncio.Task] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.gateway = Gateway(self.manager, self.ready, self.spawn)

    @classmethod
    def build(cls, settings: Settings, engine: Engine | None = None) -> "Runtime":
        """Everything from settings; raises StoreError for an unusable data directory."""
        check_data_dir(settings.data_dir)  # before anything else is built: one clear sentence, nothing half-started
        engine = engine or make_engine(settings)
        channels = ChannelRegistry()
        manager = make_manager(settings, engine, channels)
        metrics = Metrics()
        metrics.watch_engine(engine)
        manager.listeners.append(metrics.on_event)
        return cls(settings=settings, store=manager.store, engine=engine, manager=manager, metrics=metrics,
                   accounts=Accounts.for_settings(manager.store, settings, db=manager.db), channels=channels)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run work after the response, keeping a reference so it is not collected."""
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %s", type(task.exception()).__name__)

    def start(self) -> None:
        """Begin loading the model (then recovery and maintenance) and the retention purge."""
        self.loop = asyncio.get_running_loop()
        self._background = [asyncio.create_task(self._load_engine()), asyncio.create_task(self._purge_daily())]
        reader = self.manager.screenshots.reader
        if reader is not None:  # warmed up beside the model: the first screenshot need not wait for it
            self._background.append(asyncio.create_task(self._load_reader(reader)))

    async def stop(self) -> None:
        """Cancel the background work, then close the engine, the manager and the database."""
        for task in [*self._background, *self.tasks]:
            task.cancel()
        await asyncio.gather(*self._background, *self.tasks, return_exceptions=True)
        self.engine.close()
        if self.manager.screenshots.reader is not None:
            self.manager.screenshots.reader.close()
        self.manager.close()
        self.store.close()

    async def _load_engine(self) -> None:
        """Load the model off the event loop, check it answers, then finish interrupted turns."""
        try:
            await asyncio.to_thread(self.engine.start)
            await self.engine.generate(GenerationRequest((ChatMessage.of("user", "ping"),), max_new_tokens=1),
                                       timeout=600)
            log.info("engine ready: %s", self.engine.model_name)
        except ModelLoadError as exc:
            self.load_error = str(exc)
            log.error("the model could not be loaded: %s", exc)
        except Exception as exc:  # the server keeps storing messages and hands them over
            self.load_error = f"{type(exc).__name__}: the model failed its first answer"
            log.exception("the model failed its first answer")
        finally:
            self.ready.set()
        # The periodic round starts now, whatever recovery does (it may take long, or fail).
        maintenance = asyncio.create_task(self.manager.maintain_forever(self.settings.retry_interval_s))
        try:
            report = await self.manager.recover()
            if any(report.values()):
                log.info("recovered after restart: %(reprocessed)d turns answered, %(failed)d still pending, "
                         "%(redelivered)d replies re-sent", report)
        except Exception as exc:  # the periodic round goes on and retries what is left
            log.error("recovery after restart failed: %s", type(exc).__name__)
        await maintenance  # cancelled with this task at shutdown

    @staticmethod
    async def _load_reader(reader) -> None:
        try:
            await asyncio.to_thread(reader.load)
            log.info("screenshot reader ready (%d worker%s)", reader.workers, "s" if reader.workers != 1 else "")
        except Exception as exc:  # screenshots are then kept as sent, and each turn goes on without their text
            log.error("the screenshot reader could not be loaded: %r", exc)

    async def _purge_daily(self) -> None:
        """With SNAPDESK_RETENTION_DAYS set, what is older goes: at start, then once a day."""
        days = self.settings.retention_days
        while days:
            try:
                removed = await self.manager.db(self.store.purge, days)
                if any(removed.values()):
                    log.info("retention (%g days): removed %s", days, removed)
            except Exception as exc:  # tomorrow's run tries again
                log.warning("retention purge failed: %s", type(exc).__name__)
            await asyncio.sleep(PURGE_EVERY_S)
