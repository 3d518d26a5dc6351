"""Launch one verl run and write its progress into the run store (runs on the launch node).

``run(cfg, store, run, resume)`` is called by ``engine.runs.worker`` (the process the supervisor
starts) for ``run.backend == "verl"``. It

1. writes the task as parquet (``<run_dir>/verl/data``) unless ``verl.train_files`` is set;
2. connects to Ray - ``verl.ray_address`` / ``$RAY_ADDRESS`` (an existing, possibly multi-node cluster)
   or a new local cluster - and starts the run's :class:`~.gatherer.GroupGatherer` actor pinned to THIS
   node, so scored groups land in a file here;
3. starts ``python -m verl.trainer.main_ppo --config-path <configs/verl> --config-name ropd_grpo ...`` as
   a child (same Ray cluster via ``RAY_ADDRESS``; the run's own checkpoint dir ``<run_dir>/checkpoints``;
   a fresh ``<run_dir>/verl/attempt-N/metrics.jsonl`` per attempt because verl's file logger truncates;
   the exact command in ``attempt-N/command.txt``; resume through
   ``resume_mode=resume_path`` + ``resume_from_path=<latest global_step_N>``);
4. tails the metrics file and the gatherer's side channel and writes each step (verl metrics + ROPD
   groups, rubrics, verdicts, judge calls) in one store transaction; stops the run when a step's group
   failure rate passes ``scorer.failure_threshold``, or when the next step would take the judge cost past
   ``judge.budget_usd`` (exit code 5; resume continues from verl's latest checkpoint, ``trainer.save_freq``);
5. mirrors the store's new metric rows to the ``tracking.backends`` after each ingested step
   (verl's own ``trainer.logger`` may log beside it; ``file`` is what the launcher ingests).

SQLite is only ever written by this process, on the node where the run was launched.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ConfigError, ScoringFailureRateError
from engine.runs.entrypoint import module_argv
from engine.store.scrub import scrub

from engine.verl_backend import GATHERER_NAMESPACE
from engine.verl_backend.gatherer import gatherer_name
from engine.verl_backend.metrics_ingest import StepIngestor, StepReport

REPO_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "verl"
MAIN_MODULE = "verl.trainer.main_ppo"
# Replaces `python -m verl.trainer.main_ppo` (e.g. another environment's python, or a dry-run stand-in).
MAIN_CMD_ENV = "ROPD_VERL_MAIN_CMD"
POLL_S = 1.0
_SAFE_VALUE = re.compile(r"^[\w./:@+\-]+$")


@dataclass
class AttemptPaths:
    root: Path  # <run_dir>/verl
    attempt: int
    checkpoints: Path
    data: Path
    attempt_dir: Path
    metrics: Path  # VERL_FILE_LOGGER_PATH of this attempt
    groups: Path  # gatherer side channel of this attempt
    hydra_dir: Path

    @classmethod
    def new(cls, run_dir: str | os.PathLike, checkpoints: str | os.PathLike | None = None) -> "AttemptPaths":
        """A new attempt folder ``<run_dir>/verl/attempt-N``; checkpoints default to ``<run_dir>/checkpoints``."""
        root = Path(run_dir).resolve() / "verl"
        root.mkdir(parents=True, exist_ok=True)
        existing = [int(m.group(1)) for p in root.glob("attempt-*") if (m := re.match(r"attempt-(\d+)$", p.name))]
        n = max(existing, default=0) + 1
        attempt_dir = root / f"attempt-{n}"
        attempt_dir.mkdir(parents=True)
        ckpt = Path(checkpoints).resolve() if checkpoints else Path(run_dir).resolve() / "checkpoints"
        return cls(root, n, ckpt, root / "data", attempt_dir, attempt_dir / "metrics.jsonl",
                   attempt_dir / "groups.jsonl", attempt_dir / "hydra")


def hydra_value(value: Any) -> str:
    """A value for a Hydra command-line override, quoted when it holds characters Hydra would parse."""
    s = str(value)
    if _SAFE_VALUE.match(s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def latest_checkpoint(checkpoints: Path) -> tuple[Path, int] | None:
    """The newest complete ``global_step_N`` dir: the one verl's tracker file names (written last, so a
    crash mid-save leaves the previous one), else the highest N that has an ``actor`` dir."""
    tracker = checkpoints / "latest_checkpointed_iteration.txt"
    if tracker.exists():
        try:
            n = int(tracker.read_text().strip())
            d = checkpoints / f"global_step_{n}"
            if d.is_dir():
                return d, n
        except ValueError:
            pass
    found = []
    for d in checkpoints.glob("global_step_*"):
        m = re.match(r"global_step_(\d+)$", d.name)
        if m and (d / "actor").is_dir():
            found.append((int(m.group(1)), d))
    if not found:
        return None
    n, d = max(found)
    return d, n


def config_location(cfg: Config) -> tuple[Path, str]:
    """(config dir, config name): ``verl.config_name`` is a name in configs/verl/ or a path to a YAML."""
    name = cfg.verl.config_name
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        p = Path(name).resolve()
        if not p.exists():
            raise ConfigError(f"verl.config_name: {p} does not exist")
        return p.parent, p.stem
    if not (REPO_CONFIG_DIR / f"{name}.yaml").exists():
        raise ConfigError(f"verl.config_name: no {name}.yaml in {REPO_CONFIG_DIR}",
                          hint="use ropd_grpo or a path to your own Hydra YAML")
    return REPO_CONFIG_DIR, name


def check_verl_settings(cfg: Config) -> tuple[Path, str]:
    """The verl section's own checks; returns the Hydra (config dir, config name)."""
    model = cfg.verl.model_path
    if not model:
        raise ConfigError("verl.model_path is not set", hint="set it to a local HF model dir or a hub id, "
                          "e.g. verl.model_path=Qwen/Qwen3-1.7B")
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        raise ConfigError(f"verl.model_path: {model} does not exist",
                          hint="point it at a local HF model dir (on every node of a multi-node cluster)")
    if cfg.verl.group_timeout_s <= 0:
        raise ConfigError(f"verl.group_timeout_s must be > 0, got {cfg.verl.group_timeout_s}")
    for key in ("train_files", "val_files"):
        f = getattr(cfg.verl, key)
        if f and "://" not in f and not Path(f).expanduser().exists():
            raise ConfigError(f"verl.{key}: {f} does not exist")
    return config_location(cfg)


