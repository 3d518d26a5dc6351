"""The launcher end to end on CPU: store run -> parquet data + teacher index -> Ray (a local cluster the
launcher starts) -> gatherer actor -> child trainer -> side channel + file-logger lines -> store, then a
resume from the latest checkpoint.

verl itself cannot train on CPU, so the child is a stand-in for ``main_ppo`` (ROPD_VERL_MAIN_CMD): it
receives the real command line, connects to the launcher's Ray cluster through RAY_ADDRESS, finds the
gatherer by name + namespace exactly as verl's reward workers do, submits the rollouts of every prompt,
and writes verl-format metric lines and checkpoint folders.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from engine.config import load_config  # noqa: E402
from engine.store import RunStore  # noqa: E402
from engine.verl_backend import launcher  # noqa: E402

pytestmark = pytest.mark.slow

FAKE_MAIN = textwrap.dedent('''
    import json, os, sys
    import pandas as pd
    import ray
    args = sys.argv[1:]
    assert args[0] == "--config-path" and args[2] == "--config-name", args
    ov = dict((k.lstrip("+"), v) for k, v in (a.split("=", 1) for a in args[4:]))
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    gatherer = ray.get_actor(ov["ropd.gatherer_name"], namespace=ov["ropd.gatherer_namespace"])
    rows = pd.read_parquet(ov["data.train_files"]).to_dict("records")
    start = 0
    if ov.get("trainer.resume_mode") == "resume_path":
        start = int(ov["trainer.resume_from_path"].rsplit("_", 1)[1])
    log = open(os.environ["VERL_FILE_LOGGER_PATH"], "wb", buffering=0)
    ckpt = ov["trainer.default_local_dir"]
    for step in (start + 1, start + 2):
        refs = []
        for row in rows[:2]:
            gt = row["reward_model"]["ground_truth"]
            assert row["extra_info"]["split"] == "train"
            texts = [f"The answer is {gt}.", "The answer is 123456."]
            if os.environ.get("FAKE_DROP_ROLLOUT"):  # a rollout that never reaches the reward loop
                texts = texts[:1]
            for i, text in enumerate(texts):
                refs.append(gatherer.submit.remote({
                    "uid": f"{step}-{row['extra_info']['index']}", "index": i, "text": text, "n": 2, "step": step,
                    "prompt": json.loads(row["extra_info"]["ropd_prompt"]), "ground_truth": gt,
                    "meta": {"data_source": row["data_source"], "split": "train"}}))
        out = ray.get(refs)
        score = sum(o["reward"] for o in out) / len(out)
        acc = sum(o["acc"] for o in out) / len(out)
        line = {"step": step, "data": {"critic/score/mean": score, "val-core/demo_math/acc/mean@1": acc,
                                       "critic/advantages/mean": 0.0, "actor/pg_loss": 0.01 * step}}
        log.write((json.dumps(line) + "\\n").encode())
        os.makedirs(f"{ckpt}/global_step_{step}/actor", exist_ok=True)
        open(f"{ckpt}/latest_checkpointed_iteration.txt", "w").write(str(step))
        if os.environ.get("FAKE_PIDFILE"):  # a long step: wait to be stopped
            open(os.environ["FAKE_PIDFILE"], "w").write(str(os.getpid()))
            import time
            time.sleep(600)
    print("fake main_ppo done", flush=True)
''')


def test_launch_ingest_and_resume(tmp_path, monkeypatch):
    script = tmp_path / "fake_main_ppo.py"
    script.write_text(FAKE_MAIN)
    monkeypatch.setenv(launcher.MAIN_CMD_ENV, f"{sys.executable} {script}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    model = tmp_path / "student-model"
    model.mkdir()
    wandb_key = "0123456789abcdef0123456789abcdef01234567"  # W&B keys are 40 hex digits
    cfg = load_config(None, ["run.backend=verl", "run.name=verl-e2e", "judge.mode=offline", "task.num_prompts=4",
                             "scorer.k=2", f"teacher.index={tmp_path / 'teacher_index.jsonl'}",
                             f"verl.model_path={model}", "verl.group_timeout_s=60",
                             f"verl.overrides=[+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_API_KEY={wandb_key}]"])
    store = RunStore(tmp_path / "runs" / "ropd.db")
    run = store.create_run("verl-e2e", "verl", cfg.to_dict())

    assert launcher.run(cfg, store, run, resume=False) == 0

    steps = store.steps(run.id)
    assert [(s["step"], s["n_groups"]) for s in steps] == [(1, 2), (2, 2)]
    assert [v for _, v in store.metric_series(run.id, "accuracy")] == [0.5, 0.5]
    assert store.metric_series(run.id, "actor/pg_loss") == [(1, 0.01), (2, 0.02)]
    groups = store.step_groups(run.id, 1)
    assert all(g["status"] in ("ok", "recovered") for g in groups)
    assert (tmp_path / "runs" / "verl-e2e" / "verl" / "data" / "val.parquet").exists()
    assert (tmp_path / "teacher_index.jsonl").exists()  # demo task: built on first use
    assert [e["kind"] for e in store.events(run.id)][-1] == "started"
    # the secret reached verl's command line, but not command.txt, the store's events or its config snapshot
    cmd1 = (tmp_path / "runs" / "verl-e2e" / "verl" / "attempt-1" / "command.txt").read_text()
    assert "env_vars.WANDB_API_KEY=***" in cmd1 and wandb_key not in cmd1
    import json as _json
    assert wandb_key not in _json.dumps(store.events(run.id), default=str)
    assert wandb_key not in (tmp_path / "runs" / "verl-e2e" / "config.yaml").read_text()
    assert {"rubricator", "verifier"} <= {t["role"] for t in store.templates(run.id)}
    # the launcher kept the run's heartbeat (the "now" line of status/train/the TUI) and closed it
    progress = store.progress([run.id])[run.id]
    assert progress["phase"] == "done" and progress["step"] >= 2 and "startup" in progress["totals"]

    # the GPU smoke's checks (doctor --gpu-smoke) read the store the same way
    from engine.verl_backend.smoke import evaluate_steps, evaluate_validation

    checks = evaluate_steps(store, run.id, steps=[1, 2], groups_per_step=2) + evaluate_validation(
        store, run.id, step=2, n=1)
    assert [c.status for c in checks] == ["PASS"] * 7, checks
    assert [c.status for c in evaluate_steps(store, run.id, steps=[2], groups_per_step=3)][-1] == "FAIL"

    # resume: the latest checkpoint is passed explicitly, a new metrics file, steps continue at 3
    assert launcher.run(cfg, store, run, resume=True) == 0
    cmd = (tmp_path / "runs" / "verl-e2e" / "verl" / "attempt-2" / "command.txt").read_text()
    assert "trainer.resume_mode=resume_path" in cmd
    assert f"trainer.resume_from_path={run.checkpoints_dir.resolve()}/global_step_2" in cmd
    assert [s["step"] for s in store.steps(run.id)] == [1, 2, 3, 4]
    resumed = [e for e in store.events(run.id) if e["kind"] == "resumed"]
    assert resumed and resumed[0]["step"] == 2
    store.close()


def test_failed_groups_over_threshold_stop_the_run(tmp_path, monkeypatch):
    script = tmp_path / "fake_main_ppo.py"
    script.write_text(FAKE_MAIN)
    monkeypatch.setenv(launcher.MAIN_CMD_ENV, f"{sys.executable} {script}")
    monkeypatch.setenv("FAKE_DROP_ROLLOUT", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    model = tmp_path / "student-model"
    model.mkdir()
    cfg = load_config(None, ["run.backend=verl", "run.name=verl-fail", "judge.mode=offline", "task.num_prompts=4",
                             "scorer.k=2", f"teacher.index={tmp_path / 'teacher_index.jsonl'}",
                             f"verl.model_path={model}", "verl.group_timeout_s=1"])
    store = RunStore(tmp_path / "runs" / "ropd.db")
    run = store.create_run("verl-fail", "verl", cfg.to_dict())

    assert launcher.run(cfg, store, run, resume=False) == 4  # ScoringFailureRateError's exit code
    steps = store.steps(run.id)  # stopped at the first step (groups of a step 2 in flight are kept)
    assert steps[0]["step"] == 1 and steps[0]["n_failed"] == 2 and len(steps) <= 2
    causes = {g["failure_cause"] for g in store.step_groups(run.id, 1)}
    assert all("only 1 of 2 rollouts" in c for c in causes)
    stopped = [e for e in store.events(run.id) if e["kind"] == "stopped"]
    assert stopped and "scorer.failure_threshold" in stopped[0]["message"]
    store.close()


def test_sigterm_to_the_train_worker_stops_verl_cleanly(tmp_path):
    """Through D's train worker, as the supervisor runs it: SIGTERM -> verl child stopped, run 'stopped'."""
    script = tmp_path / "fake_main_ppo.py"
    script.write_text(FAKE_MAIN)
    pidfile = tmp_path / "child.pid"
    model = tmp_path / "student-model"
    model.mkdir()
    cfg = load_config(None, ["run.backend=verl", "run.name=verl-stop", "judge.mode=offline", "task.num_prompts=4",
                             "scorer.k=2", f"teacher.index={tmp_path / 'teacher_index.jsonl'}",
                             f"verl.model_path={model}", "supervisor.stop_grace_s=20"])
    db = tmp_path / "runs" / "ropd.db"
    store = RunStore(db)
    run = store.create_run("verl-stop", "verl", cfg.to_dict())
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({launcher.MAIN_CMD_ENV: f"{sys.executable} {script}", "FAKE_PIDFILE": str(pidfile)})
    worker = subprocess.Popen([sys.executable, "-m", "engine.runs.worker", "--store", str(db), "--run", "verl-stop"],
                              env=env, cwd=Path(__file__).resolve().parents[1],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (store.steps(run.id) and pidfile.exists()) and time.monotonic() < deadline:
            assert worker.poll() is None, worker.stdout.read()
            time.sleep(0.5)
        assert store.steps(run.id), "no step arrived"
        child = int(pidfile.read_text())
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=90)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 143, out
    assert "stop requested; stopping verl" in out
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert store.get_run(run.id).status == "stopped"
    store.close()
