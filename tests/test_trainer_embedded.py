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
    # the judge progress of the last step, as `train` reads it from the run folder
    from engine.progress import PROGRESS_FILE, read_snapshot

    snap = read_snapshot(run.run_dir / PROGRESS_FILE)
    assert snap.label == "step 2 judging" and snap.finished
    assert (snap.groups_total, snap.groups_done, snap.groups_failed) == (2, 2, 0)
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


def _eos_likely(monkeypatch) -> None:
    """Sample with EOS made likely, so the completions differ in length: with equal lengths the dapo loss
    of group-centred advantages is 0 whatever its token normaliser, and a test could not tell."""
    original = EmbeddedRun._grpo_args

    def grpo_args(self, output_dir):
        args = original(self, output_dir)
        args.generation_kwargs = {"sequence_bias": [[[2], 3.0]]}  # token 2: <|im_end|>, the tiny model's EOS
        return args

    monkeypatch.setattr(EmbeddedRun, "_grpo_args", grpo_args)


def _capture_trl_batch(monkeypatch) -> dict:
    """TRL's own batch, before RopdGRPOTrainer masks anything (wraps GRPOTrainer's method)."""
    import functools

    import trl

    raw: dict = {}
    original = trl.GRPOTrainer._generate_and_score_completions

    @functools.wraps(original)  # keeps the signature and source the start-up check reads
    def wrapper(self, inputs):
        out = original(self, inputs)
        raw.update({k: out[k].clone() for k in ("completion_ids", "completion_mask", "advantages")})
        return out

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_and_score_completions", wrapper)
    return raw


