"""A verl run whose trainer (another process) died on a full disk ends like an embedded one: "the disk
filled up", exit code 28, an event; a verl failure for another reason keeps its own cause (issue 12)."""

from __future__ import annotations

from engine.runs import worker
from engine.store import RunStore


def _verl_run(tmp_path, log_text: str):
    store = RunStore(tmp_path / "runs" / "ropd.db")
    run = store.create_run("v", "verl", {})
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    run.log_path.write_text(log_text)
    return store, run


def test_verl_exit_with_a_disk_full_log_is_recorded_as_disk_full(tmp_path):
    store, run = _verl_run(tmp_path, "step 3 ...\nTraceback (most recent call last):\n"
                                     "  File \"torch/serialization.py\", line 1\n"
                                     "OSError: [Errno 28] No space left on device\n")
    assert worker._verl_failed(store, run, 1) == worker.EXIT_DISK_FULL
    rec = store.get_run(run.id)
    assert rec.status == "failed" and rec.exit_code == 28
    assert rec.cause.startswith("the disk filled up: verl exited with code 1; its log says: OSError: [Errno 28]")
    assert any(e["kind"] == "failed" and "disk filled up" in e["message"] for e in store.events(run.id))


def test_verl_exit_for_another_reason_keeps_its_cause(tmp_path):
    store, run = _verl_run(tmp_path, "RuntimeError: CUDA error: an illegal memory access\n")
    assert worker._verl_failed(store, run, 1) == 1
    rec = store.get_run(run.id)
    assert rec.status == "failed" and rec.cause == "verl exited with code 1"
    store2, run2 = _verl_run(tmp_path / "b", "")
    assert worker._verl_failed(store2, run2, 4) == 4
    assert store2.get_run(run2.id).cause == "scoring failure rate over the threshold"