def preflight(cfg: Config) -> list[str]:
    """Everything a verl run can be refused for before it starts, without Ray or network: verl installed,
    the verl section, the composed verl config (composed.check), the task, the validation rows' ground
    truths, the templates, the teacher index (unless the demo task builds it) and the judge settings.
    Raises the matching :class:`~engine.errors.UserError`; returns notes on what will happen."""
    import importlib.util

    if importlib.util.find_spec("verl") is None and not os.environ.get(MAIN_CMD_ENV):
        raise ConfigError(f"run.backend is verl but verl is not installed in {sys.executable}",
                          hint="pip install -e '.[gpu]' on GPU nodes (verl[vllm]==0.9.1), or '.[verl]' without vLLM")
    check_verl_settings(cfg)
    if not cfg.verl.train_files:
        from engine.verl_backend.data import task_problems

        task_problems(cfg)
    _, composed_cfg, notes = resolve_command(cfg, **placeholder_command_args(cfg))
    from engine.verl_backend import composed
    from engine.verl_backend.data import check_validation_ground_truth

    if composed_cfg is None or composed.validation_enabled(composed_cfg):
        n_val = check_validation_ground_truth(cfg)
        notes.append(f"validation: {n_val} prompts, rule-based against their ground truth (no judge calls)")
    notes += secret_override_notes(cfg)
    from engine.judging.factory import make_judge
    from engine.templates.watched import TemplateSet

    make_judge(cfg, TemplateSet(cfg))
    builds_index = cfg.task.name == "demo_math" and cfg.teacher.build_if_missing
    if cfg.scorer.k > 0 and not (builds_index and cfg.teacher.index and not Path(cfg.teacher.index).exists()):
        from engine.scoring.scorer import Scorer

        Scorer(cfg).teacher_index  # noqa: B018 - TeacherIndexError naming the file
    return notes


