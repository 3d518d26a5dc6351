"""The embedded trainer: GRPO (TRL's ``GRPOTrainer``) with the ROPD scorer as the reward.

Runs anywhere (CPU by default, one GPU if present), no vLLM. One optimizer step:

1. generate ``rollouts`` completions for each of ``prompts_per_step`` prompts (TRL; the completion
   mask ends at the first EOS, which matters for SmolLM2 whose pad token IS its EOS token);
2. score them: the TRL reward function groups the batch by prompt, builds one
   :class:`~engine.types.GroupInput` per prompt and calls :meth:`Scorer.score_batch_sync` ONCE for
   the whole batch (all groups judged concurrently);
3. update: GRPO with group-mean-centred advantages (Dr.GRPO style: ``scale_rewards="none"``).

Failed groups are LEFT OUT of the update, never given a fake 0: their reward is ``None`` (TRL turns it
into NaN, keeps it out of the group baseline and zeroes its advantage), and :class:`RopdGRPOTrainer`
additionally zeroes their completion mask, so they contribute nothing to the loss, its token
normaliser, the KL term or the logged entropy. A batch failing more groups than
``scorer.failure_threshold`` is recorded and stops the run (:class:`ScoringFailureRateError`).

Every step goes to the run store (:meth:`RunStore.write_step`) with the metrics listed in
:func:`step_metrics` and the scorer's groups (rubrics, verdicts, judge calls). Checkpoints land in
``<run_dir>/checkpoints/checkpoint-<step>`` every ``save_every`` steps and at the last step (the newest
``keep_checkpoints`` are kept); ``resume`` continues from the newest one at the next step.

With ``trainer.eval_every`` = N > 0 the policy answers the validation prompts greedily after every N-th
step and after the last one (:mod:`.evaluate`); ``val/accuracy``, ``val/response_length`` and
``time/eval`` are added to that step's metrics once its training row is written. A stop during the
evaluation aborts it (the step and its checkpoint are kept; only its validation numbers are missing).

Why subclass rather than use GRPOTrainer as is: TRL has no hook to drop rows from the loss mask
(a NaN reward only zeroes the advantage) and no split of the step time into generate / score / update.
Both are small overrides; generation, advantages, loss and optimisation stay TRL's.
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.config import Config
from engine.errors import ConfigError, ScoringFailureRateError
from engine.runs.heartbeat import Heartbeat
from engine.wording import plural
from engine.types import BatchResult, GroupInput, prompt_hash
from engine.trainers import data as task_data
from engine.trainers.evaluate import evaluate
from engine.trainers.model_cache import load_model_and_tokenizer, resolve_model_dir
from engine.trainers.token_progress import counting_forwards

CHECKPOINT_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class StopRequested(BaseException):
    """Raised (from the SIGTERM/SIGINT handler) to abort the current step. A BaseException so that no
    ``except Exception`` in a library swallows it."""


class StopControl:
    """Turns SIGTERM/SIGINT into a clean stop.

    While nothing has touched the weights yet (start-up, generation, scoring, forward/backward) the
    step is aborted at once; during the optimizer step, logging and checkpointing the stop waits for
    the next step boundary, so the store and the checkpoints always describe a whole step.
    """

    ABORTABLE = frozenset({"startup", "generate", "score", "update", "eval"})

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.phase = "startup"
        self.closed = False  # training is over: signals are only noted while the outcome is recorded

    def close(self) -> None:
        self.closed = True

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handler)
        signal.signal(signal.SIGINT, self._handler)

    def request(self, signum: int | None = None) -> None:
        self.requested = True
        self.signum = signum

    def _handler(self, signum, _frame) -> None:
        already = self.requested
        self.request(signum)
        if self.closed:
            return
        if self.phase in self.ABORTABLE or already:  # a second signal aborts whatever is going on
            raise StopRequested()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        if self.requested and not self.closed and phase in self.ABORTABLE:
            raise StopRequested()


@dataclass
class StepRecord:
    """What the reward function learnt about the current step, for the step's store row."""

    batch: BatchResult | None = None
    correct: list[bool | None] = field(default_factory=list)
    failed_rows: list[bool] | None = None
    timing: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "score": 0.0})
    started: float = 0.0
    cpu_started: float = 0.0
    step_s: float | None = None
    step_cpu_s: float | None = None  # process CPU seconds: a contention-robust cost measure
    logged_at: float | None = None


