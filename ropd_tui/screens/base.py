"""Store access for screens: one reader thread, non-overlapping polls gated on ``data_version``.

The dolphie pattern: a screen's poll runs as a worker that hands the store read to a dedicated
reader thread (one long-lived SQLite connection, so ``PRAGMA data_version`` is comparable between
polls), applies the result on the UI thread, then re-arms itself with ``set_timer``. Polls never
overlap, hidden screens do not poll, and nothing is re-read or redrawn unless the store changed
(or the screen asked for different data, e.g. another step).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from textual.screen import Screen
from textual.timer import Timer

from engine.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
UNCHANGED = object()  # a poll found nothing new


class StoreGateway:
    """Runs store reads on one reader thread that owns one :class:`engine.store.RunStore`."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ropd-store-reader")
        self._store: Any = None
        self._supervisor: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        if self._store is None:
            from engine.store import RunStore

            self._store = RunStore(self.path)
        return self._store

    def supervisor(self) -> Any:
        """The reader thread's Supervisor (only call from inside :meth:`call`)."""
        if self._supervisor is None:
            from engine.runs.supervisor import Supervisor

            self._supervisor = Supervisor(self._open())
        return self._supervisor

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(store, *args)`` on the reader thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._open(), *args))

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking variant for code already running in a worker thread."""
        return self._executor.submit(lambda: fn(self._open(), *args)).result()

    def close(self) -> None:
        def _close() -> None:
            store, self._store = self._store, None
            closer = getattr(store, "close", None)
            if closer:
                try:
                    closer()
                except Exception:  # pragma: no cover - closing is best effort
                    pass

        try:
            self._executor.submit(_close)
        except RuntimeError:
            pass
        self._executor.shutdown(wait=False)


class LiveScreen(Screen):
    """A screen that shows store data and keeps it live.

    Subclasses implement :meth:`load` (runs on the reader thread, returns plain data) and
    :meth:`apply` (runs on the UI thread). Call :meth:`reload` after changing what to show.
    """

    POLL_INTERVAL = 0.3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen_version: Any = None
        self._polling = False
        self._force_pending = False
        self._timer: Timer | None = None
        self._last_error: str | None = None
        self.loading_version: Any = None  # the data_version the running load() reads at
        self.loaded = False  # True once the first load was applied (used by tests and the bench)

    # -- to implement ----------------------------------------------------------------------------
    def load(self, store: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    async def apply(self, data: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_poll_error(self, err: Exception) -> None:
        """Show a failed read; the next poll tries again."""
        msg = str(err) if isinstance(err, UserError) else f"reading the store failed: {err!r}"
        if msg != self._last_error:  # the next polls retry; say it once, not twice a second
            self._last_error = msg
            self.app.notify(msg, severity="error", timeout=8)

    # -- machinery -------------------------------------------------------------------------------
    def on_mount(self) -> None:
        self.call_later(self._first_load)

    def _first_load(self) -> None:
        # A screen pushed and covered at once (e.g. the runs under a start screen) loads when shown.
        if self.app.screen is self and not self._polling and not self.loaded:
            self.reload()

    def on_screen_resume(self) -> None:
        if self.loaded:
            self._start_poll(force=False)
        elif not self._polling:
            self.reload()

    def reload(self) -> None:
        """Read again now, whether or not the store changed."""
        self._start_poll(force=True)

    @property
    def _live(self) -> bool:
        return bool(getattr(self.app, "live", True))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._live and self.is_attached:
            self._timer = self.set_timer(self.POLL_INTERVAL, lambda: self._start_poll(False))

    def _start_poll(self, force: bool) -> None:
        if self._polling:
            self._force_pending = self._force_pending or force
            return
        if not force and (self.app.screen is not self or getattr(self.app, "paused", False)):
            self._arm()  # hidden, under a modal, or paused by the user: don't read, look again later
            return
        self._polling = True
        self.run_worker(self._poll(force), group="poll", exit_on_error=False)

    async def _poll(self, force: bool) -> None:
        try:
            data = await self.app.gateway.call(self._load_if_changed, force)
            if data is not UNCHANGED:
                await self.apply(data)
                self.loaded = True
                self._last_error = None
        except Exception as err:  # noqa: BLE001 - every read error is shown, never crashes the UI
            log.exception("poll failed")
            self.on_poll_error(err)
        finally:
            self._polling = False
            if self._force_pending:
                self._force_pending = False
                self._start_poll(True)
            else:
                self._arm()

    def _load_if_changed(self, store: Any, force: bool) -> Any:
        version = store.data_version()
        if not force and version == self._seen_version and self.loaded:
            extra = self.tick(store)
            return UNCHANGED if extra is None else extra
        self.loading_version = version
        data = self.load(store)
        self._seen_version = version
        return data

    def tick(self, store: Any) -> Any:
        """Called on the reader thread when the store did not change; return data to apply, or None."""
        return None