def placeholder_command_args(cfg: Config) -> dict[str, Any]:
    """build_command arguments for composing before a run exists (paths are never touched)."""
    root = Path(cfg.verl.shared_dir or ".").resolve() / "<run>" / "verl"
    att = root / "attempt-1"
    paths = AttemptPaths(root, 1, root.parent / "checkpoints", root / "data", att, att / "metrics.jsonl",
                         att / "groups.jsonl", att / "hydra")
    return dict(run_name=cfg.run.name, paths=paths, train_files=str(root / "data" / "train.parquet"),
                val_files=str(root / "data" / "val.parquet"), gatherer="ropd_gatherer_preflight", resume_from=None)


def secret_override_notes(cfg: Config) -> list[str]:
    from engine.store.scrub import secret_overrides

    names = secret_overrides(cfg.verl.overrides)
    if not names:
        return []
    return [f"warning: verl.overrides sets {', '.join(names)}: scrubbed from command.txt, the run store and "
            "ropd-tui's own log lines, but verl prints its whole config into the run log; export secrets in the "
            "launch node's environment instead (before `ray start` on a cluster)"]


# Set after the user's overrides, so no YAML or override can turn them off (``++``: add or replace; a user's
# own YAML has no ``ropd`` section). preflight still checks the composed result (composed.check).
REWARD_WIRING = {
    "reward.reward_manager.source": "importlib",
    "reward.reward_manager.name": "ROPDRewardManager",
    "reward.reward_manager.module.path": "pkg://engine.verl_backend.reward_manager",
}
VERL_SEARCHPATH = "pkg://verl.trainer.config"


def _searchpath(config_dir: Path, config_name: str) -> list[str]:
    """verl's packaged configs plus whatever the YAML's own ``hydra.searchpath`` lists (a command-line
    ``hydra.searchpath`` replaces the YAML's, so both are passed)."""
    import yaml

    paths: list[str] = []
    try:
        raw = yaml.safe_load((config_dir / f"{config_name}.yaml").read_text(encoding="utf-8")) or {}
        paths = [str(p) for p in ((raw.get("hydra") or {}).get("searchpath") or [])]
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    return paths if VERL_SEARCHPATH in paths else paths + [VERL_SEARCHPATH]