@dataclass
class TrainResult:
    status: str  # finished | stopped
    last_step: int
    message: str = ""


# ---------------------------------------------------------------------------------------------
# metrics

def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _std(xs: list[float]) -> float | None:
    if not xs:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def judge_metrics(batch: BatchResult) -> dict[str, float]:
    calls = [c for g in batch.groups for c in g.calls]
    failed = sum(g.status == "failed" for g in batch.groups)
    out: dict[str, float] = {
        "judge/failure_rate": batch.failure_rate,
        "judge/failed_groups": float(failed),
        "judge/calls": float(len(calls)),
        "judge/call_errors": float(sum(c.status != "ok" for c in calls)),
        "judge/batch_s": float(batch.wall_s),
    }
    lat = [c.latency_s for c in calls if c.latency_s is not None]
    if lat:
        out["judge/latency_s"] = sum(lat) / len(lat)
    pt = [c.prompt_tokens for c in calls if c.prompt_tokens is not None]
    ct = [c.completion_tokens for c in calls if c.completion_tokens is not None]
    if pt:
        out["judge/prompt_tokens"] = float(sum(pt))
    if ct:
        out["judge/completion_tokens"] = float(sum(ct))
    return out


# TRL log key -> our metric key
_TRL_KEYS = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "kl": "kl",
    "entropy": "entropy",
    "clip_ratio/region_mean": "clip_ratio",
    "completions/mean_length": "response_length/mean",
    "completions/clipped_ratio": "response_length/clipped_ratio",
    "frac_reward_zero_std": "frac_reward_zero_std",
}


def step_metrics(rec: StepRecord, trl_logs: dict[str, Any] | None = None, *, beta: float = 0.0) -> dict[str, float]:
    """The metrics of one step: rewards of non-failed groups, accuracy, TRL's loss statistics, the step
    time split and judge statistics."""
    m: dict[str, float] = {}
    if rec.batch is not None:
        student = [r for g in rec.batch.groups if g.status != "failed" for r in g.student_rewards if r is not None]
        teacher = [r for g in rec.batch.groups if g.status != "failed" for r in g.teacher_scores if r is not None]
        for key, val in (("reward/mean", _mean(student)), ("reward/std", _std(student)),
                         ("teacher_score/mean", _mean(teacher))):
            if val is not None:
                m[key] = val
        m.update(judge_metrics(rec.batch))
    known = [c for c in rec.correct if c is not None]
    if known:
        m["accuracy"] = sum(known) / len(known)
    for src, dst in _TRL_KEYS.items():
        v = (trl_logs or {}).get(src)
        if v is None or (dst == "kl" and beta == 0.0):
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(v):
            m[dst] = v
    gen, score = rec.timing.get("generate", 0.0), rec.timing.get("score", 0.0)
    m["time/generate"] = gen
    m["time/score"] = score
    if rec.step_s is not None:
        m["time/step"] = rec.step_s
        m["time/update"] = max(0.0, rec.step_s - gen - score)
    if rec.step_cpu_s is not None:
        m["time/step_cpu"] = rec.step_cpu_s
    if "generate_cpu" in rec.timing:
        m["time/generate_cpu"] = rec.timing["generate_cpu"]
    return m