def test_the_loss_of_a_step_with_a_failed_group_is_the_loss_of_its_kept_rows(tmp_path, tiny_model, store, monkeypatch):
    problems = demo_math.make_problems(2, 0)
    # the teacher index lacks the second prompt: its group fails at the teacher stage every step
    demo_math.ensure_teacher_index(tmp_path / "teacher.jsonl", problems[:1], 4)
    cfg = make_cfg(tmp_path, tiny_model, "task.num_prompts=2", "teacher.build_if_missing=false", "trainer.steps=1",
                   "trainer.max_new_tokens=8", "scorer.failure_threshold=0.5")
    run = new_run(store, cfg)
    _eos_likely(monkeypatch)
    raw = _capture_trl_batch(monkeypatch)
    seen: dict = {}
    cls = embedded._make_trainer_class()

    class Spy(cls):
        def _generate_and_score_completions(self, inputs):  # the batch the loss will see, in batch order
            out = super()._generate_and_score_completions(inputs)
            seen["mask_rows"] = out["completion_mask"].sum(dim=1).tolist()
            seen["advantages"] = out["advantages"].tolist()
            seen["failed_rows"] = list(self.ropd.record.failed_rows)
            return out

        def _compute_loss(self, model, inputs):  # what TRL's loss actually returns for the backward pass
            loss = super()._compute_loss(model, inputs)
            seen["loss"] = float(loss.detach())
            return loss

    monkeypatch.setattr(embedded, "_make_trainer_class", lambda: Spy)
    result = EmbeddedRun(cfg, store, run, log=quiet).train()
    assert result.status == "finished"
    groups = store.step_groups(run.id, 1)
    failed = [g for g in groups if g["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["failure_stage"] == "teacher"
    assert sum(seen["failed_rows"]) == 3  # the 3 rollouts of the failed group
    for is_failed, rows, adv in zip(seen["failed_rows"], seen["mask_rows"], seen["advantages"]):
        assert (rows == 0 and adv == 0.0) if is_failed else rows > 0  # no tokens, no advantage in the loss

    # The loss, from first principles: one iteration per generation, so every probability ratio is 1 and
    # the dapo loss is -sum(A_i * n_i) / sum(n_i) over the kept rows (A: TRL's group-centred advantage,
    # n: completion tokens). With the failed rows' tokens in the normaliser it would be smaller.
    kept = [not f for f in seen["failed_rows"]]
    lengths = raw["completion_mask"].sum(dim=1).tolist()
    adv = raw["advantages"].tolist()
    assert all(a == 0.0 for a, k in zip(adv, kept) if not k)  # TRL zeroes an unscorable row's advantage
    ref = -sum(a * n for a, n, k in zip(adv, lengths, kept) if k) / sum(n for n, k in zip(lengths, kept) if k)
    with_failed_tokens = -sum(a * n for a, n in zip(adv, lengths)) / sum(lengths)
    assert abs(ref - with_failed_tokens) > 1e-3, "lengths and rewards must vary for this test to tell"
    assert seen["loss"] == pytest.approx(ref, rel=1e-4, abs=1e-7)

    # per-row statistics count the kept rows only
    metrics = {k: dict(store.metric_series(run.id, k))[1] for k in
               ("reward/mean", "judge/failure_rate", "judge/unscored_rollouts", "response_length/mean",
                "response_length/clipped_ratio", "update/skipped")}
    ok = [g for g in groups if g["status"] != "failed"][0]
    ok_rewards = [a["reward"] for a in ok["answers"] if a["kind"] == "student"]
    assert metrics["reward/mean"] == pytest.approx(sum(ok_rewards) / len(ok_rewards))
    assert metrics["judge/failure_rate"] == pytest.approx(0.5) and metrics["judge/unscored_rollouts"] == 3
    kept_lengths = [n for n, k in zip(lengths, kept) if k]
    assert metrics["response_length/mean"] == pytest.approx(sum(kept_lengths) / 3)
    ids = raw["completion_ids"]
    clipped = [int(ids[i, n - 1]) != 2 for i, (n, k) in enumerate(zip(lengths, kept)) if k]
    assert metrics["response_length/clipped_ratio"] == pytest.approx(sum(clipped) / 3)
    assert metrics["update/skipped"] == 0.0


def _hashed_rubric(prompt: str) -> dict:
    """A valid rubric whose verdicts the loopback judge derives from a hash of each answer, so rewards
    spread even over a random model's answers (and the first step has a real gradient)."""
    crits = [{"criterion_id": f"c{i}", "category": "observable response quality",
              "criterion": f"The answer satisfies hashed property {i}.", "points": i} for i in range(1, 5)]
    return {"schema_version": "ropd.rubric.v1", "rubrics": crits, "maximum_score": 10}


def _state(path: Path) -> tuple[dict, dict]:
    import torch
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors")), torch.load(path / "optimizer.pt", weights_only=False)["state"]


def test_a_step_with_nothing_scored_makes_no_update_even_at_threshold_one(tmp_path, tiny_model, store):
    import torch
    from loopback_server import LoopbackJudgeServer
    from safetensors.torch import load_file

    rubricator_calls = []

    def rubric(prompt):  # step 1's two groups get a rubric; from step 2 on the rubricator replies junk
        rubricator_calls.append(prompt)
        return _hashed_rubric(prompt) if len(rubricator_calls) <= 2 else "no rubric today"

    with LoopbackJudgeServer() as srv:
        srv.rubric_fn = rubric
        cfg = make_cfg(tmp_path, tiny_model, "trainer.steps=2", "trainer.save_every=1", "trainer.keep_checkpoints=3",
                       "scorer.failure_threshold=1.0", "judge.mode=auto", "judge.reask_attempts=0",
                       f"judge.rubricator.base_url={srv.base_url}", f"judge.verifier.base_url={srv.base_url}",
                       "judge.rubricator.model=fake-judge", "judge.verifier.model=fake-judge")
        run = new_run(store, cfg)
        result = embedded.run(cfg, store, run, log=quiet)
    assert result.status == "finished" and result.last_step == 2  # the step counts; the run goes on
    assert {g["status"] for g in store.step_groups(run.id, 1)} <= {"ok", "recovered"}
    assert [g["failure_stage"] for g in store.step_groups(run.id, 2)] == ["rubricator", "rubricator"]
    assert dict(store.metric_series(run.id, "update/skipped")) == {1: 0.0, 2: 1.0}
    assert dict(store.metric_series(run.id, "reward/std"))[1] > 0  # step 1 had a learning signal
    assert set(dict(store.metric_series(run.id, "loss"))) == {1}  # no loss statistics for the skipped step
    skipped = [e for e in store.events(run.id) if e["kind"] == "step_skipped"]
    assert len(skipped) == 1 and skipped[0]["step"] == 2 and "no update was made" in skipped[0]["message"]

    # step 2 left the weights AND the optimizer state (AdamW's moments, its step count) as step 1 did
    ckpt = Path(run.run_dir) / "checkpoints"
    w1, opt1 = _state(ckpt / "checkpoint-1")
    w2, opt2 = _state(ckpt / "checkpoint-2")
    w0 = load_file(str(tiny_model / "model.safetensors"))
    assert any(not torch.equal(w0[k], w1[k]) for k in w1)  # step 1 did update
    assert opt1 and any(s["exp_avg"].abs().sum() > 0 for s in opt1.values())  # with momentum to carry on
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert opt1.keys() == opt2.keys()
    for i in opt1:
        for key, value in opt1[i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt2[i][key])), (i, key)


class _OneRolloutUnscored:
    """The real scorer, with one rollout of the first group left without a reward in an otherwise
    scored group (the scorer itself never does this; the trainer must still handle it)."""

    def __init__(self, cfg, tmp_path):
        from engine.scoring.scorer import Scorer
        from engine.trainers import data as task_data

        index = task_data.teacher_index_for(cfg, task_data.load_problems(cfg), log=quiet)
        self.inner = Scorer(cfg, teacher_index=index)

    def score_batch_sync(self, groups, **kw):
        batch = self.inner.score_batch_sync(groups, **kw)
        batch.groups[0].student_answers[1].reward = None
        return batch

    def check_failure_rate(self, batch):
        return self.inner.check_failure_rate(batch)


def test_a_rollout_without_a_reward_in_a_scored_group_counts_as_a_failure(tmp_path, tiny_model, store):
    cfg = make_cfg(tmp_path, tiny_model, "trainer.steps=1")
    run = new_run(store, cfg)
    er = EmbeddedRun(cfg, store, run, log=quiet, scorer=_OneRolloutUnscored(cfg, tmp_path))
    seen = {}
    cls = embedded._make_trainer_class()

    class Spy(cls):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            seen["mask_rows"] = out["completion_mask"].sum(dim=1).tolist()
            return out

    monkey = pytest.MonkeyPatch()
    monkey.setattr(embedded, "_make_trainer_class", lambda: Spy)
    try:
        assert er.train().status == "finished"
    finally:
        monkey.undo()
    assert seen["mask_rows"][1] == 0 and all(n > 0 for i, n in enumerate(seen["mask_rows"]) if i != 1)
    m = {k: dict(store.metric_series(run.id, k))[1] for k in
         ("judge/failure_rate", "judge/unscored_rollouts", "judge/failed_groups")}
    assert m == {"judge/failure_rate": pytest.approx(1 / 6), "judge/unscored_rollouts": 1.0,
                 "judge/failed_groups": 0.0}
    # the threshold applies to the same share
    cfg2 = make_cfg(tmp_path, tiny_model, "trainer.steps=1", "scorer.failure_threshold=0.1")
    run2 = new_run(store, cfg2, "t2")
    with pytest.raises(ScoringFailureRateError, match="1 of 6 rollouts have no reward"):
        EmbeddedRun(cfg2, store, run2, log=quiet, scorer=_OneRolloutUnscored(cfg2, tmp_path)).train()
    assert [(s["step"], s["n_failed"]) for s in store.steps(run2.id)] == [(1, 0)]
    assert latest_checkpoint(run2) is None


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
    # the trainer was killed while saving step 2's checkpoint: a folder without trainer_state.json
    broken = Path(run.run_dir) / "checkpoints" / "checkpoint-2"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\0" * 300_000)
    said = []
    cfg2 = make_cfg(tmp_path, tiny_model, "trainer.steps=3")
    result = embedded.run(cfg2, store, run, resume=True, log=said.append)
    assert any("discarded incomplete checkpoint(s) left by an interrupted save: checkpoint-2 (300 kB)" in m
               for m in said)
    assert [e for e in store.events(run.id) if e["kind"] == "checkpoint_discarded"]
    assert result.status == "finished" and result.last_step == 3
    steps = store.steps(run.id)
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert steps[0]["seq"] == first["seq"]  # step 1 was not redone
    loaded = [e for e in store.events(run.id) if e["kind"] == "checkpoint_loaded"]
    assert len(loaded) == 1 and loaded[0]["step"] == 1
    assert latest_checkpoint(run).name == "checkpoint-3"
    assert len(list((Path(run.run_dir) / "checkpoints").glob("checkpoint-*"))) == cfg.trainer.keep_checkpoints


def test_incomplete_checkpoints_are_found_and_removed(tmp_path):
    from types import SimpleNamespace

    from engine.trainers.embedded import discard_incomplete_checkpoints

    run = SimpleNamespace(run_dir=tmp_path)
    root = tmp_path / "checkpoints"
    (root / "checkpoint-1").mkdir(parents=True)
    (root / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (root / "checkpoint-2").mkdir()
    (root / "checkpoint-2" / "optimizer.pt").write_bytes(b"x" * 2_000_000)
    (root / "tmp-checkpoint-3").mkdir()
    (root / "model.safetensors.tmp").write_bytes(b"x" * 10)
    gone = discard_incomplete_checkpoints(run)
    assert gone == [("checkpoint-2", 2_000_000), ("model.safetensors.tmp", 10), ("tmp-checkpoint-3", 0)]
    assert [p.name for p in root.iterdir()] == ["checkpoint-1"] and latest_checkpoint(run).name == "checkpoint-1"


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