def build_command(cfg: Config, *, run_name: str, paths: AttemptPaths, train_files: str, val_files: str,
                  gatherer: str, resume_from: Path | None, extra: list[str] | None = None) -> list[str]:
    """The ``main_ppo`` command line of one attempt: our per-run settings, then the user's
    ``verl.overrides``, then what ROPD must have whatever those say (the reward wiring, the ``ropd.*``
    keys, ``extra`` from :func:`engine.verl_backend.composed.derived_overrides`)."""
    config_dir, config_name = check_verl_settings(cfg)
    ov = {
        "actor_rollout_ref.model.path": cfg.verl.model_path,
        "data.train_files": train_files,
        "data.val_files": val_files,
        "trainer.nnodes": cfg.verl.nnodes,
        "trainer.n_gpus_per_node": cfg.verl.n_gpus_per_node,
        "trainer.project_name": "ropd",
        "trainer.experiment_name": run_name,
        "trainer.default_local_dir": paths.checkpoints,
        "trainer.resume_mode": "resume_path" if resume_from else "disable",
        "hydra.run.dir": paths.hydra_dir,
        # the file logger lives in verl's TaskRunner actor, which may run on another node of an existing
        # cluster: the job's runtime env carries the path to it
        "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH": paths.metrics,
    }
    if resume_from:
        ov["trainer.resume_from_path"] = resume_from
    forced = {f"++{k}": v for k, v in REWARD_WIRING.items()}
    forced.update({
        "++ropd.gatherer_name": gatherer,
        "++ropd.gatherer_namespace": GATHERER_NAMESPACE,
        "++ropd.group_timeout_s": cfg.verl.group_timeout_s,
        "++ropd.checker": cfg.task.checker,
        "++ropd.checker_timeout_s": cfg.task.checker_timeout_s,
    })
    # verl's main_ppo loads our plugin (engine.verl_backend): started through our entrypoint so that a
    # folder named engine/ (or verl/) in the working directory cannot shadow it
    main = shlex.split(os.environ[MAIN_CMD_ENV]) if os.environ.get(MAIN_CMD_ENV) else module_argv(MAIN_MODULE)
    argv = main + ["--config-path", str(config_dir), "--config-name", config_name]
    argv.append("hydra.searchpath=[" + ",".join(_searchpath(config_dir, config_name)) + "]")
    argv += [f"{k}={hydra_value(v)}" for k, v in ov.items()]
    argv += list(cfg.verl.overrides)
    argv += [f"{k}={hydra_value(v)}" for k, v in forced.items()]
    # main_ppo always joins the cluster the launcher connected to (RAY_ADDRESS), and ray.init refuses
    # num_cpus when joining; a user's ray_kwargs.ray_init.num_cpus sizes the launcher's local cluster.
    argv.append("ray_kwargs.ray_init.num_cpus=null")
    argv += list(extra or [])
    return argv


def resolve_command(cfg: Config, **kw: Any) -> tuple[list[str], Any, list[str]]:
    """(argv, composed config, notes): :func:`build_command` plus the derived overrides, composed as verl
    will compose it and checked (ConfigError when it would not train on ROPD rewards). Without verl in
    this interpreter (``ROPD_VERL_MAIN_CMD`` running another environment) the command is not composed."""
    import importlib.util

    argv = build_command(cfg, **kw)
    if importlib.util.find_spec("verl") is None:
        return argv, None, ["verl config: not composed here (verl is not installed in this interpreter)"]
    from engine.verl_backend import composed

    c = composed.compose(argv)
    extra = composed.derived_overrides(c)
    if extra:
        argv = build_command(cfg, **kw, extra=extra)
        c = composed.compose(argv)
    notes = composed.check(c)
    notes += [f"verl config: {e} (added by ropd-tui)" for e in extra]
    return argv, c, notes


def override_value(cfg: Config, key: str) -> str | None:
    """The value ``verl.overrides`` sets for ``key`` (the last one wins, quotes removed), else None."""
    found = None
    for ov in cfg.verl.overrides:
        k, sep, value = ov.lstrip("+").partition("=")
        if sep and k.strip() == key:
            found = value.strip().strip("'\"")
    return found


def local_num_cpus(cfg: Config) -> int | None:
    """``ray_kwargs.ray_init.num_cpus=N`` from ``verl.overrides`` (for the local cluster), else None."""
    value = override_value(cfg, "ray_kwargs.ray_init.num_cpus")
    return int(value) if value and value.isdigit() else None


def _absolute_paths(cfg: Config) -> dict[str, Any]:
    """The config as a dict with file paths made absolute (the gatherer actor's cwd may differ).
    Template paths that do not exist relative to this directory are left for the template loader,
    which also looks them up in the project."""
    d = cfg.to_dict()

    def fix(section: str, key: str, *, only_existing: bool = False) -> None:
        v = d[section].get(key)
        if not v or str(v).startswith(("pkg://", "http://", "https://")):
            return
        p = Path(v).expanduser()
        if only_existing and not p.exists():
            return
        d[section][key] = str(p.resolve())

    fix("teacher", "index")
    for role in ("rubricator", "verifier", "scalar_judge"):
        fix("templates", role, only_existing=True)
    fix("task", "train_file")
    fix("task", "val_file")
    return d