def _memory_metrics() -> dict[str, float]:
    """Peak resident memory of the trainer process so far (and of the GPU when there is one)."""
    out: dict[str, float] = {}
    try:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        out["memory/peak_rss_gib"] = kib / 2**20
    except (ImportError, OSError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            out["memory/peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception:
        pass
    return out


# ---------------------------------------------------------------------------------------------
# checkpoints

def checkpoint_dir(run: Any) -> Path:
    """``<run_dir>/checkpoints`` (the supervisor moves it aside when a run restarts from scratch)."""
    return Path(run.run_dir) / CHECKPOINT_DIR


def latest_checkpoint(run: Any) -> Path | None:
    """The newest complete checkpoint (one with trainer_state.json) of the run, or None."""
    root = checkpoint_dir(run)
    if not root.is_dir():
        return None
    found = []
    for p in root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------
# the trainer

def _completion_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(str(m.get("content", "")) for m in c if isinstance(m, dict))
    return str(c)


class _DropUnscorableWarning:
    """TRL warns for every batch with an unscorable (None-reward) completion; failed groups are expected
    here and recorded in the store with their stage and cause, so the warning is noise."""

    def filter(self, record) -> bool:
        return "All reward functions returned None" not in record.getMessage()


def _quiet_trainer(trainer) -> None:
    """One progress line per step is ours; drop the Trainer's dict printing and progress bars."""
    import logging

    from transformers import PrinterCallback, ProgressCallback
    from transformers.utils import logging as hf_logging

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    hf_logging.disable_progress_bar()
    logging.getLogger("trl.trainer.grpo_trainer").addFilter(_DropUnscorableWarning())


def _make_trainer_class():
    import torch
    from trl import GRPOTrainer

    class RopdGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that leaves failed groups out of the loss and times generation."""

        ropd: "EmbeddedRun"

        def _generate(self, prompts):
            ropd = self.ropd
            ropd.heartbeat.phase("generate", step=ropd._current_step(), total=ropd.cfg.trainer.max_new_tokens,
                                 unit="tokens", detail=f"{len(prompts)} rollouts")
            ropd.stop.set_phase("generate")
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                with counting_forwards(self.accelerator.unwrap_model(self.model), ropd.heartbeat.advance):
                    return super()._generate(prompts)
            finally:
                timing = self.ropd.record.timing
                timing["generate"] += time.perf_counter() - t0
                timing["generate_cpu"] = timing.get("generate_cpu", 0.0) + time.process_time() - c0

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            failed = self.ropd.record.failed_rows
            if failed is not None and any(failed):
                mask = out["completion_mask"]
                keep = torch.tensor([not f for f in failed], dtype=mask.dtype, device=mask.device)
                out["completion_mask"] = mask * keep.unsqueeze(1)
                loss_mask = out["completion_mask"] if out.get("tool_mask") is None else out["completion_mask"] * out["tool_mask"]
                out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
                out["advantages"] = out["advantages"] * keep.to(out["advantages"].dtype)
            self.ropd.heartbeat.phase("update")
            self.ropd.stop.set_phase("update")
            return out

    return RopdGRPOTrainer


class EmbeddedRun:
    """One embedded training run bound to a run-store record."""

    def __init__(self, cfg: Config, store: Any, run: Any, *, resume: bool = False,
                 stop: StopControl | None = None, log: Callable[[str], None] | None = None,
                 scorer: Any = None):
        self.cfg = cfg
        self.store = store
        self.run = run
        self.resume = resume
        self.stop = stop or StopControl()
        self.log = log or (lambda msg: print(msg, flush=True))
        self.record = StepRecord()
        self.problems: dict[str, dict[str, Any]] = {}
        self.val_problems: list[dict[str, Any]] = []
        self._scorer = scorer
        self.templates = None
        self.trainer = None
        self.last_written_step = 0
        self.last_saved_step = 0
        self.heartbeat = Heartbeat(store, getattr(run, "id", None), total_steps=cfg.trainer.steps,
                                   no_progress_after_s=cfg.supervisor.no_progress_after_s)

    # -- setup --------------------------------------------------------------------------------------
    def _setup_torch(self) -> None:
        import torch

        threads = self.cfg.trainer.threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        torch.manual_seed(self.cfg.trainer.seed)

    def _load_problems(self) -> list[dict[str, Any]]:
        problems = task_data.load_problems(self.cfg)
        for p in problems:
            uid = prompt_hash(p["prompt"])[:16]
            self.problems.setdefault(uid, {**p, "uid": uid})
        if len(self.problems) < self.cfg.trainer.prompts_per_step:
            raise ConfigError(
                f"the task has {len(self.problems)} distinct prompts but trainer.prompts_per_step is "
                f"{self.cfg.trainer.prompts_per_step}",
                hint="lower trainer.prompts_per_step or give the task more prompts (task.num_prompts)")
        self.val_problems = task_data.load_validation_problems(self.cfg, problems)
        return problems

    def _build_scorer(self, problems):
        if self._scorer is not None:
            return self._scorer
        from engine.scoring.scorer import Scorer

        index = task_data.teacher_index_for(self.cfg, problems, log=self.log)
        self.templates = self._build_templates()
        return Scorer(self.cfg, teacher_index=index, templates=self.templates)

    def _build_templates(self):
        try:
            from engine.templates.watched import TemplateSet
        except ImportError:  # pragma: no cover - the scorer falls back to static templates
            return None
        ts = TemplateSet(self.cfg, self.store, self.run.id)
        if self.cfg.templates.watch:
            ts.start()
        return ts

    def _dataset(self):
        from datasets import Dataset

        rows = [{"prompt": task_data.chat_messages(p["prompt"], self.cfg.task.system_prompt), "uid": uid}
                for uid, p in self.problems.items()]
        return Dataset.from_list(rows)

    def _grpo_args(self, output_dir: Path):
        import torch
        from trl import GRPOConfig

        t = self.cfg.trainer
        batch = t.prompts_per_step * t.rollouts
        return GRPOConfig(
            output_dir=str(output_dir),
            max_steps=t.steps,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=1,
            num_generations=t.rollouts,
            generation_batch_size=batch,
            max_completion_length=t.max_new_tokens,
            temperature=t.temperature,
            top_p=t.top_p,
            learning_rate=t.learning_rate,
            lr_scheduler_type="constant",
            warmup_steps=0,
            beta=t.beta,
            scale_rewards=t.scale_rewards,
            loss_type=t.loss_type,
            num_iterations=1,
            gradient_checkpointing=t.gradient_checkpointing,  # TRL's default is True: recomputes the forward
            logging_steps=1,
            save_strategy="steps",
            save_steps=t.save_every,
            save_total_limit=max(1, t.keep_checkpoints),
            report_to="none",
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            bf16=t.bf16,
            seed=t.seed,
            data_seed=t.seed,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            log_completions=False,
            use_vllm=False,
        )

    # -- reward ---------------------------------------------------------------------------------------
    def reward_fn(self) -> Callable[..., list[float | None]]:
        def ropd_rubric_reward(prompts, completions, uid=None, completion_ids=None, **_kw) -> list[float | None]:
            return self._score(completions, uid, completion_ids)

        return ropd_rubric_reward

    def _clipped(self, completion_ids: list[Any] | None, n_texts: int) -> list[bool | None]:
        """Per completion: cut at ``max_new_tokens`` (no EOS before the limit); None when unknown."""
        if not completion_ids or len(completion_ids) != n_texts:
            return [None] * n_texts
        limit = self.cfg.trainer.max_new_tokens
        eos = set(getattr(self.trainer, "eos_token_ids", None) or [])
        out: list[bool | None] = []
        for ids in completion_ids:
            ids = list(ids.tolist() if hasattr(ids, "tolist") else ids)
            out.append(len(ids) >= limit and (not eos or ids[-1] not in eos))
        return out

    def _score(self, completions: list[Any], uids: list[str] | None,
               completion_ids: list[Any] | None = None) -> list[float | None]:
        from engine.tasks import check_answer

        n = self.cfg.trainer.rollouts
        texts = [_completion_text(c) for c in completions]
        self.heartbeat.phase("score", step=self._current_step(), total=len(texts) // max(1, n), unit="groups")
        self.stop.set_phase("score")
        if not uids or len(uids) != len(texts) or len(texts) % n:
            raise RuntimeError(f"reward batch has {len(texts)} completions and {len(uids or [])} uids; "
                               f"expected a multiple of trainer.rollouts={n}")
        clipped = self._clipped(completion_ids, len(texts))
        groups: list[GroupInput] = []
        for start in range(0, len(texts), n):
            uid = uids[start]
            if any(u != uid for u in uids[start:start + n]):
                raise RuntimeError("a reward batch mixes prompts inside one group of rollouts")
            prob = self.problems[uid]
            groups.append(GroupInput(prompt=prob["prompt"], rollouts=texts[start:start + n],
                                     ground_truth=prob.get("ground_truth"), uid=uid,
                                     clipped=clipped[start:start + n],
                                     meta={"data_source": prob.get("data_source"),
                                           "step": self._current_step()}))
        if self.templates is not None:
            self.templates.step = self._current_step()
        t0 = time.perf_counter()
        batch = self.scorer.score_batch_sync(groups, on_group_done=lambda done, _total: self.heartbeat.advance(done))
        self.record.timing["score"] += time.perf_counter() - t0
        rewards: list[float | None] = [None] * len(texts)
        for gi, g in enumerate(batch.groups):
            sr = g.student_rewards
            for j in range(n):
                r = sr[j] if g.status != "failed" and j < len(sr) else None
                rewards[gi * n + j] = None if r is None or math.isnan(r) else float(r)
        self.record.batch = batch
        self.record.failed_rows = [r is None for r in rewards]
        self.record.correct = [
            check_answer(text, g.ground_truth) if g.ground_truth not in (None, "") else None
            for g in groups for text in g.rollouts
        ]
        try:
            self.scorer.check_failure_rate(batch)
        except ScoringFailureRateError:
            self._write_aborted_step(batch)
            raise
        self.heartbeat.phase("update")
        self.stop.set_phase("update")
        return rewards

    def _current_step(self) -> int:
        return (self.trainer.state.global_step + 1) if self.trainer is not None else 1

    def _write_aborted_step(self, batch: BatchResult) -> None:
        """A batch over the failure threshold: record it (no update happened) so the user sees why."""
        step = self._current_step()
        metrics = step_metrics(self.record, None)
        metrics.pop("time/update", None)
        self.store.write_step(self.run.id, step, metrics, batch.groups)
        self.store.add_event(self.run.id, "scoring_failed",
                             f"step {step}: {sum(g.status == 'failed' for g in batch.groups)} of "
                             f"{len(batch.groups)} groups failed; no update was made", step=step)

    # -- callbacks ------------------------------------------------------------------------------------
    def _callback(self):
        from transformers import TrainerCallback

        run = self

        class _StoreCallback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                run.heartbeat.phase("generate", step=state.global_step + 1)
                run.stop.set_phase("step")
                if run.stop.requested:
                    raise StopRequested()
                run.record = StepRecord(started=time.perf_counter(), cpu_started=time.process_time())

            def on_pre_optimizer_step(self, args, state, control, **kw):
                run.stop.set_phase("optimizer")

            def on_step_end(self, args, state, control, **kw):
                run.stop.set_phase("log")
                run.record.step_s = time.perf_counter() - run.record.started
                run.record.step_cpu_s = time.process_time() - run.record.cpu_started
                if state.global_step >= state.max_steps or run.stop.requested:
                    control.should_save = True  # the last step (or a stop) is always checkpointed
                if run.stop.requested:
                    control.should_training_stop = True

            def on_log(self, args, state, control, logs=None, **kw):
                logs = logs or {}
                if "train_runtime" in logs or state.global_step <= run.last_written_step:
                    return
                run._write_step(state.global_step, logs)
                if run._eval_due(state.global_step):
                    run._evaluate(state.global_step)
                if control.should_save:  # the Trainer saves right after this log
                    run.heartbeat.phase("save", step=state.global_step)

            def on_save(self, args, state, control, **kw):
                run.last_saved_step = state.global_step
                if run.record.logged_at is not None:  # the save follows the step's log directly
                    run.store.write_metrics(run.run.id, state.global_step,
                                            {"time/checkpoint": time.perf_counter() - run.record.logged_at})
                path = checkpoint_dir(run.run) / f"checkpoint-{state.global_step}"
                run.store.add_event(run.run.id, "checkpoint", f"checkpoint saved at step {state.global_step}",
                                    step=state.global_step, data={"path": str(path)})

        return _StoreCallback()

    def _write_step(self, step: int, logs: dict[str, Any]) -> None:
        rec = self.record
        metrics = step_metrics(rec, logs, beta=self.cfg.trainer.beta)
        metrics.update(_memory_metrics())
        groups = rec.batch.groups if rec.batch is not None else []
        self.store.write_step(self.run.id, step, metrics, groups)
        self.last_written_step = step
        rec.logged_at = time.perf_counter()
        self.log(self._progress_line(step, metrics))

    def _eval_due(self, step: int) -> bool:
        every = self.cfg.trainer.eval_every
        return bool(self.val_problems) and every > 0 and (step % every == 0 or step >= self.cfg.trainer.steps)

    def _evaluate(self, step: int) -> None:
        """Greedy validation accuracy of the policy after ``step``, added to the step's metrics."""
        tr, t = self.trainer, self.cfg.trainer
        hb = self.heartbeat
        hb.phase("eval", step=step, total=len(self.val_problems), unit="prompts")
        self.stop.set_phase("eval")

        def progress(done: int, tokens: int) -> None:
            hb.advance(done, detail=f"token {tokens}/{t.max_new_tokens}" if tokens else "")

        result = evaluate(tr.accelerator.unwrap_model(tr.model), tr.processing_class, self.val_problems,
                          system_prompt=self.cfg.task.system_prompt, max_new_tokens=t.max_new_tokens,
                          batch_size=t.prompts_per_step * t.rollouts,
                          eos_token_ids=getattr(tr, "eos_token_ids", None), progress=progress)
        self.stop.set_phase("log")
        metrics = result.metrics()
        self.store.write_metrics(self.run.id, step, metrics)
        self.record.logged_at = time.perf_counter()  # time/checkpoint leaves the evaluation out
        self.log(f"eval after step {step}: val accuracy {metrics['val/accuracy']:.3f} "
                 f"({sum(result.correct)}/{len(result.correct)} held-out prompts, greedy)  "
                 f"mean length {metrics['val/response_length']:.1f} tokens  {result.seconds:.1f} s")

    def _progress_line(self, step: int, m: dict[str, float]) -> str:
        def f(key, fmt="{:.3f}"):
            return fmt.format(m[key]) if key in m else "-"

        failed = int(m.get("judge/failed_groups", 0))
        total = len(self.record.batch.groups) if self.record.batch is not None else 0
        return (f"step {step}/{self.cfg.trainer.steps}  reward {f('reward/mean')}  accuracy {f('accuracy')}  "
                f"loss {f('loss', '{:.4f}')}  judge failures {failed}/{total}  "
                f"{f('time/step', '{:.1f}')} s/step (generate {f('time/generate', '{:.1f}')}, "
                f"score {f('time/score', '{:.1f}')}, update {f('time/update', '{:.1f}')})")

    # -- main -----------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Train until ``trainer.steps`` (or a stop request). Raises UserError subclasses for user
        problems and :class:`StopRequested` only from inside; a stop returns status "stopped"."""
        self.heartbeat.start()
        try:
            return self._train()
        except StopRequested:
            self.stop.close()
            self._save_after_stop()
            step = self.trainer.state.global_step if self.trainer is not None else 0
            return TrainResult("stopped", step, f"stopped after step {step}")
        finally:
            self.stop.close()
            self.heartbeat.close()
            if self.templates is not None:
                try:
                    self.templates.stop()
                except Exception:
                    pass

    def _train(self) -> TrainResult:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self._setup_torch()
        t = self.cfg.trainer
        problems = self._load_problems()
        self.scorer = self._build_scorer(problems)
        if self.cfg.judge_is_llm() and hasattr(self.scorer, "preflight_sync"):
            self.scorer.preflight_sync()  # a dead judge fails here (JudgeError), before the model loads
        model_dir = resolve_model_dir(t.model, log=self.log)
        self.log(f"loading the policy from {model_dir}")
        model, tok = load_model_and_tokenizer(model_dir)
        ckpt_root = checkpoint_dir(self.run)
        ckpt_root.mkdir(parents=True, exist_ok=True)
        resume_from = latest_checkpoint(self.run) if self.resume else None
        if self.resume and resume_from is None:
            self.log("no checkpoint to resume from: starting from step 1")
        cls = _make_trainer_class()
        cls.ropd = self
        self.trainer = cls(model=model, reward_funcs=[self.reward_fn()], args=self._grpo_args(ckpt_root),
                           train_dataset=self._dataset(), processing_class=tok, callbacks=[self._callback()])
        self.trainer.ropd = self
        _quiet_trainer(self.trainer)
        if resume_from is not None:
            done = int(_CKPT_RE.match(resume_from.name).group(1))
            self.last_written_step = self.last_saved_step = done
            self.log(f"resuming from {resume_from} (step {done} done; continuing at step {done + 1})")
        # (the supervisor records "started"/"resumed" itself; these say what the trainer actually did)
        self.store.add_event(
            self.run.id, "checkpoint_loaded" if resume_from is not None else "trainer_started",
            f"embedded trainer: {plural(t.steps, 'step')} of {plural(t.prompts_per_step, 'prompt')} x "
            f"{plural(t.rollouts, 'rollout')}"
            + (f", continuing from {resume_from.name}" if resume_from is not None else ""),
            step=self.last_saved_step or None,
            data={"model": str(model_dir), "checkpoints": str(ckpt_root), "judge": "llm" if self.cfg.judge_is_llm() else "offline"})
        self.stop.set_phase("startup")
        self.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = self.trainer.state.global_step
        if self.stop.requested:
            return TrainResult("stopped", step, f"stopped after step {step}")
        return TrainResult("finished", step, f"finished {plural(step, 'step')}")

    def _save_after_stop(self) -> None:
        """After an aborted step the weights are those of the last completed step: checkpoint them if
        that step has no checkpoint yet, so resume loses nothing."""
        tr = self.trainer
        if tr is None or tr.state.global_step <= self.last_saved_step or self.stop.phase not in StopControl.ABORTABLE | {"step"}:
            return
        self.stop.phase = "save"
        self.heartbeat.phase("save", step=tr.state.global_step)
        try:
            tr._save_checkpoint(tr.model, trial=None)
            step = self.last_saved_step = tr.state.global_step
            self.log(f"checkpoint saved at step {step}")
            self.store.add_event(self.run.id, "checkpoint", f"checkpoint saved at step {step} (on stop)", step=step,
                                 data={"path": str(checkpoint_dir(self.run) / f"checkpoint-{step}")})
        except Exception as err:  # a failed save must not hide the stop
            self.log(f"could not save a checkpoint after the stop: {err}")


def run(cfg: Config, store: Any, run: Any, resume: bool = False, *, stop: StopControl | None = None,
        log: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``run`` (a store RunRecord) with the embedded backend."""
    return EmbeddedRun(cfg, store, run, resume=resume, stop=stop, log=log).train()
