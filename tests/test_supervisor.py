"""The supervisor against real subprocesses: the dummy trainers in tests/dummy_trainers/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.runs import procinfo
from engine.errors import StoreError
from engine.runs.monitor import classify_exit
from engine.store import RunStore
from engine.runs.supervisor import Supervisor

DUMMY = Path(__file__).resolve().parent / "dummy_trainers"


@pytest.fixture(autouse=True)
def _fast_monitor(monkeypatch):
    monkeypatch.setenv("ROPD_MONITOR_POLL_S", "0.1")


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs" / "ropd.db")
    yield s
    s.close()


def _run(store: RunStore, name: str, script: str, *extra: str, supervisor: dict | None = None):
    cfg = {"supervisor": supervisor or {}}
    rec = store.create_run(name, "embedded", cfg)
    argv = [sys.executable, str(DUMMY / script), "--store", str(store.path), "--run", str(rec.id), *extra]
    store.update_run(rec.id, argv=argv)
    return store.get_run(rec.id)


def _wait_for(cond, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _leftovers(marker: Path) -> list[int]:
    """Live processes whose command line mentions ``marker`` (every dummy trainer process, forks included)."""
    out = []
    for pid in procinfo.all_pids():
        try:
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        if str(marker).encode() in cmd and procinfo.is_alive(pid):
            out.append(pid)
    return out


@pytest.mark.parametrize("delay", [0.0, 0.4, 0.8])
def test_stop_at_any_moment_leaves_no_process(store, tmp_path, delay):
    """Stopping while the trainer is still forking its workers (races included) kills them all."""
    run = _run(store, f"early-{delay}", "stubborn.py", "--pids-file", str(tmp_path / "pids"))
    sup = Supervisor(store)
    sup.launch(run, cwd=tmp_path)
    time.sleep(delay)
    assert sup.stop(run, grace=0.2).status == "stopped"
    _wait_for(lambda: not _leftovers(tmp_path), timeout=10, what="no process of the run left")


def test_finished_run_is_recorded_with_steps_log_and_events(store, tmp_path):
    run = _run(store, "ok", "steps_ok.py", "--steps", "3")
    sup = Supervisor(store)
    launched = sup.launch(run, cwd=tmp_path)
    assert launched.status in ("starting", "running")
    assert launched.host and launched.started_at
    done = sup.wait(run, timeout=30)
    assert done.status == "finished" and done.exit_code == 0, (done.status, done.cause)
    assert [s["step"] for s in store.steps(run.id)] == [1, 2, 3]
    assert done.sid == done.monitor_pid and done.pid and done.proc_start
    log = done.log_path.read_text()
    assert "step 3" in log and "done" in log
    kinds = [e["kind"] for e in store.events(run.id)]
    assert kinds[:2] == ["created", "started"] and kinds[-1] == "finished"
    assert "--resume" not in done.argv
    assert list(sup.follow_log(run, follow=True))[-1].startswith("[ropd-tui]")


def test_crash_is_failed_with_exit_code_and_last_lines(store, tmp_path):
    run = _run(store, "crash", "crash.py")
    sup = Supervisor(store)
    sup.launch(run, cwd=tmp_path)
    done = sup.wait(run, timeout=30)
    assert done.status == "failed"
    assert done.exit_code == 1
    assert "boom" in done.cause and "exit code 1" in done.cause
    assert "Traceback" in done.stderr_tail
    assert store.events(run.id)[-1]["kind"] == "failed"


def test_stop_kills_every_process_of_the_session(store, tmp_path):
    pids_file = tmp_path / "pids"
    run = _run(store, "stubborn", "stubborn.py", "--pids-file", str(pids_file))
    sup = Supervisor(store)
    rec = sup.launch(run, cwd=tmp_path)
    pids = [int(p) for p in _wait_for(lambda: pids_file.exists() and pids_file.read_text().split(),
                                      what="the stubborn trainer's pids")]
    assert len(pids) == 5 and all(procinfo.is_alive(p) for p in pids)
    rec = store.get_run(run.id)
    groups = {procinfo.stat(p).pgid for p in pids[:3]}
    assert len(groups) == 3, "the children must live in other process groups"
    assert all(procinfo.stat(p).sid == rec.sid for p in pids[:4])
    assert procinfo.stat(pids[4]).sid != rec.sid, "the grandchild must have left the session"
    stopped = sup.stop(run, grace=0.5)
    assert stopped.status == "stopped"
    assert stopped.cause.startswith("stopped by user")
    _wait_for(lambda: not any(procinfo.is_alive(p) for p in pids), timeout=10, what="all processes gone")
    assert not procinfo.is_alive(rec.monitor_pid, rec.monitor_start)
    assert not procinfo.session_members(rec.sid)
    assert "stopped" in [e["kind"] for e in store.events(run.id)]


def test_stall_is_flagged_and_stop_ends_it(store, tmp_path):
    run = _run(store, "stall", "stall.py", supervisor={"stall_after_start_s": 30, "stall_between_steps_s": 0.5})
    sup = Supervisor(store)
    sup.launch(run, cwd=tmp_path)
    rec = _wait_for(lambda: (r := sup.refresh(run)).status == "stalled" and r, what="stalled status")
    assert "since step 1" in rec.cause
    assert any(e["kind"] == "stalled" for e in store.events(run.id))
    # a new step clears the stall
    store.write_metrics(run.id, 2, {"loss": 0.1})
    assert store.get_run(run.id).status == "running"
    stopped = sup.stop(run, grace=1.0)
    assert stopped.status == "stopped"


def test_reattach_after_the_supervising_process_exits(store, tmp_path):
    run = _run(store, "detached", "steps_ok.py", "--steps", "4", "--sleep", "0.4")
    code = ("import sys; from engine.store import RunStore; from engine.runs.supervisor import Supervisor;"
            f"s = RunStore({str(store.path)!r}); r = Supervisor(s).launch({run.id}, cwd={str(tmp_path)!r});"
            "print(r.monitor_pid)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # the launcher is gone; a fresh store + supervisor (like a reopened TUI) re-attaches from the store
    with RunStore(store.path) as other:
        sup = Supervisor(other)
        live = sup.refresh(run.name)
        assert live.status in ("starting", "running")
        assert procinfo.is_alive(live.monitor_pid, live.monitor_start)
        done = sup.wait(run.name, timeout=30)
        assert done.status == "finished"
        assert [s["step"] for s in other.steps(run.id)] == [1, 2, 3, 4]


def test_vanished_monitor_is_lost_and_a_reused_pid_is_not_the_run(store, tmp_path):
    run = _run(store, "lost", "stall.py", supervisor={"stall_after_start_s": 600, "stall_between_steps_s": 600})
    sup = Supervisor(store)
    sup.launch(run, cwd=tmp_path)
    rec = _wait_for(lambda: (r := store.get_run(run.id)).pid and r, what="child pid")
    # a reused pid: the record points at a live process with another start time -> not the run
    store.update_run(run.id, monitor_pid=os.getpid(), monitor_start=procinfo.start_time(os.getpid()) + 1)
    for pid in (rec.monitor_pid, rec.pid):
        os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not procinfo.is_alive(rec.pid), what="child gone")
    sup._reap()
    lost = sup.refresh(run)
    assert lost.status == "failed" and lost.cause.startswith("lost:")
    assert procinfo.is_alive(os.getpid())  # we were not signalled


def test_resume_restart_and_delete(store, tmp_path):
    run = _run(store, "life", "steps_ok.py", "--steps", "2")
    sup = Supervisor(store)
    sup.launch(run, cwd=tmp_path)
    assert sup.wait(run, timeout=30).status == "finished"
    # resume continues after the last step with --resume, same attempt
    store.update_run(run.id, argv=store.get_run(run.id).argv[:-2] + ["--steps", "4"])
    sup.resume(run)
    done = sup.wait(run, timeout=30)
    assert done.status == "finished", done.cause
    assert [s["step"] for s in store.steps(run.id)] == [1, 2, 3, 4]
    assert "resuming after step 2" in done.log_path.read_text()
    assert any(e["kind"] == "resumed" for e in store.events(run.id))
    # restart: a new attempt from step 1; the old attempt and its checkpoints are kept
    (done.checkpoints_dir / "step-4").mkdir(parents=True)
    sup.restart(run)
    again = sup.wait(run, timeout=30)
    assert again.attempt == 2 and again.status == "finished"
    assert [s["step"] for s in store.steps(run.id)] == [1, 2, 3, 4]
    assert [s["step"] for s in store.steps(run.id, attempt=1)] == [1, 2, 3, 4]
    assert (again.run_dir / "attempts" / "1" / "checkpoints" / "step-4").is_dir()
    assert any(e["kind"] == "restarted" for e in store.events(run.id))
    # delete refuses while running
    pids_file = tmp_path / "pids2"
    busy = _run(store, "busy", "stubborn.py", "--pids-file", str(pids_file))
    sup.launch(busy, cwd=tmp_path)
    with pytest.raises(StoreError, match="stop it"):
        sup.delete(busy)
    sup.stop(busy, grace=0.2)
    _wait_for(lambda: not _leftovers(pids_file.parent / "runs"), timeout=10, what="no process of the busy run left")
    sup.delete(busy)
    assert store.find_run("busy") is None and not busy.run_dir.exists()
    sup.delete(run)
    assert store.find_run("life") is None


def test_launch_refuses_a_running_run(store, tmp_path):
    run = _run(store, "twice", "stall.py")
    sup = Supervisor(store)
    sup.launch(run, cwd=tmp_path)
    try:
        with pytest.raises(StoreError, match="already"):
            sup.launch(run, cwd=tmp_path)
        with pytest.raises(StoreError):
            sup.resume(run)
    finally:
        sup.stop(run, grace=0.2)


def test_missing_command_fails_clearly(store, tmp_path):
    rec = store.create_run("nocmd", "embedded", {})
    sup = Supervisor(store)
    sup.launch(rec, ["/nonexistent/trainer-binary"], cwd=tmp_path)
    done = sup.wait(rec, timeout=30)
    assert done.status == "failed" and "cannot start" in done.cause


@pytest.mark.parametrize("rc, stop, oom, status", [
    (0, False, False, "finished"),
    (1, False, False, "failed"),
    (-signal.SIGKILL, False, False, "killed"),
    (-signal.SIGKILL, False, True, "oom"),
    (1, False, True, "oom"),
    (-signal.SIGTERM, True, False, "stopped"),
    (0, True, False, "stopped"),
])
def test_classify_exit(rc, stop, oom, status):
    got, cause, code, sig = classify_exit(rc, stop_requested=stop, oom=oom, tail=["last words"])
    assert got == status
    if status == "failed":
        assert "last words" in cause and code == 1
    if rc < 0:
        assert sig == -rc


def test_trainer_recorded_end_is_kept_and_completed_by_the_monitor(store, tmp_path):
    run = _run(store, "self", "self_report.py")
    sup = Supervisor(store)
    sup.launch(run, cwd=tmp_path)
    rec = sup.wait(run, timeout=30)
    # the monitor may still be finishing its bookkeeping: wait for it, then check the record
    _wait_for(lambda: not procinfo.is_alive(rec.monitor_pid, rec.monitor_start), what="monitor exit")
    rec = store.get_run(run.id)
    assert rec.status == "failed" and rec.cause.startswith("scoring failure rate")
    assert rec.exit_code == 4 and "recorded my own end" in rec.stderr_tail
    # a relaunch right away is allowed once the monitor is gone, and gets its own record
    store.update_run(run.id, argv=[sys.executable, str(DUMMY / "steps_ok.py"), "--store", str(store.path),
                                   "--run", str(run.id), "--steps", "1"])
    sup.launch(run, cwd=tmp_path)
    assert sup.wait(run, timeout=30).status == "finished"


def test_monitor_kills_a_daemon_left_behind_by_a_finished_run(store, tmp_path):
    pids_file = tmp_path / "daemon"
    run = _run(store, "daemon", "daemonizes.py", "--pids-file", str(pids_file), supervisor={"stop_grace_s": 0.5})
    sup = Supervisor(store)
    sup.launch(run, cwd=tmp_path)
    rec = sup.wait(run, timeout=30)
    assert rec.status == "finished"
    daemon = int(pids_file.read_text())
    _wait_for(lambda: not procinfo.is_alive(daemon), timeout=15, what="the daemon killed by the monitor")


# -- a monitor that dies while its trainer runs on ---------------------------------------------------

def _kill_monitor(store, rec):
    rec = _wait_for(lambda: (r := store.get_run(rec.id)).last_step and r.pid and r, what="the first step")
    os.kill(rec.monitor_pid, signal.SIGKILL)
    _wait_for(lambda: not procinfo.is_alive(rec.monitor_pid, rec.monitor_start), what="the monitor to die")
    assert procinfo.is_alive(rec.pid, rec.proc_start)  # the trainer keeps going, unwatched
    return rec


def test_a_dead_monitor_is_noticed_by_a_reader_and_the_trainer_adopted(store):
    sup = Supervisor(store)
    rec = sup.launch(_run(store, "orphan", "steps_ok.py", "--steps", "400", "--sleep", "0.05"))
    old = _kill_monitor(store, rec)
    seen = Supervisor(store).refresh(old.id)  # any reader: status, runs, the TUI
    assert seen.status == "running" and seen.monitor_pid != old.monitor_pid
    assert procinfo.is_alive(seen.monitor_pid, seen.monitor_start)
    events = [e for e in store.events(rec.id) if e["kind"] == "monitor_lost"]
    assert len(events) == 1 and f"trainer (pid {old.pid})" in events[0]["message"]
    again = Supervisor(store).refresh(old.id)  # a second reader does not adopt it twice
    assert again.monitor_pid == seen.monitor_pid
    assert len([e for e in store.events(rec.id) if e["kind"] == "monitor_lost"]) == 1
    end = Supervisor(store).stop(again, grace=5)  # still stoppable; the new monitor records the end
    assert end.status == "stopped"
    _wait_for(lambda: not procinfo.is_alive(seen.monitor_pid, seen.monitor_start), what="the adopter to exit")


def test_an_adopted_trainer_killed_is_recorded_with_its_unknown_exit(store):
    sup = Supervisor(store)
    rec = sup.launch(_run(store, "orphan2", "steps_ok.py", "--steps", "400", "--sleep", "0.05"))
    old = _kill_monitor(store, rec)
    adopted = Supervisor(store).refresh(old.id)
    os.kill(old.pid, signal.SIGKILL)
    end = _wait_for(lambda: (r := store.get_run(rec.id)).status != "running" and r, what="the end")
    assert end.status == "failed" and "exit status is unknown" in end.cause and end.ended_at
    assert "step " in end.cause  # the last log line
    _wait_for(lambda: not procinfo.is_alive(adopted.monitor_pid, adopted.monitor_start), what="the adopter to exit")


# -- the disk filling up during a run ---------------------------------------------------------------

def test_disk_full_end_is_recorded_once_space_allows(tmp_path, monkeypatch):
    import shutil as _shutil

    if os.geteuid() != 0 or not _shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    fs = tmp_path / "small"
    fs.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(fs)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    monkeypatch.setenv("ROPD_MONITOR_RECORD_RETRY_S", "0.2")
    try:
        s = RunStore(fs / "runs" / "ropd.db")
        rec = Supervisor(s).launch(_run(s, "full", "fills_disk.py"))
        _wait_for(lambda: (fs / "runs" / "filler").exists() and _shutil.disk_usage(fs).free < 1 << 20,
                  what="the disk to fill")
        time.sleep(1.0)  # the trainer has exited; its monitor cannot record the end yet
        with RunStore(fs / "runs" / "ropd.db") as reader:  # reading commands work meanwhile
            seen = Supervisor(reader).refresh(rec.id)
            assert seen.last_step == 2 and seen.status == "running"  # the monitor waits to record the end
        (fs / "runs" / "filler").unlink()  # space is freed: the end is recorded
        end = _wait_for(lambda: (r := s.get_run(rec.id)).status == "failed" and r, what="the end")
        assert end.cause.startswith("the disk filled up") and end.exit_code == 28
        assert "Traceback" not in end.run_dir.joinpath("run.log").read_text()
        s.close()
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)


def test_a_run_lost_while_the_disk_was_full_says_so_from_its_log(store):
    rec = store.create_run("lostfull", "embedded", {})
    gone = subprocess.Popen(["true"])
    gone.wait()
    store.update_run(rec.id, status="running", pid=gone.pid, monitor_pid=gone.pid, started_at=time.time() - 100)
    rec.run_dir.mkdir(parents=True, exist_ok=True)
    rec.log_path.write_text("step 4 reward 0.5\nOSError: [Errno 28] No space left on device: 'checkpoint-5'\n")
    end = Supervisor(store).refresh(rec.id)
    assert end.status == "failed" and end.cause.startswith("the disk filled up (the end was never recorded")
    assert "No space left on device" in end.cause and "lost" not in end.cause


def test_worker_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    import errno as _errno

    from engine.runs import worker
    from engine.trainers import embedded

    with RunStore(tmp_path / "runs" / "ropd.db") as s:
        from engine.config import load_config

        rec = s.create_run("w", "embedded", load_config(None, ["judge.mode=offline"]).to_dict())

    def disk_fills(*a, **kw):
        raise OSError(_errno.ENOSPC, "No space left on device", "checkpoint-3/optimizer.pt")

    monkeypatch.setattr(embedded, "run", disk_fills)
    rc = worker.run_worker(str(tmp_path / "runs" / "ropd.db"), str(rec.id), False)
    err = capsys.readouterr().err
    assert rc == 28 and "Traceback" not in err and "error: the disk filled up" in err
    with RunStore(tmp_path / "runs" / "ropd.db") as s:
        end = s.get_run(rec.id)
    assert end.status == "failed" and end.cause.startswith("the disk filled up: [Errno 28] No space left on device")
