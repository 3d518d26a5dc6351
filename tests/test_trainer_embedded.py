"""The embedded GRPO trainer end to end on a tiny random Llama (seconds, not minutes): real TRL, real
scorer with the offline judge, real run store, real checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError, ScoringFailureRateError
from engine.store import RunStore
from engine.tasks import demo_math
from engine.trainers import embedded
from engine.trainers.embedded import EmbeddedRun, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def store(tmp_path) -> RunStore:
    s = RunStore(tmp_path / "runs" / "ropd.db")
    yield s
    s.close()


def make_cfg(tmp_path: Path, tiny_model: Path, *extra: str):
    return load_config(None, [
        f"trainer.model={tiny_model}", "trainer.steps=2", "trainer.prompts_per_step=2", "trainer.rollouts=3",
        "trainer.max_new_tokens=6", "trainer.learning_rate=1e-3", "trainer.threads=1", "task.num_prompts=4",
        f"teacher.index={tmp_path / 'teacher.jsonl'}", "judge.mode=offline", "templates.watch=false",
        *extra])


def new_run(store: RunStore, cfg, name: str = "t"):
    cfg.run.name = name
    return store.create_run(name, "embedded", cfg.to_dict())


def quiet(_msg: str) -> None:
    pass


def test_two_steps_land_in_the_store_with_rubrics_and_verdicts(tmp_path, tiny_model, store):
    cfg = make_cfg(tmp_path, tiny_model)
    run = new_run(store, cfg)
    result = embedded.run(cfg, store, run, resume=False, log=quiet)
    assert result.status == "finished" and result.last_step == 2
    assert [s["step"] for s in store.steps(run.id)] == [1, 2]
    keys = set(store.metric_keys(run.id))
    for key in ("reward/mean", "reward/std", "accuracy", "loss", "entropy", "response_length/mean", "clip_ratio",
                "time/generate", "time/score", "time/update", "time/step", "judge/failure_rate",
                "judge/calls", "judge/latency_s"):
        assert key in keys, key
    assert "kl" not in keys  # beta = 0: no KL term, so none is reported
    groups = store.step_groups(run.id, 1)
    assert len(groups) == 2
    for g in groups:
        assert g["status"] in ("ok", "recovered")
        assert g["rubric"] is not None and len(g["rubric"]["criteria"]) >= cfg.scorer.min_criteria
        students = [a for a in g["answers"] if a["kind"] == "student"]
        teachers = [a for a in g["answers"] if a["kind"] == "teacher"]
        assert len(students) == 3 and len(teachers) == cfg.scorer.k
    # the demo teacher index was built automatically
    assert (tmp_path / "teacher.jsonl").exists()
    # a checkpoint at the last step, and events for the start and each checkpoint
    assert latest_checkpoint(run).name == "checkpoint-2"
    kinds = [e["kind"] for e in store.events(run.id)]
    assert "trainer_started" in kinds and kinds.count("checkpoint") == 2
    # the heartbeat went through every phase of a step and ended "done", with seconds per phase
    progress = store.progress([run.id])[run.id]
    assert progress["phase"] == "done" and progress["step"] == 2 and progress["total_steps"] == 2
    assert progress["no_progress_after_s"] == cfg.supervisor.no_progress_after_s
    assert set(progress["totals"]) == {"startup", "generate", "score", "update", "save"}
    # rollouts know whether they hit max_new_tokens (6 tokens: a random model never stops that early
    # for all of them); teacher answers have no token limit
    for g in groups:
        students = [a for a in g["answers"] if a["kind"] == "student"]
        assert all(a["clipped"] is not None for a in students) and any(a["clipped"] for a in students)
        assert all(a["clipped"] is None for a in g["answers"] if a["kind"] == "teacher")


def test_failed_groups_are_left_out_of_the_update(tmp_path, tiny_model, store):
    problems = demo_math.make_problems(2, 0)
    # the teacher index lacks the second prompt: its group fails at the teacher stage every step
    demo_math.ensure_teacher_index(tmp_path / "teacher.jsonl", problems[:1], 4)
    cfg = make_cfg(tmp_path, tiny_model, "task.num_prompts=2", "teacher.build_if_missing=false", "trainer.steps=1",
                   "scorer.failure_threshold=0.5")
    run = new_run(store, cfg)
    er = EmbeddedRun(cfg, store, run, log=quiet)
    seen = {}
    cls = embedded._make_trainer_class()
    original = cls._generate_and_score_completions

    def spy(self, inputs):  # records what the loss will see
        out = original(self, inputs)
        seen["mask_rows"] = out["completion_mask"].sum(dim=1).tolist()
        seen["advantages"] = out["advantages"].tolist()
        seen["failed_rows"] = list(self.ropd.record.failed_rows)
        seen["num_items"] = int(out["num_items_in_batch"])
        return out

    monkey = pytest.MonkeyPatch()
    monkey.setattr(embedded, "_make_trainer_class", lambda: type("Spy", (cls,), {"_generate_and_score_completions": spy}))
    try:
        result = er.train()
    finally:
        monkey.undo()
    assert result.status == "finished"
    groups = store.step_groups(run.id, 1)
    failed = [g for g in groups if g["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["failure_stage"] == "teacher"
    assert sum(seen["failed_rows"]) == 3  # the 3 rollouts of the failed group
    for is_failed, rows, adv in zip(seen["failed_rows"], seen["mask_rows"], seen["advantages"]):
        if is_failed:
            assert rows == 0 and adv == 0.0  # no tokens in the loss, no advantage
        else:
            assert rows > 0
    assert seen["num_items"] == sum(seen["mask_rows"])  # the token normaliser counts only kept rows
    # reward statistics come from the scored group only
    ok = [g for g in groups if g["status"] != "failed"][0]
    ok_rewards = [a["reward"] for a in ok["answers"] if a["kind"] == "student"]
    series = dict(store.metric_series(run.id, "reward/mean"))
    assert series[1] == pytest.approx(sum(ok_rewards) / len(ok_rewards))
    assert dict(store.metric_series(run.id, "judge/failure_rate"))[1] == pytest.approx(0.5)


def test_failure_rate_over_threshold_records_the_step_and_stops(tmp_path, tiny_model, store):
    problems = demo_math.make_problems(2, 0)
    demo_math.ensure_teacher_index(tmp_path / "teacher.jsonl", problems[:1], 4)
    cfg = make_cfg(tmp_path, tiny_model, "task.num_prompts=2", "teacher.build_if_missing=false",
                   "scorer.failure_threshold=0.25")
    run = new_run(store, cfg)
    with pytest.raises(ScoringFailureRateError):
        embedded.run(cfg, store, run, log=quiet)
    steps = store.steps(run.id)
    assert [(s["step"], s["n_groups"], s["n_failed"]) for s in steps] == [(1, 2, 1)]
    assert "scoring_failed" in [e["kind"] for e in store.events(run.id)]
    assert latest_checkpoint(run) is None  # no update happened


def test_resume_continues_at_the_next_step(tmp_path, tiny_model, store):
    cfg = make_cfg(tmp_path, tiny_model, "trainer.steps=1")
    run = new_run(store, cfg)
    assert embedded.run(cfg, store, run, log=quiet).last_step == 1
    first = store.steps(run.id)[0]
    cfg2 = make_cfg(tmp_path, tiny_model, "trainer.steps=3")
    result = embedded.run(cfg2, store, run, resume=True, log=quiet)
    assert result.status == "finished" and result.last_step == 3
    steps = store.steps(run.id)
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert steps[0]["seq"] == first["seq"]  # step 1 was not redone
    loaded = [e for e in store.events(run.id) if e["kind"] == "checkpoint_loaded"]
    assert len(loaded) == 1 and loaded[0]["step"] == 1
    assert latest_checkpoint(run).name == "checkpoint-3"
    assert len(list((Path(run.run_dir) / "checkpoints").glob("checkpoint-*"))) == cfg.trainer.keep_checkpoints


def test_too_few_prompts_is_a_config_error(tmp_path, tiny_model, store):
    cfg = make_cfg(tmp_path, tiny_model, "task.num_prompts=1")
    run = new_run(store, cfg)
    with pytest.raises(ConfigError, match="prompts_per_step"):
        embedded.run(cfg, store, run, log=quiet)


def _worker(store_path: Path, run_name: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "engine.runs.worker", "--store", str(store_path), "--run",
                             run_name, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_worker_stops_cleanly_on_sigterm_and_resumes(tmp_path, tiny_model, store):
    cfg = make_cfg(tmp_path, tiny_model, "trainer.steps=500", "trainer.save_every=1000")
    run = new_run(store, cfg, "sig")
    proc = _worker(store.path, "sig")
    deadline = time.monotonic() + 120
    while not store.steps(run.id) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert store.steps(run.id), proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    rec = store.get_run(run.id)
    assert rec.status == "stopped"
    assert "resume with: ropd-tui --headless resume sig" in out
    assert "stopped" in [e["kind"] for e in store.events(run.id)]
    last = max(s["step"] for s in store.steps(run.id))
    assert last < 500
    # the last completed step is checkpointed even though save_every was not reached
    ckpt = latest_checkpoint(rec)
    assert ckpt is not None and ckpt.name == f"checkpoint-{last}"
    # resume runs exactly the remaining step(s)
    store.update_run(run.id, config=make_cfg(tmp_path, tiny_model, f"trainer.steps={last + 1}").to_dict())
    proc = _worker(store.path, "sig", "--resume")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert max(s["step"] for s in store.steps(run.id)) == last + 1
    assert store.get_run(run.id).status == "finished"


def test_worker_reports_a_user_error_with_exit_code_2(tmp_path, tiny_model, store):
    cfg = make_cfg(tmp_path, tiny_model, f"trainer.model={tmp_path / 'nope'}")
    run = new_run(store, cfg, "bad")
    proc = _worker(store.path, "bad")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "trainer.model" in out and "Traceback" not in out
    rec = store.get_run(run.id)
    assert rec.status == "failed" and "trainer.model" in (rec.cause or "")


def test_llm_judge_over_http_drives_the_rewards(tmp_path, tiny_model, store):
    from loopback_server import LoopbackJudgeServer

    with LoopbackJudgeServer() as srv:
        cfg = make_cfg(tmp_path, tiny_model, "trainer.steps=1", "judge.mode=auto",
                       f"judge.rubricator.base_url={srv.base_url}", f"judge.verifier.base_url={srv.base_url}",
                       "judge.rubricator.model=fake-judge", "judge.verifier.model=fake-judge")
        assert cfg.judge_is_llm()
        run = new_run(store, cfg)
        assert embedded.run(cfg, store, run, log=quiet).status == "finished"
        # ONE rubricator request per prompt, holding all of its rollouts
        rub = srv.requests_for("rubricator")
        assert len(rub) == cfg.trainer.prompts_per_step
        for r in rub:
            assert r.prompt.count("<student_answer id=") == cfg.trainer.rollouts
    groups = store.step_groups(run.id, 1)
    assert all(g["status"] in ("ok", "recovered") for g in groups)
    calls = [c for g in groups for c in g["calls"]]
    assert {c["role"] for c in calls} >= {"rubricator", "verifier"}
    assert all(c["endpoint"] and "127.0.0.1" in c["endpoint"] for c in calls)
    keys = set(store.metric_keys(run.id))
    assert {"judge/prompt_tokens", "judge/completion_tokens", "judge/latency_s"} <= keys


def test_kl_is_reported_when_beta_is_set(tmp_path, tiny_model, store):
    cfg = make_cfg(tmp_path, tiny_model, "trainer.steps=1", "trainer.beta=0.04")
    run = new_run(store, cfg)
    assert embedded.run(cfg, store, run, log=quiet).status == "finished"
    assert dict(store.metric_series(run.id, "kl")).keys() == {1}
