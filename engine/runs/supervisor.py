"""Launch, watch, stop, resume, restart and delete training runs; the store is the source of truth.

Process layout of a run::

    supervisor (TUI / headless command; may exit at any time)
      └─ python -m engine.runs.monitor      <- new session (start_new_session): session id = its pid
           └─ training command             <- same session; its workers (Ray, dataloaders) too,
                                              even when they create their own process groups

The monitor starts the training command, waits for it, classifies the exit (finished, failed,
killed, oom, stopped) and writes it to the store, so ends are recorded even when no UI is open.
Any process can re-attach: liveness is checked from the store's (pid, start time) pairs, so a
reused pid is never mistaken for the run. :meth:`Supervisor.refresh` also catches a monitor that
vanished without writing an end ("lost" -> failed) and flags stalls (no step for too long).

Restart from scratch keeps history: the run gets a new *attempt* (older steps stay queryable, see
:mod:`engine.store.runstore`), the old checkpoints move to ``<run dir>/attempts/<n>/checkpoints``, and
the command runs without ``--resume``. Resume runs the recorded command with ``--resume`` (the
trainer continues from the latest checkpoint in ``<run dir>/checkpoints``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from engine.runs import procinfo
from engine.runs.entrypoint import OUR_PACKAGES, is_entrypoint_argv, module_argv
from engine.config import SupervisorConfig
from engine.errors import StoreError
from engine.store import ACTIVE_STATUSES, RunRecord, RunStore, StoreReadOnlyError
from engine.store.scrub import is_secret_name

RESUME_FLAG = "--resume"
STARTING_GRACE_S = 60.0  # a launch that has not recorded its monitor yet is not "lost" before this


def hostname() -> str:
    return socket.gethostname()


# Module names a run recorded before engine/ was split into folders (v0.1): a resume or restart of
# such a run starts the same program under its current name.
LEGACY_MODULES = {"engine.train_worker": "engine.runs.worker", "engine.run_monitor": "engine.runs.monitor"}
WORKER_MODULE = "engine.runs.worker"
MONITOR_MODULE = "engine.runs.monitor"


def current_argv(argv: Sequence[str]) -> list[str]:
    """A recorded command as it must be started today.

    Our own modules are always started through :mod:`engine.runs.entrypoint` (so that the working
    directory cannot shadow our packages), with this install's package folders; a command recorded
    as ``python -m engine.train_worker ...`` (before the move, or before the entrypoint) is
    translated. Any other command (a user's own trainer) is kept as it is."""
    out = [str(a) for a in argv]
    if is_entrypoint_argv(out):
        return module_argv(LEGACY_MODULES.get(out[3], out[3]), *out[4:])
    if len(out) >= 3 and out[1] == "-m" and out[2].split(".")[0] in OUR_PACKAGES:
        return module_argv(LEGACY_MODULES.get(out[2], out[2]), *out[3:])
    return out


def worker_argv(store: RunStore | str | os.PathLike, run_id: int) -> list[str]:
    """The training command for every backend (engine.runs.worker dispatches on run.backend)."""
    path = store.path if isinstance(store, RunStore) else Path(store)
    return module_argv(WORKER_MODULE, "--store", path, "--run", run_id)


def supervisor_settings(run: RunRecord) -> SupervisorConfig:
    """The run's supervisor section from its config snapshot (defaults for missing keys)."""
    sec = (run.config or {}).get("supervisor") or {}
    base = SupervisorConfig()
    for key in ("stall_after_start_s", "stall_between_steps_s", "stop_grace_s"):
        try:
            if sec.get(key) is not None:
                setattr(base, key, float(sec[key]))
        except (TypeError, ValueError):
            pass
    return base


_PROGRESS_BAR_RE = re.compile(r"\d{1,3}%\|[^|]*\|\s*[\d.]+[kMG]?/[\d.?]+[kMG]?")


def is_progress_bar(line: str) -> bool:
    """A tqdm-style progress bar (``Map: 100%|████| 4/4 [00:00<00:00, ...]``, possibly several redrawn
    with carriage returns): noise in a log, left out of what ``logs``, the UI and failure tails show."""
    return bool(_PROGRESS_BAR_RE.search(line))


def log_tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> list[str]:
    """The last lines of a log file (monitor notes and progress bars excluded)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    rows = [ln for ln in data.splitlines()
            if ln.strip() and not ln.startswith("[ropd-tui]") and not is_progress_bar(ln)]
    return rows[-lines:]


def check_stall(store: RunStore, run: RunRecord, now: float | None = None) -> RunRecord:
    """Flag a running run as stalled when no step came within the configured times."""
    if run.status != "running":
        return run
    now = time.time() if now is None else now
    cfg = supervisor_settings(run)
    started = run.started_at or run.created_at or now
    if run.last_step_at is None or run.last_step_at < started:
        idle, limit = now - started, cfg.stall_after_start_s
        cause = f"no step within {limit:.0f} s after start"
    else:
        idle, limit = now - run.last_step_at, cfg.stall_between_steps_s
        cause = f"no new step for {limit:.0f} s since step {run.last_step}"
    if limit > 0 and idle > limit:
        try:
            if store.transition(run.id, ("running",), status="stalled", cause=cause):
                store.add_event(run.id, "stalled", cause, step=run.last_step,
                                data={"idle_s": round(idle, 1), "limit_s": limit})
        except StoreReadOnlyError:  # a full disk or a read-only store: say it, record it later
            return dataclasses.replace(run, status="stalled", cause=cause)
        return store.get_run(run.id)
    return run


@dataclass
class CheckpointUsage:
    """The disk a run's checkpoints take (current attempt and the older attempts restart kept)."""

    bytes: int
    count: int
    folders: list[Path]


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def checkpoint_usage(run: RunRecord) -> CheckpointUsage:
    """Size and number of the run's checkpoints (``checkpoints/`` and ``attempts/*/checkpoints``)."""
    folders = [run.checkpoints_dir]
    attempts = run.run_dir / "attempts"
    if attempts.is_dir():
        folders += sorted(p / "checkpoints" for p in attempts.iterdir() if (p / "checkpoints").is_dir())
    folders = [f for f in folders if f.is_dir()]
    count = sum(1 for f in folders for p in f.iterdir() if p.is_dir() and p.name.startswith("checkpoint-"))
    return CheckpointUsage(bytes=sum(_tree_bytes(f) for f in folders), count=count, folders=folders)


def fmt_bytes(n: int) -> str:
    """``1.6 GB``, ``420 MB``, ``12 kB`` (decimal units, as ``du -h --si``)."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def run_processes(run: RunRecord) -> list[procinfo.ProcStat]:
    """Every live process of a run: its session's members plus descendants that left the session."""
    found: dict[int, procinfo.ProcStat] = {}
    if run.sid:
        for st in procinfo.session_members(run.sid):
            found[st.pid] = st
    for root in (run.monitor_pid, run.pid):
        if root and procinfo.is_alive(root, run.monitor_start if root == run.monitor_pid else run.proc_start):
            st = procinfo.stat(root)
            if st:
                found[st.pid] = st
            for st in procinfo.descendants(root):
                found[st.pid] = st
    found.pop(os.getpid(), None)
    return list(found.values())


class Supervisor:
    """Runs as supervised subprocesses. Thread-compatible: use one instance per thread or a lock."""

    def __init__(self, store: RunStore):
        self.store = store
        self._children: dict[int, subprocess.Popen] = {}  # monitors we started (reaped in refresh)

    # -- helpers ----------------------------------------------------------------------------------
    def _run(self, run: RunRecord | str | int) -> RunRecord:
        if isinstance(run, RunRecord):
            return self.store.get_run(run.id)
        return self.store.get_run(run)

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def _local(self, run: RunRecord) -> bool:
        return not run.host or run.host == hostname()

    def monitor_alive(self, run: RunRecord) -> bool:
        self._reap()
        return procinfo.is_alive(run.monitor_pid, run.monitor_start)

    def is_running(self, run: RunRecord | str | int) -> bool:
        run = self.refresh(run)
        return run.active

    # -- launch -----------------------------------------------------------------------------------
    def launch(self, run: RunRecord | str | int, argv: Sequence[str] | None = None,
               env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None, *,
               resume: bool = False, event: str | None = None) -> RunRecord:
        """Start the run's training command under a monitor in a new session; returns at once.

        ``argv`` defaults to the run's recorded command (or ``python -m engine.runs.worker ...``);
        it is recorded without ``--resume``, which is appended when ``resume`` is true.
        """
        run = self.refresh(run)
        if run.active:
            raise StoreError(f"run {run.name!r} is already {run.status} (pid {run.pid or run.monitor_pid})",
                             hint=f"stop it first: ropd-tui --headless stop {run.name}")
        self._wait_previous_monitor(run)
        base = current_argv(argv if argv is not None else (run.argv or worker_argv(self.store, run.id)))
        base = [a for a in base if a != RESUME_FLAG]
        command = base + ([RESUME_FLAG] if resume else [])
        env_over = {str(k): str(v) for k, v in (env if env is not None else run.env or {}).items()}
        workdir = str(cwd) if cwd is not None else (run.cwd or os.getcwd())
        if not Path(workdir).is_dir():
            raise StoreError(f"working directory {workdir} of run {run.name!r} does not exist",
                             hint="recreate it, or pass another working directory")
        full_env = dict(os.environ)
        full_env.update(env_over)
        full_env.update({"ROPD_STORE": str(self.store.path), "ROPD_RUN_ID": str(run.id), "ROPD_RUN_NAME": run.name,
                         "PYTHONUNBUFFERED": "1"})
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "checkpoints").mkdir(exist_ok=True)
        now = time.time()
        self.store.update_run(
            run.id, status="starting", cause=None, argv=base, env={k: v for k, v in env_over.items()
                                                                  if not is_secret_name(k)},
            cwd=workdir, host=hostname(), pid=None, proc_start=None, monitor_pid=None, monitor_start=None, sid=None,
            stop_requested=False, exit_code=None, exit_signal=None, stderr_tail=None, started_at=now, ended_at=None)
        kind = event or ("resumed" if resume else "started")
        with open(run.log_path, "ab") as log:
            log.write(f"[ropd-tui] {time.strftime('%Y-%m-%d %H:%M:%S')} {kind} attempt {run.attempt}: "
                      f"{' '.join(command)}\n".encode())
            log.flush()
            monitor_cmd = module_argv(MONITOR_MODULE, "--store", self.store.path, "--run", run.id, "--") + command
            try:
                proc = subprocess.Popen(monitor_cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=workdir, env=full_env, start_new_session=True, close_fds=True)
            except OSError as err:
                self.store.update_run(run.id, status="failed", cause=f"could not start the run monitor: {err}",
                                      ended_at=time.time())
                raise StoreError(f"could not start run {run.name!r}: {err}") from None
        self._children[proc.pid] = proc
        start = procinfo.start_time(proc.pid)
        # The monitor may already have written its own pid/status; only fill what is missing.
        with self.store.write_transaction():
            cur = self.store.get_run(run.id)
            if cur.monitor_pid is None:
                self.store.update_run(run.id, monitor_pid=proc.pid, monitor_start=start, sid=proc.pid)
        self.store.add_event(run.id, kind, f"{kind} attempt {run.attempt} (monitor pid {proc.pid})",
                             step=run.last_step if resume else None,
                             data={"argv": command, "cwd": workdir, "attempt": run.attempt})
        return self.store.get_run(run.id)

    def _wait_previous_monitor(self, run: RunRecord, timeout: float = 10.0) -> None:
        """The trainer may record its end a moment before its monitor exits; never run two at once."""
        if not self._local(run):
            return  # its processes, if any, live on another machine
        end = time.monotonic() + timeout
        while self.monitor_alive(run) and time.monotonic() < end:
            time.sleep(0.05)
        if self.monitor_alive(run):
            raise StoreError(f"run {run.name!r} ended but its processes are still exiting (monitor pid {run.monitor_pid})",
                             hint=f"wait a few seconds, or stop it: ropd-tui --headless stop {run.name}")

    # -- watching -----------------------------------------------------------------------------------
    def refresh(self, run: RunRecord | str | int) -> RunRecord:
        """Re-check a run against its processes: flag stalls, record ends nobody recorded."""
        run = self._run(run)
        if not run.active or not self._local(run):
            return run
        self._reap()
        if procinfo.is_alive(run.monitor_pid, run.monitor_start):
            return check_stall(self.store, run)
        if procinfo.is_alive(run.pid, run.proc_start):
            return check_stall(self.store, self._adopt(run))  # the trainer runs on, unwatched: watch it
        if run.status == "starting" and run.monitor_pid is None and time.time() - (run.started_at or 0) < STARTING_GRACE_S:
            return run  # being launched right now
        return self._record_lost(run)

    def _adopt(self, run: RunRecord) -> RunRecord:
        """The run's monitor died (SIGKILL, OOM) while its trainer keeps going: start a monitor that
        adopts the trainer (pid + start time), so its end is still recorded, and record an event.
        Whichever reader (status, runs, the TUI, train) notices first does it, once."""
        try:
            with self.store.write_transaction():
                cur = self.store.get_run(run.id)
                if cur.monitor_pid != run.monitor_pid or cur.monitor_start != run.monitor_start:
                    return cur  # another reader adopted it a moment ago
                with open(cur.log_path, "ab") as log:
                    log.write(f"[ropd-tui] {time.strftime('%Y-%m-%d %H:%M:%S')} the run monitor (pid "
                              f"{cur.monitor_pid}) is gone; adopting the trainer (pid {cur.pid})\n".encode())
                    log.flush()
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "engine.runs.monitor", "--store", str(self.store.path),
                         "--run", str(cur.id), "--adopt"], stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, cwd=cur.cwd or None, start_new_session=True, close_fds=True)
                self._children[proc.pid] = proc
                self.store.update_run(cur.id, monitor_pid=proc.pid, monitor_start=procinfo.start_time(proc.pid))
                msg = (f"the run monitor (pid {cur.monitor_pid}) died while the trainer (pid {cur.pid}) kept "
                       f"running; a new monitor (pid {proc.pid}) adopted it")
                self.store.add_event(cur.id, "monitor_lost", msg, step=cur.last_step,
                                     data={"old_monitor_pid": cur.monitor_pid, "monitor_pid": proc.pid})
        except StoreReadOnlyError:
            return dataclasses.replace(run, cause="unsupervised: its monitor died (the store is read-only or full, "
                                                  "so no new monitor could take over)")
        except OSError as err:
            return dataclasses.replace(run, cause=f"unsupervised: its monitor died and no new one could start ({err})")
        return self.store.get_run(run.id)

    def _record_lost(self, run: RunRecord) -> RunRecord:
        tail = log_tail(run.log_path)
        if run.stop_requested:
            status, cause = "stopped", "stopped by user"
        else:
            from engine.files import log_says_disk_full

            status = "failed"
            full = log_says_disk_full(tail)
            if full:  # the end could not be written while the disk was full; the log still says why
                cause = (f"the disk filled up (the end was never recorded; from the log: {full[:300]})")
            else:
                cause = (f"lost: the run's monitor (pid {run.monitor_pid}) ended without recording an exit "
                         "(killed, or the machine restarted)")
                if tail:
                    cause += f"; last log line: {tail[-1][:300]}"
        ended = time.time()
        try:
            if self.store.transition(run.id, ACTIVE_STATUSES, status=status, cause=cause, ended_at=ended,
                                     stderr_tail="\n".join(tail) or None):
                self.store.add_event(run.id, status, cause, step=run.last_step)
        except StoreReadOnlyError:  # a full disk or a read-only store: report it now, record it on a later read
            return dataclasses.replace(run, status=status, cause=cause, ended_at=ended, stderr_tail="\n".join(tail) or None)
        return self.store.get_run(run.id)

    def refresh_all(self) -> list[RunRecord]:
        """Refresh every active run of this host; returns all runs."""
        out = []
        for run in self.store.runs():
            out.append(self.refresh(run) if run.active else run)
        return out

    def wait(self, run: RunRecord | str | int, timeout: float | None = None, poll: float = 0.2) -> RunRecord:
        """Block until the run is no longer active (or ``timeout`` passes); returns the latest record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        rec = self.refresh(run)
        while rec.active and (deadline is None or time.monotonic() < deadline):
            time.sleep(poll)
            rec = self.refresh(rec)
        return rec

    def follow_log(self, run: RunRecord | str | int, *, from_start: bool = True, poll: float = 0.25,
                   follow: bool = True) -> Iterator[str]:
        """Yield the run's log lines; with ``follow``, keep yielding until the run ends and the log is drained."""
        rec = self._run(run)
        path = rec.log_path
        pos = 0
        if not from_start and path.exists():
            pos = path.stat().st_size
        buf = b""
        while True:
            chunk = b""
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                pos += len(chunk)
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    yield ln.decode("utf-8", "replace")
                continue
            if not follow:
                break
            rec = self.refresh(rec)
            if not rec.active:
                # drain what the run wrote just before it ended
                if path.exists() and path.stat().st_size > pos:
                    continue
                break
            time.sleep(poll)
        if buf:
            yield buf.decode("utf-8", "replace")

    # -- stopping -------------------------------------------------------------------------------------
    def stop(self, run: RunRecord | str | int, *, grace: float | None = None) -> RunRecord:
        """SIGTERM every process of the run's session, wait ``grace`` seconds, then SIGKILL the rest."""
        run = self.refresh(run)
        if not run.active and not (self._local(run) and self.monitor_alive(run)):
            return run
        if not self._local(run):
            raise StoreError(f"run {run.name!r} runs on host {run.host}, not here ({hostname()})",
                             hint=f"stop it from {run.host}")
        grace = supervisor_settings(run).stop_grace_s if grace is None else float(grace)
        self.store.update_run(run.id, stop_requested=True)
        self.store.add_event(run.id, "stopping", f"stop requested: SIGTERM, then SIGKILL after {grace:.0f} s",
                             step=run.last_step)
        monitor = run.monitor_pid if procinfo.is_alive(run.monitor_pid, run.monitor_start) else None
        # Remember every process seen now (pid + start time): one that escapes the session or the
        # process tree while the others die is still killed.
        seen = {p.pid: p.start for p in run_processes(run)}

        def workers() -> list[int]:
            now = {p.pid for p in run_processes(run)}
            now |= {pid for pid, start in seen.items() if procinfo.is_alive(pid, start)}
            for pid in now:
                st = procinfo.stat(pid)
                if st is not None:
                    seen.setdefault(pid, st.start)
            return sorted(pid for pid in now if pid != monitor)

        procinfo.signal_pids(workers(), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while workers() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for _ in range(20):  # SIGKILL until the session is empty (workers may fork while dying)
            left = workers()
            if not left:
                break
            procinfo.signal_pids(left, signal.SIGKILL)
            time.sleep(0.05)
        if monitor:  # let the monitor record the exit, then make sure it is gone too
            end = time.monotonic() + 5.0
            while procinfo.is_alive(monitor, run.monitor_start) and time.monotonic() < end:
                # orphans the monitor adopts (it is a subreaper) while their parents die
                procinfo.signal_pids(workers(), signal.SIGKILL)
                self._reap()
                time.sleep(0.05)
            procinfo.signal_pids(workers(), signal.SIGKILL)
            if procinfo.is_alive(monitor, run.monitor_start):
                procinfo.signal_pids([monitor], signal.SIGKILL)
        for _ in range(20):
            left = [p.pid for p in run_processes(run)] + [pid for pid, st in seen.items() if procinfo.is_alive(pid, st)]
            left = sorted(set(left) - {os.getpid()})
            if not left:
                break
            procinfo.signal_pids(left, signal.SIGKILL)
            time.sleep(0.05)
        self._reap()
        if self.store.transition(run.id, ACTIVE_STATUSES, status="stopped", cause="stopped by user",
                                 ended_at=time.time()):
            self.store.add_event(run.id, "stopped", "stopped by user", step=run.last_step)
        return self.store.get_run(run.id)

    # -- resume / restart / delete ----------------------------------------------------------------------
    def resume(self, run: RunRecord | str | int, *, env: Mapping[str, str] | None = None) -> RunRecord:
        """Run the recorded command again with ``--resume`` (continue from the latest checkpoint)."""
        run = self.refresh(run)
        if run.active:
            raise StoreError(f"run {run.name!r} is {run.status}; nothing to resume",
                             hint=f"stop it first: ropd-tui --headless stop {run.name}")
        return self.launch(run, run.argv, env=env, resume=True)

    def restart(self, run: RunRecord | str | int, *, env: Mapping[str, str] | None = None) -> RunRecord:
        """Start from scratch as a new attempt (history and old checkpoints are kept)."""
        run = self.refresh(run)
        if run.active:
            raise StoreError(f"run {run.name!r} is {run.status}; stop it before restarting",
                             hint=f"ropd-tui --headless stop {run.name}")
        old_attempt = run.attempt
        ckpt = run.checkpoints_dir
        if ckpt.is_dir() and any(ckpt.iterdir()):
            dest = run.run_dir / "attempts" / str(old_attempt) / "checkpoints"
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(ckpt, dest)
        ckpt.mkdir(parents=True, exist_ok=True)
        self.store.start_attempt(run.id)
        return self.launch(run.id, run.argv, env=env, resume=False, event="started")

    def delete_checkpoints(self, run: RunRecord | str | int) -> "CheckpointUsage":
        """Remove the run's checkpoints (current and older attempts) and nothing else; refuses while it
        runs. Returns what was freed. A later resume starts from step 1 (its steps stay in the store)."""
        run = self.refresh(run)
        if run.active:
            raise StoreError(f"run {run.name!r} is {run.status}; stop it before deleting its checkpoints",
                             hint=f"ropd-tui --headless stop {run.name}")
        usage = checkpoint_usage(run)
        for folder in usage.folders:
            if folder.resolve().is_relative_to(run.run_dir.resolve()):
                shutil.rmtree(folder, ignore_errors=True)
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        if usage.count:
            self.store.add_event(run.id, "checkpoints_deleted",
                                 f"deleted {usage.count} checkpoint(s), {fmt_bytes(usage.bytes)}",
                                 data={"bytes": usage.bytes, "count": usage.count})
        return usage

    def delete(self, run: RunRecord | str | int) -> None:
        """Delete the run's rows and folder; refuses while it runs."""
        run = self.refresh(run)
        if run.active:
            raise StoreError(f"run {run.name!r} is {run.status}; stop it before deleting it",
                             hint=f"ropd-tui --headless stop {run.name}")
        self.store.delete_run(run.id)
