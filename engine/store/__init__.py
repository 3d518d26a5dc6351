"""The run store: one SQLite database (WAL) plus a folder per run. See :mod:`engine.store.runstore`."""

from __future__ import annotations

import os
from pathlib import Path

from engine.store.db import StoreReadOnlyError
from engine.store.queries import ACCURACY_KEYS, CURSOR_TABLES, REWARD_KEYS
from engine.store.runstore import ACTIVE_STATUSES, STATUSES, TERMINAL_STATUSES, RunRecord, RunStore
from engine.store.schema import MIGRATIONS, schema_version
from engine.store.step_writer import DERIVED_KEYS

__all__ = [
    "RunStore", "RunRecord", "STATUSES", "ACTIVE_STATUSES", "TERMINAL_STATUSES", "REWARD_KEYS", "ACCURACY_KEYS",
    "DERIVED_KEYS", "CURSOR_TABLES", "MIGRATIONS", "schema_version", "resolve_store_path", "open_store",
    "StoreReadOnlyError",
]


def resolve_store_path(flag: str | os.PathLike | None = None, cfg=None) -> Path:
    """flag > config run.store > $ROPD_STORE > ./runs/ropd.db (see :func:`engine.config.store_path`)."""
    if flag:
        return Path(flag)
    from engine.config import store_path

    return store_path(cfg)


def open_store(flag: str | os.PathLike | None = None, cfg=None, *, create: bool = True) -> RunStore:
    return RunStore(resolve_store_path(flag, cfg), create=create)
