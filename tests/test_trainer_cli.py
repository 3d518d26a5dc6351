"""``ropd-tui --headless train``: config errors before anything starts, and a whole tiny run through
the supervisor (real subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def ropd(*args: str, cwd: Path, env_extra: dict[str, str] | None = None, timeout: float = 300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "ropd_tui.cli", "--headless", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("args, message", [
    (["trainer.stepz=3"], "unknown config key 'trainer.stepz'"),
    (["trainer.model=/no/such/model"], "trainer.model"),
    (["judge.mode=llm"], "judge.rubricator.model"),
    (["judge.mode=llm", "judge.rubricator.model=m", "judge.verifier.model=m"], "no judge configured"),
    (["task.name=jsonl", f"task.train_file={ROOT / 'configs' / 'demo.yaml'}"], "not valid JSON"),
    (["teacher.build_if_missing=false", "teacher.index=/no/such/index.jsonl"], "teacher index not found"),
    (["run.backend=verl"], "verl"),
])
def test_config_errors_are_reported_before_a_run_exists(tmp_path, args, message):
    store = tmp_path / "runs" / "ropd.db"
    res = ropd("--store", str(store), "train", "--config", str(ROOT / "configs" / "demo.yaml"), *args, cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    if store.exists():
        with RunStore(store) as s:
            assert s.list_runs() == []


def test_dead_judge_is_reported_before_a_run_exists(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = tmp_path / "runs" / "ropd.db"
    url = f"http://127.0.0.1:{port}/v1"
    res = ropd("--store", str(store), "train", "--config", str(ROOT / "configs" / "demo.yaml"),
               f"judge.rubricator.base_url={url}", f"judge.verifier.base_url={url}", "judge.rubricator.model=m",
               "judge.verifier.model=m", cwd=tmp_path)
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"127.0.0.1:{port}" in res.stderr and "Traceback" not in res.stderr
    if store.exists():
        with RunStore(store) as s:
            assert s.list_runs() == []


def test_missing_config_file(tmp_path):
    res = ropd("train", "--config", "nope.yaml", cwd=tmp_path)
    assert res.returncode == 2 and "config file not found" in res.stderr


def test_train_runs_to_the_end_and_streams_progress(tmp_path, tiny_model):
    store = tmp_path / "runs" / "ropd.db"
    res = ropd("--store", str(store), "train", "--config", str(ROOT / "configs" / "demo.yaml"),
               f"trainer.model={tiny_model}", "trainer.steps=2", "trainer.prompts_per_step=2", "trainer.rollouts=2",
               "trainer.max_new_tokens=4", "trainer.threads=1", "task.num_prompts=2",
               f"teacher.index={tmp_path / 'teacher.jsonl'}", "judge.mode=offline", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "step 1/2  reward" in out and "step 2/2  reward" in out
    assert "judge failures 0/2" in out and "s/step" in out
    assert "run demo finished: 2 steps in" in out
    # the measured time per phase, from the trainer's heartbeat
    times = next(line for line in out.splitlines() if line.startswith("time per phase: "))
    for phase in ("start-up", "generating", "scoring", "updating", "saving checkpoints"):
        assert phase in times, times
    with RunStore(store) as s:
        runs = s.list_runs()
        assert [(r["name"], r["status"], r["last_step"]) for r in runs] == [("demo", "finished", 2)]
        assert runs[0]["reward"] is not None and runs[0]["accuracy"] is not None
    # a second run of the same config gets a fresh name
    res2 = ropd("--store", str(store), "train", "--config", str(ROOT / "configs" / "demo.yaml"), "--detach",
                f"trainer.model={tiny_model}", "trainer.steps=1", "trainer.prompts_per_step=2", "trainer.rollouts=2",
                "trainer.max_new_tokens=4", "task.num_prompts=2", f"teacher.index={tmp_path / 'teacher.jsonl'}",
                "judge.mode=offline", cwd=tmp_path)
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert "run demo-2 started" in res2.stdout
    # ... and says so before it starts, with how to continue the existing one instead
    assert ("run name 'demo' is taken (finished at step 2): this creates a new run 'demo-2'. "
            "To continue 'demo' instead: ropd-tui --headless resume demo") in res2.stdout
    from engine.store import RunStore as RS
    from engine.runs.supervisor import Supervisor

    with RS(store) as s:
        rec = Supervisor(s).wait("demo-2", timeout=240)
        assert rec.status == "finished", (rec.cause, rec.stderr_tail)
    # an explicit --name must be free: nothing is created, and the message says how to resume it
    res3 = ropd("--store", str(store), "train", "--config", str(ROOT / "configs" / "demo.yaml"), "--name", "demo",
                f"trainer.model={tiny_model}", cwd=tmp_path)
    assert res3.returncode == 2
    assert "a run named 'demo' already exists (finished at step 2)" in res3.stderr
    assert "ropd-tui --headless resume demo" in res3.stderr


def test_ctrl_c_stops_the_run_and_says_how_to_resume(tmp_path, tiny_model):
    import signal
    import time

    store = tmp_path / "runs" / "ropd.db"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ropd_tui.cli", "--headless", "--store", str(store), "train", "--config",
         str(ROOT / "configs" / "demo.yaml"), "--name", "cc", f"trainer.model={tiny_model}", "trainer.steps=500",
         "trainer.prompts_per_step=2", "trainer.rollouts=2", "trainer.max_new_tokens=4", "trainer.threads=1",
         "trainer.save_every=1000", "task.num_prompts=2", f"teacher.index={tmp_path / 'teacher.jsonl'}",
         "judge.mode=offline"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 180
    for line in proc.stdout:  # wait for the first step line
        lines.append(line)
        if line.startswith("step 1/500") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=180)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "Resume it with: ropd-tui --headless resume cc" in out
    with RunStore(store) as s:
        rec = s.get_run("cc")
        assert rec.status == "stopped"
        from engine.trainers.embedded import latest_checkpoint

        ckpt = latest_checkpoint(rec)
        assert ckpt is not None and ckpt.name == f"checkpoint-{rec.last_step}"


def test_progress_lines_include_validation_accuracy_when_it_lands(tmp_path, capsys):
    from dummy_trainers.payloads import make_step
    from ropd_tui.commands.train import _Follower

    store = RunStore(tmp_path / "ropd.db")
    run = store.create_run("r", "embedded", {"trainer": {"steps": 2}})
    follower = _Follower(store, run)
    store.write_step(run.id, 1, {"reward/mean": 0.25}, make_step(1, 2))
    follower.poll()
    # the evaluation of step 1 finishes after the step's row was written and printed
    store.write_metrics(run.id, 1, {"val/accuracy": 0.5})
    store.write_step(run.id, 2, {"reward/mean": 0.5}, make_step(2, 2))
    follower.poll()
    follower.poll()
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0:2] for ln in lines if ln.startswith("step ")] == [["step", "1/2"], ["step", "2/2"]]
    assert [ln for ln in lines if ln.startswith("eval")] == ["eval after step 1: val accuracy 0.500"]
