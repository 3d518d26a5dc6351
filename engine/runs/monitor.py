"""The per-run monitor: ``python -m engine.runs.monitor --store PATH --run ID -- COMMAND...``.

Started by :class:`engine.runs.supervisor.Supervisor` as the leader of a new session. It starts the
training command as its child (same session, output to the run log it inherited), records the
child's pid and start time, flags stalls while waiting, and when the child ends classifies the end
(finished / failed / killed / oom / stopped), kills leftover processes of the session, and writes
status, exit code, signal, cause and the last log lines to the store. SIGTERM/SIGINT/SIGHUP do not
stop the monitor: it outlives the child so the end is always recorded.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from engine.runs import procinfo
from engine.errors import UserError
from engine.store import RunRecord, RunStore


# how often an end that could not be written (full disk) is tried again
RECORD_RETRY_S = float(os.environ.get("ROPD_MONITOR_RECORD_RETRY_S", "10"))
EXIT_DISK_FULL = 28  # engine.runs.worker's exit code when the disk filled up


def note(msg: str) -> None:
    try:
        print(f"[ropd-tui] {time.strftime('%Y-%m-%d %H:%M:%S')} {msg}", file=sys.stderr, flush=True)
    except OSError:  # the log is on a full disk
        pass


def classify_exit(returncode: int, *, stop_requested: bool, oom: bool, tail: list[str]
                  ) -> tuple[str, str, int | None, int | None]:
    """(status, cause, exit_code, exit_signal) for a child's return code (negative = signal)."""
    sig = -returncode if returncode < 0 else (returncode - 128 if returncode in (128 + 9, 128 + 15) else None)
    code = returncode if returncode >= 0 else None
    last = tail[-1][:300] if tail else ""
    if stop_requested:
        how = f" (ended by {procinfo.signal_name(sig)})" if sig else (f" (exit code {code})" if code else "")
        return "stopped", "stopped by user" + how, code, sig
    if returncode == 0:
        return "finished", "finished", 0, None
    if oom:
        return "oom", ("killed by the OOM killer (out of memory)" if sig == signal.SIGKILL else
                       f"a process of the run was killed by the OOM killer; exit code {code}"), code, sig
    if sig is not None and returncode < 0:
        return "killed", f"killed by {procinfo.signal_name(sig)}", None, sig
    if returncode == EXIT_DISK_FULL:
        return "failed", "the disk filled up" + (f": {last}" if last else ""), code, sig
    cause = f"exit code {code}" + (f": {last}" if last else "")
    return "failed", cause, code, sig


def disk_full_cause(run: RunRecord, tail: list[str]) -> str | None:
    """"the disk filled up: ..." when the log says so or the run folder's disk has no space left."""
    from engine.files import disk_full_at, log_says_disk_full

    line = log_says_disk_full(tail)
    if line:
        return f"the disk filled up: {line[:300]}"
    if disk_full_at(run.run_dir):
        return f"the disk filled up (no space left on the file system of {run.run_dir})"
    return None


def record_end_when_possible(store: RunStore, run_id: int, **end) -> None:
    """:func:`record_end`, retried every RECORD_RETRY_S seconds while the store cannot be written (a
    full disk): the end is recorded as soon as space is freed, never lost to a traceback."""
    from engine.store import StoreReadOnlyError

    told = False
    while True:
        try:
            record_end(store, run_id, **end)
            if told:
                note("the end is recorded now")
            return
        except StoreReadOnlyError as err:
            if not told:
                note(f"cannot record the run's end yet ({err.message}); retrying every {RECORD_RETRY_S:g} s "
                     "until space is freed")
                told = True
            time.sleep(RECORD_RETRY_S)


