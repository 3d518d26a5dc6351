"""Starting a training run: the one place that turns a checked config into a supervised run.

Used by ``ropd-tui --headless train`` and by the TUI's new-run screen, so both launch the same way:
the run is created in the store (config snapshot, run folder) and its training worker
(``python -m engine.runs.worker``) is started under the supervisor in its own session.
Run :func:`engine.trainers.preflight.preflight` first; it reports config problems before a run exists.

Naming rule (the same for both, see :func:`choose_run_name`): a name given explicitly (``--name``, the
new-run screen's name field) must be free, or nothing is created; the config's ``run.name`` is a
default, so when it is taken the first free ``NAME-2``, ``NAME-3`` ... is used, and both front ends
say so before the launch, together with how to resume the existing run instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class RunName:
    """The name a launch will create, and why."""

    name: str  # exactly the run that will be created
    requested: str
    existing: Any = None  # the RunRecord already called ``requested`` (None: it was free)

    def note(self, resume: str | None = None) -> str | None:
        """What happens to a taken name, or None when the requested name is used as is. ``resume``:
        how to continue the existing run instead (default: the headless command)."""
        if self.existing is None:
            return None
        resume = resume or f"ropd-tui --headless resume {self.requested}"
        return (f"run name {self.requested!r} is taken ({describe_run(self.existing)}): this creates a new run "
                f"{self.name!r}. To continue {self.requested!r} instead: {resume}")


def describe_run(rec: Any) -> str:
    """``finished at step 3`` / ``running, no step yet``."""
    if rec.last_step is None:
        return f"{rec.status}, no step yet"
    return f"{rec.status} at step {rec.last_step}"


def choose_run_name(store, config_name: str, explicit: str | None = None) -> RunName:
    """The run name a launch creates (the rule is in the module docstring). ConfigError when an
    explicitly given name is taken, naming the existing run and what to do."""
    if explicit:
        existing = store.find_run(explicit)
        if existing is not None:
            raise ConfigError(
                f"a run named {explicit!r} already exists ({describe_run(existing)})",
                hint=f"resume it (ropd-tui --headless resume {explicit}; r on the Runs screen), pick another name, "
                     f"or leave the name empty to get a fresh one")
        return RunName(name=explicit, requested=explicit)
    existing = store.find_run(config_name)
    return RunName(name=unique_run_name(store, config_name) if existing is not None else config_name,
                   requested=config_name, existing=existing)


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
