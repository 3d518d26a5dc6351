"""The tracker backends and the preflight check that their packages are installed.

Every backend gets the metrics of one step at a time (``log(step, {key: value}, wall_time)``), in the
order the store wrote them, and imports its package only when it opens (a missing package is a
:class:`~engine.errors.ConfigError` naming the pip command, raised by :func:`check_tracking` before
the run starts).

- ``wandb``: ``wandb.init(project=tracking.project, entity=tracking.wandb_entity, mode=tracking.wandb_mode,
  dir=tracking.wandb_dir or the run folder, id=<kept in the store>, resume="allow")``; the run config
  (secrets scrubbed) as the W&B config. ``wandb_mode: offline`` writes ``<dir>/wandb/offline-run-*``
  for ``wandb sync`` later.
- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` on ``tracking.tensorboard_dir`` or
  ``<run folder>/tensorboard``, one sub-folder per attempt (``attempt-N``), scalars with the store's
  wall time; the config as a text summary.
- ``mlflow``: ``MlflowClient(tracking.mlflow_tracking_uri)`` (None: ``$MLFLOW_TRACKING_URI``), experiment
  ``tracking.project``, one MLflow run per attempt (tags ``ropd.run``, ``ropd.attempt``); metric names
  with characters MLflow refuses (e.g. verl's ``@``) have them replaced by ``_``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.errors import ConfigError

# backend -> (modules it needs, pip command)
REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "wandb": (("wandb",), "pip install wandb"),
    "tensorboard": (("tensorboard", "torch"), "pip install tensorboard"),
    "mlflow": (("mlflow",), "pip install mlflow-skinny"),
}


def missing_modules(backend: str) -> list[str]:
    return [m for m in REQUIREMENTS[backend][0] if importlib.util.find_spec(m) is None]


def check_tracking(cfg: Any) -> list[str]:
    """ConfigError naming the pip command for a backend whose package is missing; notes otherwise."""
    backends = list(dict.fromkeys(cfg.tracking.backends))
    if not backends:
        return []
    for b in backends:
        missing = missing_modules(b)
        if missing:
            raise ConfigError(f"tracking.backends has '{b}' but the {' and '.join(missing)} package"
                              f"{'s are' if len(missing) > 1 else ' is'} not installed in {sys.executable}",
                              hint=f"install it: {REQUIREMENTS[b][1]} (or remove '{b}' from tracking.backends)")
    t = cfg.tracking
    where = {"wandb": f"wandb (project {t.project}{', mode ' + t.wandb_mode if t.wandb_mode else ''})",
             "tensorboard": f"tensorboard ({t.tensorboard_dir or '<run folder>/tensorboard'})",
             "mlflow": f"mlflow (experiment {t.project}{', ' + t.mlflow_tracking_uri if t.mlflow_tracking_uri else ''})"}
    notes = ["tracking: the store's metrics are mirrored to " + ", ".join(where[b] for b in backends)]
    if cfg.run.backend == "verl":
        loggers = " ".join(o for o in cfg.verl.overrides if o.lstrip("+").startswith("trainer.logger"))
        both = [b for b in backends if b in loggers]
        if both:
            notes.append(f"note: verl's own trainer.logger also logs to {', '.join(both)}: that makes a second "
                         f"{'/'.join(both)} run beside ropd's mirror (verl's keys only); keep one of them")
    return notes


@dataclass
class TrackerContext:
    """What a backend knows about the run it mirrors."""

    run_name: str
    run_id: int
    attempt: int
    run_dir: Path
    config: dict[str, Any]
    settings: Any  # the TrackingConfig
    external_id: str | None = None  # the backend's own run id, kept in the store across resumes
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.run_name if self.attempt <= 1 else f"{self.run_name}-attempt{self.attempt}"


class Backend(Protocol):
    name: str

    def open(self, ctx: TrackerContext) -> str | None:
        """Start (or continue) the tracker run; returns the backend's run id to keep, if any."""

    def log(self, step: int, metrics: dict[str, float], wall_time: float | None) -> None: ...

    def close(self) -> None: ...


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


class WandbBackend:
    name = "wandb"

    def __init__(self) -> None:
        self.run = None

    def open(self, ctx: TrackerContext) -> str | None:
        import wandb

        t = ctx.settings
        run_id = ctx.external_id or re.sub(r"[^A-Za-z0-9_-]", "-", f"{ctx.display_name}-{uuid.uuid4().hex[:8]}")
        folder = Path(t.wandb_dir) if t.wandb_dir else ctx.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=t.project, entity=t.wandb_entity, name=ctx.display_name, id=run_id,
                              resume="allow", mode=t.wandb_mode, dir=str(folder), config=ctx.config,
                              tags=["ropd", f"attempt-{ctx.attempt}"], reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True, save_code=False,
                                                      disable_git=True))
        return run_id

    def log(self, step: int, metrics: dict[str, float], wall_time: float | None) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self) -> None:
        self.writer = None

    def open(self, ctx: TrackerContext) -> str | None:
        from torch.utils.tensorboard import SummaryWriter

        root = Path(ctx.settings.tensorboard_dir) if ctx.settings.tensorboard_dir else ctx.run_dir / "tensorboard"
        self.logdir = root / f"attempt-{ctx.attempt}"
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        if ctx.external_id is None:  # once per attempt
            self.writer.add_text("config", "```\n" + json.dumps(ctx.config, indent=2, default=str) + "\n```", 0)
        return str(self.logdir)

    def log(self, step: int, metrics: dict[str, float], wall_time: float | None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step, walltime=wall_time)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


_MLFLOW_BAD = re.compile(r"[^\w\-./ ]")


class MlflowBackend:
    name = "mlflow"

    def __init__(self) -> None:
        self.client = None
        self.run_id: str | None = None

    def open(self, ctx: TrackerContext) -> str | None:
        from mlflow.tracking import MlflowClient

        t = ctx.settings
        self.client = MlflowClient(tracking_uri=t.mlflow_tracking_uri) if t.mlflow_tracking_uri else MlflowClient()
        if ctx.external_id:  # a resumed run continues its MLflow run
            self.run_id = ctx.external_id
            self.client.update_run(self.run_id, status="RUNNING")
            return self.run_id
        exp = self.client.get_experiment_by_name(t.project)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(t.project)
        run = self.client.create_run(exp_id, run_name=ctx.display_name,
                                     tags={"ropd.run": ctx.run_name, "ropd.attempt": str(ctx.attempt)})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k[:250], str(v)[:500]) for k, v in _flat(ctx.config).items()
                  if v is not None and not isinstance(v, (list, dict))]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return self.run_id

    def log(self, step: int, metrics: dict[str, float], wall_time: float | None) -> None:
        from mlflow.entities import Metric

        ts = int((wall_time if wall_time is not None else time.time()) * 1000)
        batch = [Metric(_MLFLOW_BAD.sub("_", k), float(v), ts, int(step)) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def close(self) -> None:
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id)
        self.client = None


BACKEND_CLASSES = {"wandb": WandbBackend, "tensorboard": TensorBoardBackend, "mlflow": MlflowBackend}
