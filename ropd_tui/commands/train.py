"""``ropd-tui --headless train [--config FILE] [--name NAME] [--detach] [key=value ...]``

Validates the whole config first (unknown keys, model, teacher index, judge, verl installed): any
problem is reported before a run exists (exit 2). Then creates the run in the store, launches the
training worker through the supervisor and streams one line per step (reward, accuracy, judge
failures, seconds per step) until the run ends. Ctrl-C stops the run cleanly and prints how to
resume it. Exit code: 0 finished, 1 failed/killed, 2 bad input, 3 judge unreachable, 4 too many
failed groups, 5 judge budget reached (stopped cleanly, resumable), 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._output import echo

POLL_S = 1.0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="start a training run and follow it",
        description="Start a training run (embedded trainer or verl) from a config file plus key=value "
                    "overrides, and stream its progress until it ends.")
    p.add_argument("--config", "-c", help="run config YAML (e.g. configs/demo.yaml); defaults when omitted")
    p.add_argument("--name", help="run name; it must be free (default: run.name from the config; when that is "
                                  "taken, the first free NAME-2, NAME-3, ... and a note on how to resume the "
                                  "existing run instead)")
    p.add_argument("--detach", action="store_true", help="return right after the launch; follow with `status`/`logs`")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.steps=5")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.errors import ConfigError
    from engine.runs.launch import choose_run_name, launch_run
    from engine.store import open_store
    from engine.trainers.preflight import preflight

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ConfigError(f"unexpected argument {bad[0]!r}: overrides are key=value (e.g. trainer.steps=5)")
    from engine.store.runstore import check_run_name

    if args.name:
        check_run_name(args.name, "--name")  # before any preflight output
    overrides = list(args.overrides)
    if args.name:
        overrides.append(f"run.name={args.name}")
    cfg = load_config(args.config, overrides)
    check_run_name(str(cfg.run.name), "run.name")
    store = open_store(args.store, cfg)
    choice = choose_run_name(store, cfg.run.name, args.name)  # a taken --name stops here, before the preflight
    for note in preflight(cfg):
        echo(note)
    if choice.note():
        echo(choice.note())
    name = choice.name
    store_file = Path(store.path).resolve()
    from engine.runs.supervisor import Supervisor

    run = launch_run(cfg, store, name)
    sup = Supervisor(store)
    echo(f"run {name} started (store {store_file}); log: {run.log_path}")
    if args.detach:
        echo(f"follow it with: ropd-tui --headless status {name}   |   stop: ropd-tui --headless stop {name}")
        return 0
    return follow(store, sup, run)


# ---------------------------------------------------------------------------------------------
# following a run

_SHOW_EVENTS = {"failed", "stopped", "stalled", "recovered", "template_changed", "template_rejected", "monitor_lost",
                "scoring_failed", "step_skipped", "resumed", "no_signal", "budget_reached", "warning"}


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _first(metrics: dict[str, float], keys) -> float | None:
    for k in keys:
        if metrics.get(k) is not None:
            return metrics[k]
    return None


class _Follower:
    """Prints new steps (from the store) and notable events of one run."""

    def __init__(self, store, run):
        from engine.store import ACCURACY_KEYS, REWARD_KEYS

        from ._train_progress import ProgressPrinter

        self.store = store
        self.run = run
        self.reward_keys, self.acc_keys = REWARD_KEYS, ACCURACY_KEYS
        self.event_seq = max((e["seq"] for e in store.events(run.id)), default=0)
        self.printed_step = 0
        self.total = (run.config.get("trainer") or {}).get("steps") if run.backend == "embedded" else None
        self.log_pos = 0
        self.started = time.time()
        self.first_step_at: float | None = None
        self.printed_val_step = 0
        from engine.progress import PROGRESS_FILE

        from ._progress import ProgressReporter

        self.progress_path = Path(run.run_dir) / PROGRESS_FILE
        self.reporter = ProgressReporter()
        # the trainer's heartbeat (engine.runs.heartbeat) as "now: ..." lines, through say()
        self.progress = ProgressPrinter(store, run, echo=lambda line: self.say(line, flush=True))

    def say(self, text: str, **kw) -> None:
        """A line of output (the progress bar, if shown, is taken off first)."""
        self.reporter.clear()
        echo(text, **kw)

    def poll_progress(self) -> None:
        """The judge progress of the step being scored (the worker writes it to the run folder)."""
        from engine.progress import read_snapshot

        snap = read_snapshot(self.progress_path)
        if snap is None or snap.finished or time.time() - snap.wall_time >= 10:
            return
        if snap.requests_done or snap.in_flight or snap.requests_failed:  # the offline judge sends no requests
            self.reporter.update(snap)

    def step_metrics(self, step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in (*self.reward_keys, *self.acc_keys, "judge/failed_groups", "judge/failure_rate",
                    "time/step", "timing_s/step"):
            try:
                series = self.store.metric_series(self.run.id, key, since_step=step - 1)
            except Exception:
                continue
            for point in series or []:
                s, v = (point["step"], point["value"]) if isinstance(point, dict) else (point[0], point[1])
                if s == step:
                    out[key] = v
        return out

    def poll(self) -> None:
        for e in self.store.events(self.run.id, after_seq=self.event_seq):
            self.event_seq = e["seq"]
            if e["kind"] in _SHOW_EVENTS:
                self.say(f"[{e['kind']}] {e['message']}")
        steps = self.store.steps(self.run.id)
        for row in steps:
            step = row["step"]
            if step <= self.printed_step:
                continue
            self.printed_step = step
            if self.first_step_at is None:
                self.first_step_at = time.time()
            m = self.step_metrics(step)
            n_groups, n_failed = row.get("n_groups") or 0, row.get("n_failed") or 0
            sps = _first(m, ("time/step", "timing_s/step"))
            total = f"/{self.total}" if self.total else ""
            self.say(f"step {step}{total}  reward {_fmt(_first(m, self.reward_keys))}  "
                  f"accuracy {_fmt(_first(m, self.acc_keys))}  judge failures {n_failed}/{n_groups}  "
                  f"{_fmt(sps, '.1f')} s/step", flush=True)
        self.poll_validation()
        self.progress.poll()
        self.poll_progress()

    def poll_validation(self) -> None:
        """Held-out accuracy lands after its step's row (the evaluation runs after the step is stored)."""
        for step, value in self.store.metric_series(self.run.id, "val/accuracy", since_step=self.printed_val_step):
            self.printed_val_step = step
            self.say(f"eval after step {step}: val accuracy {_fmt(value)}", flush=True)

    def echo_startup_log(self) -> None:
        """Until the first step, show the worker's own start-up lines (model conversion, errors)."""
        if self.printed_step or self.run.backend != "embedded":
            return
        path = Path(self.run.log_path)
        if not path.exists():
            return
        with path.open("rb") as fh:
            fh.seek(self.log_pos)
            chunk = fh.read()
        cut = chunk.rfind(b"\n") + 1
        self.log_pos += cut
        for line in chunk[:cut].decode("utf-8", "replace").splitlines():
            line = line.rstrip()
            if line and not line.startswith("step "):
                self.say(f"  | {line}", flush=True)


