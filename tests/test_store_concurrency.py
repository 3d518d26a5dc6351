"""Several processes on one store: a writer, readers and a status updater never see "database is
locked" nor lose rows; a writer killed with SIGKILL mid-step leaves no partial step behind."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path


from engine.store import DERIVED_KEYS, RunStore

TESTS = Path(__file__).resolve().parent
STEPS = 2000

WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from dummy_trainers.payloads import make_group
    from engine.store import RunStore
    s = RunStore({path!r})
    run_id, steps = {run_id}, {steps}
    for step in range(1, steps + 1):
        groups = [make_group(step, 0, students=2, teachers=1, criteria=2, text_len=40)] if step % 10 == 0 else []
        s.write_step(run_id, step, {{"loss": 1.0 / step, "reward/mean": step / steps}}, groups)
    print("writer done", flush=True)
""")

READER = textwrap.dedent("""
    import time
    from engine.store import RunStore
    s = RunStore({path!r}, create=False)
    run_id, steps = {run_id}, {steps}
    seen_version, reads, cursor, metric_rows = None, 0, 0, 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        v = s.data_version()
        if v != seen_version:
            seen_version = v
            runs = s.list_runs()
            series = s.metric_series(run_id, "loss")
            assert [p[0] for p in series] == list(range(1, len(series) + 1)), "gap in a metric series"
            rows, cursor = s.rows_newer("metrics", cursor, run_id=run_id)
            metric_rows += len(rows)
            last = s.get_run(run_id).last_step
            if last and last >= 10:
                for g in s.step_groups(run_id, last - last % 10):
                    assert len(g["answers"]) == 3 and all(len(r) == 2 for r in g["verdicts"]), "partial group"
            reads += 1
            if len(series) >= steps:
                break
        time.sleep(0.002)
    s.close()
    print("reader", reads, metric_rows, flush=True)
""")


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_writer_readers_and_status_updates_concurrently(tmp_path):
    path = str(tmp_path / "ropd.db")
    with RunStore(path) as store:
        run_id = store.create_run("busy", "embedded", {}).id
        args = dict(path=path, run_id=run_id, steps=STEPS, tests=str(TESTS))
        procs = [_spawn(WRITER.format(**args))] + [_spawn(READER.format(**args)) for _ in range(2)]
        # this process plays the supervisor: status updates and events while the others run
        updates = 0
        while procs[0].poll() is None:
            store.update_run(run_id, status="running", cause=None)
            store.add_event(run_id, "heartbeat", f"update {updates}")
            updates += 1
            time.sleep(0.005)
        outs = [p.communicate(timeout=180) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
            assert "locked" not in err.lower()
        # readers followed the metrics table to the end through the cursor: no lost rows
        for out, _ in outs[1:]:
            _, reads, metric_rows = out.split()
            assert int(reads) > 1
            assert int(metric_rows) == 2 * STEPS + len(DERIVED_KEYS) * (STEPS // 10)  # + derived score/* on group steps
        assert len(store.steps(run_id)) == STEPS
        assert len(store.metric_series(run_id, "loss")) == STEPS
        assert len(store.events(run_id, kinds=["heartbeat"])) == updates
        assert sum(len(store.step_groups(run_id, s)) for s in range(10, STEPS + 1, 10)) == STEPS // 10


KILLED_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from dummy_trainers.payloads import make_step
    from engine.store import RunStore
    s = RunStore({path!r})
    run_id = {run_id}
    step = (s.get_run(run_id).last_step or 0) + 1
    steps = [make_step(i, 16, students=8, teachers=4, criteria=12, text_len=300) for i in range(2)]
    print("ready", flush=True)
    while True:
        s.write_step(run_id, step, {{"loss": 1.0}}, steps[step % 2])
        step += 1
""")


def test_writer_killed_mid_step_leaves_no_partial_step(tmp_path):
    path = str(tmp_path / "ropd.db")
    with RunStore(path) as store:
        run_id = store.create_run("killed", "embedded", {}).id
    rng = random.Random(0)
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.format(path=path, run_id=run_id, tests=str(TESTS))],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3 + rng.random() * 0.7)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with RunStore(path) as store:
        steps = store.steps(run_id)
        assert steps, "the writer never committed a step"
        assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
        c = store.connection
        with store.lock:
            n_groups = c.execute("SELECT count(*) FROM groups WHERE run_id=?", (run_id,)).fetchone()[0]
            n_answers = c.execute("SELECT count(*) FROM answers").fetchone()[0]
            n_verdicts = c.execute("SELECT count(*) FROM verdicts").fetchone()[0]
            n_criteria = c.execute("SELECT count(*) FROM criteria").fetchone()[0]
            orphans = c.execute("SELECT count(*) FROM groups g LEFT JOIN steps s ON s.run_id = g.run_id"
                                " AND s.attempt = g.attempt AND s.step = g.step WHERE s.seq IS NULL").fetchone()[0]
        n = len(steps)
        assert orphans == 0
        assert all(s["n_groups"] == 16 for s in steps)
        assert (n_groups, n_answers, n_criteria, n_verdicts) == (16 * n, 16 * 12 * n, 16 * 12 * n, 16 * 12 * 12 * n)
        assert len(store.metric_series(run_id, "loss")) == n
        last = store.step_groups(run_id, n)
        assert len(last) == 16 and all(len(g["verdicts"]) == 12 and len(g["verdicts"][0]) == 12 for g in last)
        # the store still takes writes after the crashes
        store.write_metrics(run_id, n + 1, {"loss": 0.5})
