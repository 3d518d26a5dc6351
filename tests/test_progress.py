"""The shared judge progress: engine counters and snapshots across processes, and ``train``'s view of
the snapshots the training worker writes (``score``/``replay`` are in their own tests)."""

from __future__ import annotations

import io

from engine.progress import PROGRESS_FILE, JudgeProgress, SnapshotWriter, current, read_snapshot, tracking
from engine.store import RunStore
from ropd_tui.commands._progress import ProgressReporter


def test_counters_snapshot_and_idle_time():
    prog = JudgeProgress("x", groups_total=3)
    assert prog.snapshot().idle_s is None  # nothing in flight: nothing to wait for
    prog.request_started()
    prog.request_started()
    prog.request_retried()
    prog.request_finished(True)
    prog.group_finished(failed=False)
    prog.group_finished(failed=True)
    snap = prog.snapshot()
    assert (snap.in_flight, snap.requests_done, snap.requests_retried, snap.groups_done, snap.groups_failed) == \
        (1, 1, 1, 2, 1)
    assert snap.idle_s is not None and snap.idle_s >= 0
    with tracking(prog):
        assert current() is prog
    assert current() is None


def test_snapshot_writer_round_trip(tmp_path):
    path = tmp_path / PROGRESS_FILE
    assert read_snapshot(path) is None
    prog = JudgeProgress("step 1 judging", 4)
    writer = SnapshotWriter(path, interval_s=60)
    writer.watch(prog)  # written at once
    assert read_snapshot(path).groups_total == 4
    prog.group_finished(False)
    prog.finish()
    writer.close()  # and once more at the end
    snap = read_snapshot(path)
    assert snap.finished and snap.groups_done == 1
    path.write_text("{not json")
    assert read_snapshot(path) is None


def test_train_follower_shows_the_workers_progress(tmp_path):
    from ropd_tui.commands.train import _Follower

    with RunStore(tmp_path / "ropd.db") as store:
        run = store.create_run("r", "embedded", {"trainer": {"steps": 3}})
        run.run_dir.mkdir(parents=True, exist_ok=True)
        f = _Follower(store, run)
        f.reporter = ProgressReporter(io.StringIO(), every_s=0.0, tty=False)
        prog = JudgeProgress("step 1 judging", 4)
        prog.request_started()
        writer = SnapshotWriter(run.run_dir / PROGRESS_FILE, interval_s=60)
        writer.watch(prog)
        f.poll_progress()
        shown = f.reporter.stream.getvalue()
        assert "step 1 judging" in shown and "0/4 groups" in shown and "1 in flight" in shown
        prog.finish()
        writer.close()
        f.reporter.stream.truncate(0)
        f.poll_progress()  # a finished step is not shown again
        assert f.reporter.stream.getvalue().strip("\x00") == ""