def follow(store, sup, run) -> int:
    from engine.store import TERMINAL_STATUSES

    f = _Follower(store, run)
    stopping = False
    while True:
        try:
            sup.refresh(run.id)
            cur = store.get_run(run.id)
            f.echo_startup_log()
            f.poll()
            if cur.status in TERMINAL_STATUSES:
                f.reporter.close()
                return _outcome(cur, f, interrupted=stopping)
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            if stopping:
                echo(f"no longer waiting; the run is still stopping. Check it with: ropd-tui --headless status {run.name}")
                return 130
            stopping = True
            echo(f"\nstopping {run.name} (the current step is aborted cleanly; Ctrl-C again to stop waiting) ...",
                  flush=True)
            sup.stop(run.id)


def _outcome(cur, f: _Follower, *, interrupted: bool) -> int:
    from engine.judging.cost import EXIT_BUDGET
    from engine.wording import plural

    took = time.time() - f.started
    times = f.progress.phase_times()
    if times:
        echo(times)
    if cur.status == "finished":
        echo(f"run {cur.name} finished: {plural(cur.last_step or f.printed_step, 'step')} in {took:.0f} s. "
              f"Inspect it with: ropd-tui (UI) or ropd-tui --headless metrics {cur.name}")
        return 0
    if cur.status == "stopped" and cur.exit_code == EXIT_BUDGET:
        echo(f"run {cur.name} stopped at its judge budget after step {cur.last_step or 0}: {cur.cause}")
        return EXIT_BUDGET
    if cur.status == "stopped":
        echo(f"run {cur.name} stopped after step {cur.last_step or 0}. Resume it with: "
              f"ropd-tui --headless resume {cur.name}")
        return 130 if interrupted else 1
    cause = f": {cur.cause}" if cur.cause else ""
    echo(f"run {cur.name} {cur.status}{cause}", file=sys.stderr)
    echo(f"log: {cur.log_path}   (ropd-tui --headless logs {cur.name})", file=sys.stderr)
    code = cur.exit_code if cur.exit_code in (2, 3, 4) else 1
    return code
