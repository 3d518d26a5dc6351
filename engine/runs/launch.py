"""Starting a training run: the one place that turns a checked config into a supervised run.

Used by ``ropd-tui --headless train`` and by the TUI's new-run screen, so both launch the same way:
the run is created in the store (config snapshot, run folder) and its training worker
(``python -m engine.runs.worker``) is started under the supervisor in its own session.
Run :func:`engine.trainers.preflight.preflight` first; it reports config problems before a run exists.
"""

from __future__ import annotations

from pathlib import Path

from engine.config import Config
from engine.errors import ConfigError


def unique_run_name(store, base: str) -> str:
    """``base``, or ``base-2``, ``base-3`` ... whichever is not taken yet."""
    if store.find_run(base) is None:
        return base
    i = 2
    while store.find_run(f"{base}-{i}") is not None:
        i += 1
    return f"{base}-{i}"


def launch_run(cfg: Config, store, name: str, *, cwd: str | None = None):
    """Create the run ``name`` from ``cfg`` and start its worker; returns the launched RunRecord.

    Raises ConfigError when the name is taken (callers that want a fresh name use
    :func:`unique_run_name`)."""
    from engine.runs.supervisor import Supervisor, worker_argv

    if store.find_run(name) is not None:
        raise ConfigError(f"a run named {name!r} already exists", hint="choose another run name")
    cfg.run.name = name
    cwd = cwd or str(Path.cwd())
    run = store.create_run(name, cfg.run.backend, cfg.to_dict(), cwd=cwd)
    return Supervisor(store).launch(run, worker_argv(store, run.id), cwd=cwd)