def become_subreaper() -> bool:
    """Make orphaned descendants (e.g. daemons that called setsid after their parent died) reparent
    to this monitor instead of init, so they stay findable and killable as the run's processes."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_adopted(main_child: int) -> None:
    """Collect exited orphans we adopted as subreaper (never the training command: Popen waits for it)."""
    me = os.getpid()
    for pid in procinfo.all_pids():
        if pid == main_child:
            continue
        st = procinfo.stat(pid)
        if st is not None and st.ppid == me and st.state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _kill_leftovers(run: RunRecord, grace: float, sid: int | None = None) -> int:
    """SIGTERM, then SIGKILL, any process still in the run's session (default: this one) after the
    training command ended."""
    me = os.getpid()
    sid = os.getsid(0) if sid is None else sid

    def left() -> list[int]:
        return [p.pid for p in procinfo.session_members(sid) if p.pid != me] + \
               [p.pid for p in procinfo.descendants(me)]

    pids = sorted(set(left()))
    if not pids:
        return 0
    note(f"{len(pids)} process(es) of the run still alive after it ended; terminating them")
    procinfo.signal_pids(pids, signal.SIGTERM)
    end = time.monotonic() + grace
    while left() and time.monotonic() < end:
        time.sleep(0.1)
    for _ in range(20):
        rest = sorted(set(left()))
        if not rest:
            break
        procinfo.signal_pids(rest, signal.SIGKILL)
        time.sleep(0.05)
    return len(pids)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.runs.monitor")
    ap.add_argument("--store", required=True)
    ap.add_argument("--run", required=True, type=int)
    ap.add_argument("--poll", type=float, default=float(os.environ.get("ROPD_MONITOR_POLL_S", "2.0")))
    ap.add_argument("--adopt", action="store_true",
                    help="watch the run's already running trainer (its monitor died) instead of starting one")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command and not args.adopt:
        ap.error("no command to run after --")

    # Handlers (not SIG_IGN, which children would inherit): the monitor waits for the child.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)

    from engine.runs.supervisor import log_tail, supervisor_settings

    try:
        store = RunStore(args.store, create=False)
        run = store.get_run(args.run)
    except UserError as err:
        note(f"monitor cannot open the run: {err}")
        return 2
    if args.adopt:
        return adopt(store, run, args.poll)
    me = os.getpid()
    become_subreaper()
    store.update_run(run.id, monitor_pid=me, monitor_start=procinfo.start_time(me), sid=os.getsid(0))
    oom_file = procinfo.cgroup_memory_events()
    oom_before = procinfo.oom_kill_count(oom_file)
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except OSError as err:
        cause = f"cannot start {command[0]!r}: {err.strerror or err}"
        note(cause)
        store.transition(run.id, ("starting", "running", "stalled"), status="failed", cause=cause,
                         exit_code=127, ended_at=time.time())
        store.add_event(run.id, "failed", cause)
        return 127
    store.transition(run.id, ("starting",), status="running", pid=child.pid,
                     proc_start=procinfo.start_time(child.pid))
    note(f"started pid {child.pid}")

    last_check = 0.0
    while True:
        try:
            rc = child.wait(timeout=args.poll)
            break
        except subprocess.TimeoutExpired:
            pass
        reap_adopted(child.pid)
        last_check = _stall_check_due(store, run.id, last_check, args.poll)

    run = store.get_run(run.id)
    # after a user's stop the grace period has been given already: kill leftovers at once
    _kill_leftovers(run, 0.0 if run.stop_requested else min(supervisor_settings(run).stop_grace_s, 10.0))
    reap_adopted(child.pid)
    oom_after = procinfo.oom_kill_count(oom_file)
    oom = (oom_before is not None and oom_after is not None and oom_after > oom_before) or (
        rc == -signal.SIGKILL and procinfo.dmesg_mentions_oom(child.pid))
    run = store.get_run(run.id)
    tail = log_tail(run.log_path)
    status, cause, code, sig = classify_exit(rc, stop_requested=run.stop_requested, oom=oom and rc != 0, tail=tail)
    if status == "failed":
        cause = disk_full_cause(run, tail) or cause
    note(f"run ended: {status}" + (f" ({cause})" if cause and cause != status else ""))
    record_end_when_possible(store, run.id, status=status, cause=cause, exit_code=code, exit_signal=sig, tail=tail)
    store.close()
    return 0


def _stall_check_due(store: RunStore, run_id: int, last_check: float, poll: float) -> float:
    """Flag a stall at most once a second (or once a poll); returns when the check last ran."""
    from engine.runs.supervisor import check_stall

    if time.monotonic() - last_check < max(poll, 1.0):
        return last_check
    try:
        check_stall(store, store.get_run(run_id))
    except Exception as err:  # noqa: BLE001 - never let bookkeeping kill the watch
        note(f"stall check failed: {err}")
    return time.monotonic()


def adopt(store: RunStore, run: RunRecord, poll: float) -> int:
    """Watch a trainer whose monitor died (started by :meth:`Supervisor.refresh`): flag stalls while it
    runs, then record its end. It is not our child, so its exit code cannot be observed: when the
    trainer recorded its own end (engine.runs.worker always does, except when it is killed) that
    end stands; otherwise the run is marked failed, saying the exit status is unknown."""
    from engine.runs.supervisor import log_tail

    pid, start = run.pid, run.proc_start
    note(f"adopted the trainer (pid {pid}): its monitor (pid {run.monitor_pid}) is gone")
    oom_file = procinfo.cgroup_memory_events()
    oom_before = procinfo.oom_kill_count(oom_file)
    last_check = 0.0
    while procinfo.is_alive(pid, start):
        time.sleep(poll)
        last_check = _stall_check_due(store, run.id, last_check, poll)
    run = store.get_run(run.id)
    if run.sid:
        _kill_leftovers(run, 0.0 if run.stop_requested else 5.0, sid=run.sid)
    tail = log_tail(run.log_path)
    oom_after = procinfo.oom_kill_count(oom_file)
    if run.stop_requested:
        status, cause = "stopped", "stopped by user"
    elif oom_before is not None and oom_after is not None and oom_after > oom_before:
        status, cause = "oom", "killed by the OOM killer (out of memory) while its monitor was gone"
    else:
        status = "failed"
        cause = (f"the trainer (pid {pid}) ended without recording its end while its monitor was gone, so its "
                 "exit status is unknown (killed?)" + (f"; last log line: {tail[-1][:300]}" if tail else ""))
    if status == "failed":
        cause = disk_full_cause(run, tail) or cause
    note(f"adopted run ended: {status if run.active else run.status}")
    record_end_when_possible(store, run.id, status=status, cause=cause, exit_code=None, exit_signal=None, tail=tail)
    store.close()
    return 0


def record_end(store: RunStore, run_id: int, *, status: str, cause: str, exit_code: int | None,
               exit_signal: int | None, tail: list[str]) -> None:
    """Write the end, unless a newer launch owns the run now. When the trainer already recorded its
    own end (a more specific cause), only fill in what it left out (exit code, signal, last lines)."""
    me = os.getpid()
    with store.write_transaction():
        run = store.get_run(run_id)
        if run.monitor_pid not in (None, me):
            return  # the run was launched again meanwhile; that launch's monitor owns it
        if run.active:
            store.update_run(run_id, status=status, cause=cause, exit_code=exit_code, exit_signal=exit_signal,
                             stderr_tail="\n".join(tail) or None, ended_at=time.time())
            store.add_event(run_id, status, cause, step=run.last_step,
                            data={"exit_code": exit_code, "signal": procinfo.signal_name(exit_signal) or None})
            return
        fill = {}
        if run.exit_code is None and exit_code is not None:
            fill["exit_code"] = exit_code
        if run.exit_signal is None and exit_signal is not None:
            fill["exit_signal"] = exit_signal
        if not run.stderr_tail and tail:
            fill["stderr_tail"] = "\n".join(tail)
        if run.ended_at is None:
            fill["ended_at"] = time.time()
        if fill:
            store.update_run(run_id, **fill)


if __name__ == "__main__":
    sys.exit(main())
