"""The training subprocess the supervisor launches, for every backend.

    python -m engine.runs.worker --store PATH --run RUN [--resume]

Reads the run's config snapshot from the store, rebuilds the typed :class:`~engine.config.Config`,
dispatches on ``run.backend`` (``embedded`` -> :mod:`engine.trainers.embedded`, ``verl`` ->
``engine.verl_backend.launcher.run``), and records the outcome in the store.

Signals: SIGTERM (or SIGINT) stops the run cleanly: the current step is aborted while nothing has
changed the weights yet (or finished when it is already in its optimizer step), the last completed
step is checkpointed, the run is marked ``stopped`` and the worker exits with :data:`EXIT_STOPPED`.

Exit codes: 0 finished; 1 crashed (traceback in the run log); 2 bad input (config, model, teacher
index, template); 3 judge unreachable; 4 scoring failure rate over the threshold; 5 judge budget
reached (``judge.budget_usd``: stopped cleanly after a checkpoint, status ``stopped``); 28 the disk filled
up (one line in the log, no traceback); 143 stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any

from engine.errors import UserError
from engine.judging.cost import EXIT_BUDGET

EXIT_OK, EXIT_CRASHED, EXIT_STOPPED = 0, 1, 143
EXIT_DISK_FULL = 28  # ENOSPC: the run stopped because its disk filled up (the monitor says so)


def _log(msg: str) -> None:
    try:
        print(msg, flush=True)
    except OSError:  # the log is on a full disk: nothing more to say there
        pass


def _err(msg: str) -> None:
    try:
        print(msg, file=sys.stderr, flush=True)
    except OSError:
        pass


def _disk_full(err: BaseException, run: Any) -> bool:
    """The error came from a full disk: said so (ENOSPC, SQLite's "disk is full"), or the run folder's
    file system has no space left (PyTorch only says "file write failed")."""
    from engine.files import disk_full_at, is_disk_full

    if is_disk_full(err):
        return True
    try:
        return disk_full_at(run.run_dir)
    except Exception:  # noqa: BLE001
        return False


def _disk_full_end(store, run, err: BaseException) -> int:
    cause = f"the disk filled up: {str(err).splitlines()[0][:300] if str(err) else type(err).__name__}"
    _err(f"error: {cause} (free space on the file system of {run.run_dir}, then resume the run)")
    _finish(store, run.id, status="failed", exit_code=EXIT_DISK_FULL, cause=cause)  # best effort: the disk is full
    _event(store, run.id, "failed", cause)
    return EXIT_DISK_FULL


def _verl_failed(store, run, rc: int) -> int:
    """The end of a verl run that exited with ``rc`` (not 0, not the budget). verl's trainer is another
    process: a full disk shows only in the log it wrote (the run log) or in the space left where the run
    writes, and gets the same end as in the embedded trainer ("the disk filled up", exit code 28)."""
    if rc != 4:
        from engine.files import log_says_disk_full
        from engine.runs.supervisor import log_tail

        sys.stdout.flush()
        line = log_says_disk_full(log_tail(run.log_path))  # an unreadable log reads as no lines
        err = RuntimeError(f"verl exited with code {rc}" + (f"; its log says: {line[:200]}" if line else ""))
        if line or _disk_full(err, run):
            return _disk_full_end(store, run, err)
    _finish(store, run.id, status="failed", exit_code=rc,
            cause="scoring failure rate over the threshold" if rc == 4 else f"verl exited with code {rc}")
    return rc


_LIVE = ("created", "starting", "running", "stalled")


def _finish(store, run_id: int, *, status: str, exit_code: int, cause: str | None = None) -> None:
    """Record the end (the run monitor records it too, from the exit code, unless we did first)."""
    try:
        store.transition(run_id, _LIVE, status=status, cause=cause, exit_code=exit_code, ended_at=time.time())
    except Exception as err:  # the store itself may be the problem; the exit code still tells
        _err(f"could not record the run's end in the store: {err}")


def run_worker(store_path: str, run_ref: str, resume: bool, *, stop=None) -> int:
    from engine.config import build_config
    from engine.store import TERMINAL_STATUSES, RunStore
    from engine.trainers.embedded import StopControl, StopRequested

    stop = stop or StopControl()
    try:
        store = RunStore(store_path, create=False)
        run = store.get_run(run_ref)
    except UserError as err:
        _err(f"error: {err}")
        return err.exit_code
    except StopRequested:
        return EXIT_STOPPED
    try:
        cfg = build_config(run.config, source=f"config of run '{run.name}'")
        if cfg.run.backend != run.backend:
            cfg.run.backend = run.backend  # the store's backend column is the truth
        # Normally the run monitor has already marked the run running; this covers a manual start.
        store.transition(run.id, ("created", "starting", *TERMINAL_STATUSES), status="running", cause=None,
                         exit_code=None, ended_at=None, pid=os.getpid(), started_at=time.time())
        _log(f"run {run.name} (id {run.id}, backend {run.backend}){' resuming' if resume else ''}; store {store.path}")
        if run.backend == "embedded":
            # The embedded trainer only loads local models: never wait on the hub (read at import time).
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            # one progress line per step is ours (and the heartbeat): no tqdm bars in the run log
            os.environ.setdefault("TQDM_DISABLE", "1")
            os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
            from engine.trainers import embedded

            result = embedded.run(cfg, store, run, resume, stop=stop, log=_log)
            if result.status == "stopped":
                return _stopped(store, run, result.last_step)
            if result.status == "budget":
                return _budget_stopped(store, run, result.message, result.last_step)
            _finish(store, run.id, status="finished", exit_code=EXIT_OK)
            store.add_event(run.id, "finished", result.message, step=result.last_step)
            _log(result.message)
            return EXIT_OK
        if run.backend == "verl":
            from engine.verl_backend import launcher

            rc = int(launcher.run(cfg, store, run, resume) or 0)
            if stop.requested or rc in (130, EXIT_STOPPED):  # the launcher handles the signal itself
                return _stopped(store, run, None)
            if rc == 0:
                _finish(store, run.id, status="finished", exit_code=EXIT_OK)
                return EXIT_OK
            if rc == EXIT_BUDGET:
                return _budget_stopped(store, run, "judge budget reached (judge.budget_usd)", None)
            return _verl_failed(store, run, rc)
        raise UserError(f"run '{run.name}' has unknown backend '{run.backend}'", hint="use embedded or verl")
    except StopRequested:
        stop.close()
        return _stopped(store, run, None)
    except UserError as err:
        stop.close()
        if _disk_full(err, run):
            return _disk_full_end(store, run, err)
        _err(f"error: {err}")
        _finish(store, run.id, status="failed", exit_code=err.exit_code, cause=err.message)
        _event(store, run.id, "failed", err.message)
        return err.exit_code
    except MemoryError:
        stop.close()
        _err(traceback.format_exc())
        _finish(store, run.id, status="oom", exit_code=EXIT_CRASHED, cause="out of memory")
        return EXIT_CRASHED
    except Exception as err:  # a bug or an environment problem: keep the traceback in the run log
        stop.close()
        if _disk_full(err, run):
            return _disk_full_end(store, run, err)
        _err(traceback.format_exc())
        cause = f"{type(err).__name__}: {err}"
        _finish(store, run.id, status="failed", exit_code=EXIT_CRASHED, cause=cause[:500])
        _event(store, run.id, "failed", cause[:500])
        return EXIT_CRASHED


def _event(store, run_id: int, kind: str, message: str, step: int | None = None, data: dict[str, Any] | None = None):
    try:
        store.add_event(run_id, kind, message, step=step, data=data)
    except Exception as err:
        _err(f"could not record the {kind} event: {err}")


def _stopped(store, run, last_step: int | None) -> int:
    msg = (f"stopped{f' after step {last_step}' if last_step else ''}; resume with: "
           f"ropd-tui --headless resume {run.name}")
    _log(msg)
    _finish(store, run.id, status="stopped", exit_code=EXIT_STOPPED, cause="stopped by request")
    _event(store, run.id, "stopped", msg, step=last_step)
    return EXIT_STOPPED


def _budget_stopped(store, run, reason: str, last_step: int | None) -> int:
    msg = (f"{reason}; the run stopped cleanly. Resume it with a higher budget: "
           f"ropd-tui --headless resume {run.name} --budget-usd <USD>")
    _log(msg)
    _finish(store, run.id, status="stopped", exit_code=EXIT_BUDGET, cause=msg)
    _event(store, run.id, "stopped", msg, step=last_step)
    return EXIT_BUDGET


def main(argv: list[str] | None = None) -> int:
    from engine.trainers.embedded import StopControl

    stop = StopControl()
    stop.install()  # before anything slow, so a stop during start-up is clean too
    parser = argparse.ArgumentParser(prog="python -m engine.runs.worker",
                                     description="Train one run of a ropd-tui run store (launched by the supervisor).")
    parser.add_argument("--store", required=True, help="run store path (the SQLite file)")
    parser.add_argument("--run", required=True, help="run name or id")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = parser.parse_args(argv)
    return run_worker(args.store, args.run, args.resume, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
