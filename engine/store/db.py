"""One SQLite connection with the store's settings, write transactions that never surface
"database is locked", and read snapshots that end promptly (so WAL checkpoints can proceed).

Settings: WAL journal, ``synchronous=NORMAL`` (a committed step survives a process crash; an OS crash
may lose the last steps but never corrupts the file), a long ``busy_timeout``, foreign keys off (the
store deletes children explicitly). Writes use ``BEGIN IMMEDIATE`` so a transaction takes the write
lock up front and waits for it through the busy handler instead of failing on upgrade.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from engine.errors import StoreError
from engine.store.schema import MIGRATIONS, schema_version

BUSY_TIMEOUT_MS = 10_000
LOCK_GIVE_UP_S = 300.0  # a write waits this long for another process's lock before failing clearly


class StoreReadOnlyError(StoreError):
    """A write to a store that is read-only (file system, permissions) or on a full disk."""


def _disk_full(path: Path) -> bool:
    """Whether the store's file system has (almost) no space left: SQLite then fails to open a WAL
    store with "disk I/O error" (it cannot create the shared-memory file)."""
    import shutil

    try:
        return shutil.disk_usage(path.parent).free < 1024 * 1024
    except OSError:
        return False


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def store_write_error(path: Path, err: sqlite3.OperationalError) -> Exception:
    """A full disk or a read-only store as a StoreReadOnlyError with the right hint; else ``err`` itself."""
    msg = str(err).lower()
    if "disk is full" in msg or "no space" in msg:
        return StoreReadOnlyError(f"the run store {path} cannot be written: the disk is full ({err})",
                                  hint=f"free space on the file system of {path.parent} (df -h), then retry; "
                                       "reading commands (runs, status, logs, metrics, export) still work")
    if "readonly" in msg or "read-only" in msg:
        return StoreReadOnlyError(f"the run store {path} cannot be written: it is read-only ({err})",
                                  hint="run the command where the store is writable")
    return err


def _is_busy(err: sqlite3.OperationalError) -> bool:
    msg = str(err).lower()
    return "locked" in msg or "busy" in msg


class Connection:
    """A thread-safe wrapper around one sqlite3 connection in autocommit mode."""

    def __init__(self, path: Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StoreError(
                f"no run store at {self.path}",
                hint="start a run first (ropd-tui --headless train ...), or point --store / $ROPD_STORE at an existing ropd.db",
            )
        if self.path.is_dir():
            raise StoreError(f"the run store {self.path} is a directory",
                             hint=f"pass --store the store's file, e.g. {self.path / 'ropd.db'}")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                        timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the run store {self.path}: {err}") from None
        self.conn.row_factory = sqlite3.Row
        self.lock = threading.RLock()
        self.local_writes = 0  # PRAGMA data_version ignores this connection's own commits
        self._depth = 0
        self.read_only: str | bool = False  # why, when the store could only be opened for reading
        try:
            self._configure()
            self._migrate()
        except sqlite3.DatabaseError as err:
            self.conn.close()
            full = "disk is full" in str(err).lower() or _disk_full(self.path)
            if self.path.exists() and (full or not _writable(self.path)):
                self._open_read_only(err, "the disk is full" if full else "it is read-only")
                return
            raise StoreError(f"{self.path} is not a usable run store: {err}",
                             hint="pass --store with the path of a ropd.db file") from None

    def _open_read_only(self, first: sqlite3.DatabaseError, why: str) -> None:
        """A store on a read-only file system (or without write permission): open it for reading, so
        ``runs``, ``status``, ``logs``, ``metrics`` and ``export`` still work; writes raise StoreError.
        Without a ``-shm`` file SQLite cannot share a WAL store read-only; ``immutable`` reads it as a
        plain file then (nobody can write a read-only or full file system; what only a ``-wal`` file
        holds, from a writer that never closed the store, is not seen)."""
        from urllib.parse import quote

        uri = f"file:{quote(str(self.path.absolute()))}"
        last: sqlite3.DatabaseError = first
        for opts in ("?mode=ro", "?mode=ro&immutable=1"):
            try:
                conn = sqlite3.connect(uri + opts, uri=True, isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
                conn.row_factory = sqlite3.Row
                current = conn.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.DatabaseError as err:
                last = err
                continue
            if current != schema_version():
                conn.close()
                raise StoreError(f"the run store {self.path} is read-only and has schema version {current} "
                                 f"(this ropd-tui needs {schema_version()})",
                                 hint="open it once where it is writable, or use the ropd-tui version that wrote it")
            self.conn = conn
            self.read_only = why
            return
        raise StoreError(f"{self.path} is not a usable run store: {last}",
                         hint="pass --store with the path of a ropd.db file") from None

    # -- setup -------------------------------------------------------------------------------------
    def _configure(self) -> None:
        c = self.conn
        c.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = self._retry(lambda: c.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            raise StoreError(f"the run store {self.path} cannot use WAL mode (got {mode!r})",
                             hint="put the store on a local file system (not NFS)")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA journal_size_limit=67108864")  # truncate the WAL file back to 64 MB after checkpoints
        c.execute("PRAGMA foreign_keys=OFF")
        c.execute("PRAGMA temp_store=MEMORY")
        c.execute("PRAGMA cache_size=-32000")

    def _migrate(self) -> None:
        target = schema_version()
        current = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if current > target:
            raise StoreError(
                f"the run store {self.path} has schema version {current}, newer than this ropd-tui understands ({target})",
                hint="upgrade ropd-tui (pip install -U ropd-tui) to open it",
            )
        if current == target:
            return
        with self.write() as c:
            current = c.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            if current > target:
                raise StoreError(f"the run store {self.path} has schema version {current}, newer than {target}",
                                 hint="upgrade ropd-tui to open it")
            for version in range(current, target):
                MIGRATIONS[version](c)
                c.execute(f"PRAGMA user_version={version + 1}")

    # -- transactions --------------------------------------------------------------------------------
    def _retry(self, fn):
        deadline = time.monotonic() + LOCK_GIVE_UP_S
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as err:
                if not _is_busy(err) or time.monotonic() > deadline:
                    if _is_busy(err):
                        raise StoreError(
                            f"the run store {self.path} stayed locked by another process for {LOCK_GIVE_UP_S:.0f} s",
                            hint="another program holds a long write transaction on it; close it and retry",
                        ) from None
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: all statements inside commit together or not at all."""
        with self.lock:
            if self._depth:  # nested: join the outer transaction
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            if self.read_only:
                full = "full" in str(self.read_only)
                raise StoreReadOnlyError(
                    f"the run store {self.path} was opened for reading only ({self.read_only}): this command needs "
                    "to write to it",
                    hint=(f"free space on the file system of {self.path.parent} (df -h), then retry" if full else
                          "run the command where the store is writable") +
                    "; reading commands (runs, status, logs, metrics, export) still work")
            try:
                self._retry(lambda: self.conn.execute("BEGIN IMMEDIATE"))
            except sqlite3.OperationalError as err:
                raise store_write_error(self.path, err) from None
            self._depth = 1
            try:
                yield self.conn
            except BaseException as err:
                self._depth = 0
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if isinstance(err, sqlite3.OperationalError):
                    raise store_write_error(self.path, err) from None
                raise
            self._depth = 0
            try:
                self._retry(lambda: self.conn.execute("COMMIT"))
            except BaseException as err:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if isinstance(err, sqlite3.OperationalError):
                    raise store_write_error(self.path, err) from None
                raise
            self.local_writes += 1

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs; ended right after so checkpoints can run."""
        with self.lock:
            if self._depth or self.conn.in_transaction:
                yield self.conn
                return
            def begin():
                self.conn.execute("BEGIN")
                try:  # take the read snapshot now, inside the retry
                    self.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise

            self._retry(begin)
            try:
                yield self.conn
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")

    def query(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self.lock:
            return self._retry(lambda: self.conn.execute(sql, params).fetchall())

    def data_version(self) -> int:
        with self.lock:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0]) + self.local_writes

    def close(self) -> None:
        with self.lock:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
