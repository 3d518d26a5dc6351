"""The trainer's heartbeat: phases and k/n progress written to the store by a background thread,
read back as one line by `train`, `status` and the UI, with "no progress" after a configurable time."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from engine.runs.heartbeat import Heartbeat, describe, phase_times
from engine.runs.supervisor import Supervisor
from engine.store import RunStore
from ropd_tui.cli import main

DUMMY = Path(__file__).resolve().parent / "dummy_trainers"


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "ropd.db")
    yield s
    s.close()


def test_phases_progress_and_totals_land_in_the_store(store):
    run = store.create_run("r", "embedded", {})
    clock = Clock()
    hb = Heartbeat(store, run.id, total_steps=3, clock=clock)
    hb.phase("generate", step=1, total=64, unit="tokens", detail="16 rollouts")
    clock.t += 4
    hb.advance(40)
    hb._flush()
    row = store.progress([run.id])[run.id]
    assert (row["phase"], row["step"], row["done"], row["total"], row["unit"]) == ("generate", 1, 40, 64, "tokens")
    assert describe(row, clock.t + 1).text == "step 1/3 · generating 40/64 tokens (16 rollouts) · 5s"
    hb.phase("score", total=4, unit="groups")
    clock.t += 2
    hb.advance(3)
    hb.phase("update")
    clock.t += 10
    hb.close()
    row = store.progress([run.id])[run.id]
    assert row["phase"] == "done"
    assert row["totals"] == {"startup": 0.0, "generate": 4.0, "score": 2.0, "update": 10.0}
    assert phase_times(row["totals"]) == "generating 4.0 s, scoring 2.0 s, updating 10.0 s (total 16.0 s)"


def test_a_phase_without_progress_for_too_long_says_so():
    row = {"phase": "update", "step": 2, "total_steps": 3, "phase_started": 0.0, "progress_at": 0.0}
    assert not describe(row, 299.0, 300).quiet
    line = describe(row, 400.0, 300)
    assert line.quiet and line.text == "step 2/3 · updating · 6m40s · no progress for 6m40s"
    assert line.short == "no progress"
    scoring = {"phase": "score", "step": 2, "done": 3, "total": 4, "unit": "groups", "phase_started": 0.0,
               "progress_at": 390.0}
    assert not describe(scoring, 400.0, 300).quiet  # it moved 10 s ago
    assert describe(scoring, 400.0, 300).short == "scoring 3/4"
    assert not describe(row, 10_000.0, 0).quiet  # 0: never flagged
    assert describe({**row, "no_progress_after_s": 500}, 400.0).quiet is False  # the run's own limit
    assert describe(row, 400.0).quiet  # the default: 300 s


def test_evaluation_reads_as_after_the_step():
    row = {"phase": "eval", "step": 3, "total_steps": 3, "done": 0, "total": 16, "unit": "prompts",
           "detail": "token 12/64", "phase_started": 0.0, "progress_at": 0.0}
    assert describe(row, 3.0).text == "after step 3 · evaluating 0/16 prompts (token 12/64) · 3s"


def test_the_flusher_thread_writes_without_being_asked(store):
    run = store.create_run("r", "embedded", {})
    hb = Heartbeat(store, run.id, interval_s=0.05).start()
    try:
        hb.phase("score", step=1, total=2, unit="groups")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = store.progress([run.id]).get(run.id)
            if row and row["phase"] == "score":
                break
            time.sleep(0.02)
        assert row["phase"] == "score" and row["total"] == 2
    finally:
        hb.close()


def test_progress_of_an_older_attempt_is_not_shown(store):
    run = store.create_run("r", "embedded", {})
    Heartbeat(store, run.id).close("update")
    assert run.id in store.progress([run.id])
    store.start_attempt(run.id)
    assert store.progress([run.id]) == {}


def test_train_follower_prints_phase_changes_and_no_progress(store, capsys):
    from ropd_tui.commands._train_progress import ProgressPrinter

    run = store.create_run("r", "embedded", {})
    clock = Clock()
    printer = ProgressPrinter(store, run, clock=clock)
    hb = Heartbeat(store, run.id, total_steps=2, no_progress_after_s=60, clock=clock)
    hb.phase("score", step=1, total=4, unit="groups")
    hb._flush()
    printer.poll()
    clock.t += 1
    printer.poll()  # nothing new: no second line
    clock.t += 100
    printer.poll()  # no progress for 101 s > 60 s: said once
    clock.t += 1
    printer.poll()
    hb.phase("update")
    hb._flush()
    printer.poll()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["  now: step 1/2 · scoring 0/4 groups · 0s",
                     "  now: step 1/2 · scoring 0/4 groups · 1m41s · no progress for 1m41s",
                     "  now: step 1/2 · updating · 0s"]


def test_status_shows_what_a_running_step_is_doing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROPD_MONITOR_POLL_S", "0.1")
    path = tmp_path / "ropd.db"
    with RunStore(path) as store:
        rec = store.create_run("busy", "embedded", {"trainer": {"steps": 3}})
        Supervisor(store).launch(rec, [sys.executable, str(DUMMY / "busy_step.py"), "--store", str(path),
                                       "--run", str(rec.id)], cwd=tmp_path)
        deadline = time.monotonic() + 30
        while not store.progress([rec.id]) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        assert main(["--headless", "--store", str(path), "status", "busy"]) == 0
        out = capsys.readouterr().out
        now = next(line for line in out.splitlines() if line.startswith("now"))
        assert "step 2/3 · scoring 1/4 groups" in now and "no progress for 10m" in now
        assert main(["--headless", "--store", str(path), "status", "busy", "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["now"]["phase"] == "score" and d["now"]["no_progress"] is True
        assert d["progress"]["done"] == 1 and d["progress"]["total"] == 4
    finally:
        assert main(["--headless", "--store", str(path), "stop", "busy", "--grace", "1"]) == 0


def test_entering_the_phase_it_is_in_keeps_its_start():
    clock = Clock()
    hb = Heartbeat(None, None, clock=clock)
    hb.phase("update", step=1)
    clock.t += 30
    hb.phase("update")
    assert hb.phase_started == 1000.0 and hb.snapshot()["totals"]["update"] == 30.0