def run_folders(cfg: Config, run) -> tuple[Path, Path]:
    """(verl folder parent, checkpoints dir) of a run: the run's folder next to the store, or
    ``<verl.shared_dir>/<run name>`` when set (a path every node of a multi-node cluster sees: verl's
    TaskRunner reads the data and writes metrics there, every FSDP rank writes its checkpoint shards
    there, and resume reads them back from there)."""
    own = override_value(cfg, "trainer.default_local_dir")
    if cfg.verl.shared_dir:
        base = Path(cfg.verl.shared_dir).expanduser().resolve() / str(run.name)
        base.mkdir(parents=True, exist_ok=True)
        owner, mine = base / ".ropd-owner", str(Path(run.run_dir).resolve())
        if owner.exists() and owner.read_text(encoding="utf-8").strip() != mine:
            raise ConfigError(f"verl.shared_dir: {base} belongs to another run ({owner.read_text().strip()})",
                              hint="give this run another name (run.name=...) or use another verl.shared_dir")
        owner.write_text(mine + "\n", encoding="utf-8")
        return base, Path(own).expanduser().resolve() if own else base / "checkpoints"
    if own:  # the user's own checkpoint location: verl writes there, so resume looks there
        return Path(run.run_dir), Path(own).expanduser().resolve()
    return Path(run.run_dir), Path(getattr(run, "checkpoints_dir", Path(run.run_dir) / "checkpoints"))


def _connect_ray(cfg: Config) -> str:
    """Connect to the configured cluster or start a local one; returns the address for the child."""
    import ray

    address = cfg.verl.ray_address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {} if address else {"num_cpus": local_num_cpus(cfg)}
    ctx = ray.init(address=address, namespace=GATHERER_NAMESPACE, ignore_reinit_error=True,
                   log_to_driver=True, **kwargs)
    return address if address and address != "local" else ctx.address_info["gcs_address"]


class _Stop:
    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None

    def __call__(self, signum, _frame) -> None:
        self.requested = True
        self.signum = signum


def _log(msg: str) -> None:
    print(f"[ropd-verl] {msg}", flush=True)


def _describe(r: StepReport) -> str:
    m = r.metrics
    parts = [f"step {r.step}"]
    for key, label in (("reward/mean", "reward"),
                       ("accuracy", "accuracy"), ("timing_s/step", "s/step")):
        if key in m:
            parts.append(f"{label} {m[key]:.4g}")
    if r.n_groups:
        parts.append(f"groups {r.n_groups} (failed {m.get('ropd/failed_groups', 0):.0f})")
    return ", ".join(parts)


