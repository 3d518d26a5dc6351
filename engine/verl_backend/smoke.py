"""The verl GPU smoke run behind ``ropd-tui --headless doctor --gpu-smoke``, and the checks on its result.

:func:`run_smoke` trains the demo task on a small local model with tiny batches through the real launcher
and verl (``total_training_steps=2``, validation before training and at step 2, a checkpoint at step 2),
then resumes to step 3, all in a throwaway store. :func:`evaluate_steps` and :func:`evaluate_validation`
read the store afterwards: each line is PASS or FAIL with the numbers behind it. They only read the store,
so they are tested on CPU too (tests/test_verl_reward.py drives one step through verl's reward pieces).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from engine.checks import Check, failed, verdict

SCORE_TOL = 1e-6
ADVANTAGE_TOL = 1e-3
# tiny, so two steps + a resume take minutes on one GPU (train_batch_size 8 x n 4, 256-token responses)
SMOKE_OVERRIDES = [
    "data.train_batch_size=8", "actor_rollout_ref.rollout.n=4", "data.max_prompt_length=256",
    "data.max_response_length=256", "actor_rollout_ref.actor.ppo_mini_batch_size=8",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", "actor_rollout_ref.rollout.val_kwargs.n=2",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.4", "actor_rollout_ref.rollout.max_model_len=1024",
    "trainer.save_freq=2", "trainer.test_freq=2", "trainer.val_before_train=true", "reward.num_workers=2",
]


def _at(series: list[tuple], step: int) -> float | None:
    return next((v for s, v, *_ in series if s == step), None)


def evaluate_steps(store, run_id: int, *, steps: list[int], groups_per_step: int) -> list[Check]:
    """Per training step: verl's ``critic/score/mean`` equals the store's mean student reward (the rewards
    verl trained on are the ones recorded), the mean advantage is ~0 (GRPO centring), every group is ok and
    no group timed out."""
    out = []
    score = store.metric_series(run_id, "critic/score/mean")
    student = store.metric_series(run_id, "score/student_reward_mean")
    adv = store.metric_series(run_id, "critic/advantages/mean")
    for step in steps:
        a, b = _at(score, step), _at(student, step)
        name = f"step {step}: critic/score/mean = store's mean student reward"
        if a is None or b is None:
            out.append(failed(name, f"critic/score/mean {a}, score/student_reward_mean {b} (missing)"))
        else:
            out.append(verdict(abs(a - b) <= SCORE_TOL, name, f"{a:.6f} vs {b:.6f} (tolerance {SCORE_TOL:g})"))
        m = _at(adv, step)
        out.append(verdict(m is not None and abs(m) <= ADVANTAGE_TOL, f"step {step}: mean advantage ~0",
                           f"critic/advantages/mean {m}"))
        groups = store.step_groups(run_id, step, include_calls=False)
        ok = sum(g["status"] in ("ok", "recovered") for g in groups)
        timeouts = sum("timeout" in (g.get("failure_cause") or "") for g in groups)
        out.append(verdict(ok == groups_per_step and len(groups) == groups_per_step and timeouts == 0,
                           f"step {step}: {groups_per_step} ok groups, no timeouts",
                           f"{ok} ok of {len(groups)} groups, {timeouts} timed out"))
    return out


def evaluate_validation(store, run_id: int, *, step: int, n: int) -> list[Check]:
    """Validation at ``step`` logged verl's accuracy (``val-core/<source>/acc/mean@n``) and reached no
    judge: no scored group is recorded for that step."""
    keys = [k for k in store.metric_keys(run_id) if k.startswith("val-core/") and k.endswith(f"/acc/mean@{n}")]
    vals = {k: _at(store.metric_series(run_id, k), step) for k in keys}
    vals = {k: v for k, v in vals.items() if v is not None}
    out = [verdict(bool(vals), f"step {step}: validation accuracy logged (val-core/.../acc/mean@{n})",
                   ", ".join(f"{k} = {v:.4f}" for k, v in vals.items()) or "no such metric at that step")]
    if step == 0:
        groups = store.step_groups(run_id, step, include_calls=True)
        calls = sum(len(g.get("calls") or []) for g in groups)
        out.append(verdict(not groups, "no judge calls during validation",
                           f"{len(groups)} groups and {calls} judge calls recorded at step 0"))
    return out


def smoke_config(model: str, work: Path, *, judge_overrides: list[str] | None = None):
    from engine.config import load_config

    return load_config(None, [
        "run.backend=verl", "run.name=gpu-smoke", f"run.store={work / 'ropd.db'}", "task.num_prompts=16",
        "scorer.k=2", f"teacher.index={work / 'teacher_index.jsonl'}", f"verl.model_path={model}",
        "verl.n_gpus_per_node=1", "verl.group_timeout_s=300", "templates.watch=false",
        "verl.overrides=[" + ", ".join(SMOKE_OVERRIDES + ["trainer.total_training_steps=2"]) + "]",
        *(judge_overrides or ["judge.mode=offline"])])


def with_total_steps(cfg, steps: int):
    from engine.config import build_config

    d = cfg.to_dict()
    d["verl"]["overrides"] = [o for o in d["verl"]["overrides"] if not o.startswith("trainer.total_training_steps=")]
    d["verl"]["overrides"].append(f"trainer.total_training_steps={steps}")
    return build_config(d, source="gpu smoke")


def run_smoke(model: str, *, work_dir: str | None = None, judge_overrides: list[str] | None = None,
              log=print) -> list[Check]:
    """Two real verl steps + a resume to step 3 (needs a GPU, verl and vLLM); returns the checks."""
    from engine.store import RunStore
    from engine.verl_backend import launcher

    work = Path(work_dir or tempfile.mkdtemp(prefix="ropd-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = smoke_config(model, work, judge_overrides=judge_overrides)
    store = RunStore(work / "ropd.db")
    try:
        run = store.create_run(f"gpu-smoke-{len(store.runs()) + 1}", "verl", cfg.to_dict())
        log(f"smoke run {run.name} in {work} (log lines follow)")
        checks: list[Check] = []
        rc = launcher.run(cfg, store, run, resume=False)
        checks.append(verdict(rc == 0, "two verl steps (train_batch_size 8, n 4, 256 tokens)", f"exit code {rc}"))
        if rc != 0:
            return checks + [failed("resume to step 3", "not tried: the first attempt failed")]
        checks += evaluate_validation(store, run.id, step=0, n=2)
        checks += evaluate_steps(store, run.id, steps=[1, 2], groups_per_step=8)
        checks += evaluate_validation(store, run.id, step=2, n=2)
        ckpt = launcher.latest_checkpoint(run.checkpoints_dir)
        checks.append(verdict(ckpt is not None and ckpt[1] == 2, "checkpoint at step 2",
                              f"{ckpt[0] if ckpt else 'none'} under {run.checkpoints_dir}"))
        resumed = with_total_steps(cfg, 3)
        rc = launcher.run(resumed, store, run, resume=True)
        steps = [s["step"] for s in store.steps(run.id)]
        checks.append(verdict(rc == 0 and steps[-1:] == [3] and 3 not in steps[:-1],
                              "resume continues at step 3", f"exit code {rc}, steps in the store {steps}"))
        if rc == 0:
            checks += evaluate_steps(store, run.id, steps=[3], groups_per_step=8)
        return checks
    except Exception as e:  # noqa: BLE001 - the report must still print
        return [failed("gpu smoke", f"{type(e).__name__}: {e}")]
    finally:
        store.close()