def _terminate(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(cfg: Config, store, run, resume: bool) -> int:
    """Run (or resume) one verl training run; returns the process exit code for the train worker."""
    for note in preflight(cfg):
        _log(note)
    from engine.judging.cost import EXIT_BUDGET, run_budget_reason
    from engine.tracking.mirror import TrackerMirror

    mirror = TrackerMirror.for_run(cfg, store, run, log=_log)  # a missing tracker package: ConfigError
    run_id = run.id
    paths = AttemptPaths.new(*run_folders(cfg, run))
    resume_from, start_step = None, 0
    if resume:
        found = latest_checkpoint(paths.checkpoints)
        if found:
            resume_from, start_step = found
        else:
            _log(f"no checkpoint under {paths.checkpoints}; starting from scratch")
    reason = run_budget_reason(store, run_id, cfg.judge.budget_usd, start_step) if resume_from else None
    if reason:  # resumed without raising judge.budget_usd: not one more step past it
        _log(f"{reason}; not starting verl (resume with --budget-usd to raise the budget)")
        return EXIT_BUDGET
    train_files, val_files = _prepare_data(cfg, paths)
    name = gatherer_name(run_id, paths.attempt)
    argv, composed_cfg, _ = resolve_command(cfg, run_name=str(run.name), paths=paths, train_files=train_files,
                                            val_files=val_files, gatherer=name, resume_from=resume_from)
    shown = scrub(argv)  # secret values (``...WANDB_API_KEY=...``, key-like strings) -> ***
    (paths.attempt_dir / "command.txt").write_text(" ".join(shown) + "\n", encoding="utf-8")

    import ray

    from engine.templates.watched import TemplateSet

    from engine.verl_backend.gatherer import start_gatherer

    # Records the template versions in use and every live edit (accepted or rejected) in the store; the
    # gatherer watches the same files on this node and scores with them (it never writes the store).
    templates = TemplateSet(cfg, store, run_id)
    stop = _Stop()
    old: dict = {}
    proc = None
    beat = VerlHeartbeat(store, run_id, start_step, composed_cfg, cfg.supervisor.no_progress_after_s)
    try:
        if cfg.templates.watch:
            templates.start()
        ray_address = _connect_ray(cfg)
        # after ray.init, which installs its own driver handlers
        old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        from engine.verl_backend.nodes import require_shared_folder

        n_nodes = require_shared_folder(paths.root.parent, model_path=cfg.verl.model_path)
        if n_nodes > 1:
            _log(f"{n_nodes} nodes: every one sees {paths.root.parent}, the model and ROPD's reward manager")
        # the handle must stay referenced: a non-detached actor dies with its last handle
        gatherer = start_gatherer(_absolute_paths(cfg), str(paths.groups), name=name, namespace=GATHERER_NAMESPACE,
                                  group_timeout_s=cfg.verl.group_timeout_s,
                                  straggler_warn_s=cfg.verl.straggler_warn_s)
        env = dict(os.environ, RAY_ADDRESS=ray_address, VERL_FILE_LOGGER_PATH=str(paths.metrics),
                   PYTHONUNBUFFERED="1", PYTHONPATH=_same_engine_path())
        _log(f"attempt {paths.attempt}: {' '.join(shown)}")
        store.add_event(run_id, "resumed" if resume_from else "started",
                        f"verl attempt {paths.attempt}" + (f" from {resume_from.name}" if resume_from else ""),
                        step=start_step or None, data={"argv": shown, "ray_address": ray_address})
        if stop.requested:  # stopped while starting up
            return 130 if stop.signum == signal.SIGINT else 143
        proc = subprocess.Popen(argv, env=env, cwd=str(paths.attempt_dir))
        ingest = StepIngestor(store, run_id, paths.metrics, paths.groups, start_step=start_step)
        threshold = cfg.scorer.failure_threshold
        warned_no_metrics = False
        while True:
            templates.step = ingest.last_step + 1
            done = proc.poll() is not None
            reports = ingest.flush() if done else ingest.poll()
            beat.update(ingest)
            for ev in ingest.new_events:
                _log(f"{ev.get('kind', 'warning')}: {ev.get('message', '')}")
            ingest.new_events.clear()
            for r in reports:
                _log(_describe(r))
                if r.failure_rate is not None and r.failure_rate > threshold:
                    err = ScoringFailureRateError(
                        f"step {r.step}: {r.failure_rate:.0%} of the scored groups failed "
                        f"(scorer.failure_threshold {threshold:.0%}); training stopped",
                        hint="see the failed groups' causes with `ropd-tui --headless logs` or the TUI, "
                             "fix the judge, then resume the run")
                    store.add_event(run_id, "stopped", str(err), step=r.step)
                    _log(f"error: {err}")
                    _terminate(proc, cfg.supervisor.stop_grace_s)
                    ingest.flush()
                    return err.exit_code
            if reports and mirror is not None:
                mirror.sync()
            reason = run_budget_reason(store, run_id, cfg.judge.budget_usd, ingest.last_step) if reports else None
            if reason and not done:
                store.add_event(run_id, "budget_reached", reason, step=ingest.last_step)
                _log(f"{reason}; stopping verl")
                _terminate(proc, cfg.supervisor.stop_grace_s)
                ingest.flush()
                return EXIT_BUDGET
            if not warned_no_metrics and ingest.metric_lines == 0 and ingest.max_group_step >= start_step + 3:
                warned_no_metrics = True
                msg = (f"scored groups arrive (step {ingest.max_group_step}) but verl's metrics file "
                       f"{paths.metrics} stays empty: on a multi-node cluster verl's TaskRunner may run on "
                       "another node, where it writes that file; launch from the Ray head node or make the "
                       "run folder a path every node can write (rubrics, verdicts and rewards still arrive)")
                _log(f"warning: {msg}")
                store.add_event(run_id, "warning", msg, step=ingest.max_group_step)
            if done:
                break
            if stop.requested:
                _log("stop requested; stopping verl")
                _terminate(proc, cfg.supervisor.stop_grace_s)
                for r in ingest.flush():
                    _log(_describe(r))
                return 130 if stop.signum == signal.SIGINT else 143
            time.sleep(POLL_S)
        rc = proc.returncode
        _log(f"verl exited with code {rc}; gatherer: {_gatherer_stats(gatherer)}")
        return 0 if rc == 0 else (rc if rc and rc > 0 else 1)
    finally:
        if proc is not None and proc.poll() is None:
            _terminate(proc, cfg.supervisor.stop_grace_s)
        beat.close()
        if mirror is not None:
            mirror.close()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        templates.stop()
        ray.shutdown()


class VerlHeartbeat:
    """The run's sign of life inside a verl step (engine.runs.heartbeat, the same ``run_progress`` row the
    embedded trainer writes), inferred on the launch node from what reaches it: verl generates and ROPD
    scores at the same time (a prompt's group is judged as soon as its rollouts are in), so a step reads
    "starting up" until the first group or metrics line arrives, then "scoring k/N groups" (N =
    ``data.train_batch_size``) while groups arrive, "updating" once all N are in and verl has not yet
    logged the step, and "generating" from a logged step until the next step's first group."""

    def __init__(self, store, run_id: int, start_step: int, composed_cfg: Any, no_progress_after_s: float):
        from engine.runs.heartbeat import Heartbeat
        from engine.verl_backend.composed import resolved

        def select(key: str) -> int | None:
            v = resolved(composed_cfg, key) if composed_cfg is not None else None
            return int(v) if isinstance(v, (int, float)) else None

        self.groups_per_step = select("data.train_batch_size")
        self.hb = Heartbeat(store, run_id, total_steps=select("trainer.total_training_steps"),
                            no_progress_after_s=no_progress_after_s)
        self.start_step = start_step
        self.hb.phase("startup", step=start_step + 1)
        self.hb.start()
        self._started = False

    def update(self, ingest: StepIngestor) -> None:
        step = ingest.last_step + 1
        arrived = ingest.pending_groups(step)
        if not self._started and not arrived and ingest.last_step <= self.start_step:
            return  # verl still loading the model, starting vLLM, or validating before training
        self._started = True
        total = self.groups_per_step
        if not arrived:
            self.hb.phase("generate", step=step)
        elif total and arrived >= total:
            self.hb.phase("update", step=step)
        else:
            if self.hb.name != "score" or self.hb.step != step:
                self.hb.phase("score", step=step, total=total, unit="groups")
            self.hb.advance(arrived)

    def close(self) -> None:
        self.hb.close()


def _same_engine_path() -> str:
    """PYTHONPATH for main_ppo: this checkout first, so verl's driver (and the Ray workers it starts, which
    get the driver's sys.path) import the same ``engine`` as this launcher and its gatherer actor; an actor
    handle used across two versions of one class calls the wrong methods."""
    root = str(Path(__file__).resolve().parents[2])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    return os.pathsep.join([root, *rest])


def _gatherer_stats(gatherer) -> str:
    import ray

    try:
        return str(ray.get(gatherer.stats.remote(), timeout=30))
    except Exception as e:  # noqa: BLE001 - only for the log line
        return f"unavailable ({type(e).__name__})"


def _prepare_data(cfg: Config, paths: AttemptPaths) -> tuple[str, str]:
    from engine.verl_backend.data import prepare_data

    return prepare_data(cfg, paths.data)
