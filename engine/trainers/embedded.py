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
normaliser, the KL term or the logged entropy. The same holds for a single rollout left without a
reward inside a scored group. A step in which no rollout was scored makes no optimizer update (its
gradients are dropped, so AdamW neither moves the weights nor its moments), whatever
``scorer.failure_threshold`` says; it is stored with ``update/skipped`` = 1 and a ``step_skipped``
event. A batch whose unscored share passes ``scorer.failure_threshold`` is recorded and stops the run
(:class:`ScoringFailureRateError`). Per-row statistics (failure rate, response length, clipped ratio,
zero-spread fraction) count scored rows only (:func:`scored_row_metrics`).

The hooks and batch keys the subclass relies on are checked against the installed TRL at preflight
and at start (:mod:`.trl_compat`), so a TRL release that renames them fails with the supported range
named instead of silently training with failed rows back in the loss.

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
from engine.scoring.signal import learning_signal
from engine.runs.heartbeat import Heartbeat
from engine.wording import plural
from engine.types import BatchResult, GroupInput, prompt_hash
from engine.trainers import data as task_data
from engine.trainers.evaluate import evaluate
from engine.trainers.model_cache import load_model_and_tokenizer, resolve_model_dir
from engine.trainers.trl_compat import check_trl
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
    rewards: list[float | None] | None = None  # one per rollout (row), None = unscored
    failed_rows: list[bool] | None = None  # rows left out of the update (reward None)
    completion_lengths: list[int] | None = None  # generated tokens per row
    truncated: list[bool] | None = None  # per row: hit max_new_tokens without an EOS
    skipped: bool = False  # no row was scored: the step makes no optimizer update
    timing: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "score": 0.0})
    started: float = 0.0
    cpu_started: float = 0.0
    step_s: float | None = None
    step_cpu_s: float | None = None  # process CPU seconds: a contention-robust cost measure
    logged_at: float | None = None


@dataclass
class TrainResult:
    status: str  # finished | stopped | budget (judge.budget_usd reached; checkpointed, resumable)
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
    cached = [c.cached_prompt_tokens for c in calls if c.cached_prompt_tokens is not None]
    if pt:
        out["judge/prompt_tokens"] = float(sum(pt))
    if ct:
        out["judge/completion_tokens"] = float(sum(ct))
    if cached:
        out["judge/cached_prompt_tokens"] = float(sum(cached))
    return out


# TRL log key -> our metric key. Only statistics TRL computes under the loss mask (which leaves failed
# rows out) are taken; TRL's completion lengths, clipped ratio and zero-spread fraction count every row,
# so those are computed here over the scored rows (:func:`scored_row_metrics`).
_TRL_KEYS = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "kl": "kl",
    "entropy": "entropy",
    "clip_ratio/region_mean": "clip_ratio",
}
# meaningless for a step that made no update (an empty loss mask gives zeros)
_UPDATE_KEYS = frozenset({"loss", "grad_norm", "kl", "entropy", "clip_ratio"})


def row_rewards(batch: BatchResult, n: int) -> list[float | None]:
    """One reward per rollout row (``n`` rows per group, in batch order): None for every row of a failed
    group and for any row its scored group left without a finite reward (never a silent 0)."""
    rewards: list[float | None] = []
    for g in batch.groups:
        sr = g.student_rewards
        for j in range(n):
            r = sr[j] if g.status != "failed" and j < len(sr) else None
            rewards.append(None if r is None or math.isnan(r) else float(r))
    return rewards


def scored_row_metrics(rec: StepRecord, n: int) -> dict[str, float]:
    """Failure counts over rows and the per-row statistics over scored rows only: the share of rows
    without a reward (``judge/failure_rate``, which counts a None reward inside an otherwise scored
    group too), response length and clipped ratio of the scored rows, and the fraction of groups with
    scored rows whose rewards do not spread (no learning signal)."""
    rewards = rec.rewards
    if not rewards:
        return {}
    scored = [r is not None for r in rewards]
    out: dict[str, float] = {
        "judge/failure_rate": 1.0 - sum(scored) / len(rewards),
        "judge/unscored_rollouts": float(len(rewards) - sum(scored)),
    }
    groups = [[r for r in rewards[i:i + n] if r is not None] for i in range(0, len(rewards), n)] if n > 0 else []
    groups = [g for g in groups if g]
    if groups:
        out["frac_reward_zero_std"] = sum(max(g) - min(g) <= 1e-9 for g in groups) / len(groups)
    if rec.completion_lengths is not None and len(rec.completion_lengths) == len(rewards):
        lengths = [float(x) for x, ok in zip(rec.completion_lengths, scored) if ok]
        if lengths:
            out["response_length/mean"] = sum(lengths) / len(lengths)
    if rec.truncated is not None and len(rec.truncated) == len(rewards):
        clipped = [t for t, ok in zip(rec.truncated, scored) if ok]
        if clipped:
            out["response_length/clipped_ratio"] = sum(clipped) / len(clipped)
    return out


def step_metrics(rec: StepRecord, trl_logs: dict[str, Any] | None = None, *, beta: float = 0.0,
                 rollouts: int = 0) -> dict[str, float]:
    """The metrics of one step: rewards of non-failed groups, accuracy, TRL's loss statistics, the step
    time split, judge statistics and the per-row statistics over scored rows (``rollouts`` rows per
    group). ``update/skipped`` is 1 for a step that made no update because nothing was scored."""
    m: dict[str, float] = {}
    if rec.batch is not None:
        student = [r for g in rec.batch.groups if g.status != "failed" for r in g.student_rewards if r is not None]
        teacher = [r for g in rec.batch.groups if g.status != "failed" for r in g.teacher_scores if r is not None]
        for key, val in (("reward/mean", _mean(student)), ("reward/std", _std(student)),
                         ("teacher_score/mean", _mean(teacher))):
            if val is not None:
                m[key] = val
        m.update(judge_metrics(rec.batch))
    m.update(scored_row_metrics(rec, rollouts))
    known = [c for c in rec.correct if c is not None]
    if known:
        m["accuracy"] = sum(known) / len(known)
    m["update/skipped"] = 1.0 if rec.skipped else 0.0
    for src, dst in _TRL_KEYS.items():
        v = (trl_logs or {}).get(src)
        if v is None or (dst == "kl" and beta == 0.0) or (rec.skipped and dst in _UPDATE_KEYS):
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


def rollout_correctness(batch: BatchResult, rollouts: int) -> list[bool | None]:
    """Per rollout, in batch order, the correctness the scorer's checker recorded (None: no ground truth,
    or unknown)."""
    out: list[bool | None] = []
    for g in batch.groups:
        by_index = {a.index: a.correct for a in g.student_answers}
        out.extend(by_index.get(j) for j in range(rollouts))
    return out


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


def discard_incomplete_checkpoints(run: Any) -> list[tuple[str, int]]:
    """Remove what an interrupted save left in the checkpoints folder: ``checkpoint-N`` folders without
    ``trainer_state.json`` (the Trainer writes it last) and stray temporary files. Returns (name,
    bytes) of each. Left in place they would hold disk space for good, and the Trainer's rotation
    counts them as checkpoints (keeping a broken one, deleting a good one)."""
    import shutil

    root = checkpoint_dir(run)
    if not root.is_dir():
        return []
    gone = []
    for p in sorted(root.iterdir()):
        incomplete = (p.is_dir() and _CKPT_RE.match(p.name) and not (p / "trainer_state.json").is_file()) or \
            p.name.startswith("tmp-checkpoint-") or p.suffix in (".tmp", ".part")
        if not incomplete:
            continue
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            continue
        gone.append((p.name, size))
    return gone


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


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


def _completion_stats(out: dict[str, Any], eos_and_pad: set[int]) -> tuple[list[int], list[bool]]:
    """Generated tokens per row and whether each row was cut at ``max_new_tokens`` (its last token is no
    EOS or pad), from TRL's batch before any row is masked, as TRL counts them in ``_generate``."""
    mask, ids = out["completion_mask"], out["completion_ids"]
    tool = out.get("tool_mask")
    lengths = (mask if tool is None else mask * tool).sum(dim=1).tolist()
    ends = mask.sum(dim=1).tolist()  # completion_mask covers a row's tokens, right-padded
    truncated = [bool(e) and int(ids[i, int(e) - 1]) not in eos_and_pad for i, e in enumerate(ends)]
    return [int(x) for x in lengths], truncated


def _make_trainer_class():
    import torch
    from trl import GRPOTrainer

    check_trl(GRPOTrainer)  # the hooks below exist with these signatures and batch keys, or a clear error

    class RopdGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that leaves failed groups out of the loss, makes no update for a step with nothing
        scored, and times generation."""

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
            rec = self.ropd.record
            rec.completion_lengths, rec.truncated = _completion_stats(out, self._eos_and_pad())
            mask = out["completion_mask"]
            failed = rec.failed_rows if rec.failed_rows is not None else [False] * mask.size(0)
            keep = torch.tensor([not f for f in failed], dtype=mask.dtype, device=mask.device)
            out["completion_mask"] = mask * keep.unsqueeze(1)
            loss_mask = out["completion_mask"] if out.get("tool_mask") is None else out["completion_mask"] * out["tool_mask"]
            # The token normaliser of the dapo loss, recounted without the failed rows. Recounted on EVERY
            # step, not only when a row failed: the gather is a collective call, and processes that skipped
            # it while another one made it would hang or disagree. The embedded trainer runs in one process
            # (EmbeddedRun checks it at start); this keeps the step correct if that ever changes.
            out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
            out["advantages"] = out["advantages"] * keep.to(out["advantages"].dtype)
            self.ropd.heartbeat.phase("update")
            self.ropd.stop.set_phase("update")
            return out

        def training_step(self, model, inputs, num_items_in_batch):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if self.ropd.record.skipped:
                # Nothing was scored: the loss and gradients are 0, but an optimizer step would still move
                # the weights (AdamW's momentum) and its moments. Torch optimizers leave a parameter whose
                # .grad is None untouched, so dropping the gradients makes the optimizer step a no-op.
                # (One micro-batch per step: gradient_accumulation_steps=1, one generation per step.)
                model.zero_grad(set_to_none=True)
            return loss

        def _eos_and_pad(self) -> set[int]:
            ids = set(getattr(self, "eos_token_ids", None) or [])
            tok = getattr(self.processing_class, "tokenizer", self.processing_class)
            for tid in (getattr(tok, "eos_token_id", None), getattr(tok, "pad_token_id", None)):
                if isinstance(tid, int):
                    ids.add(tid)
            return ids

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
        self._progress_writer = None  # judge progress -> <run dir>/progress.json (for `train`)
        self.budget_reason: str | None = None
        self.mirror = None  # engine.tracking.mirror.TrackerMirror when tracking.backends names any
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

    def _checker(self):
        """The scorer's answer checker (the task's, ``task.checker``), for validation accuracy."""
        checker = getattr(self.scorer, "checker", None)
        if checker is None:
            from engine.tasks.checker_pool import checker_for

            checker = checker_for(self.cfg.task)
        return checker

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

    def _score_tracked(self, groups: list[GroupInput], on_group_done=None):
        """Score the step's groups with judge progress counted and written to the run folder
        (``progress.json``, read by ``ropd-tui --headless train``)."""
        from engine.progress import PROGRESS_FILE, JudgeProgress, SnapshotWriter, tracking

        run_dir = getattr(self.run, "run_dir", None)
        if self._progress_writer is None and run_dir is not None:
            self._progress_writer = SnapshotWriter(Path(run_dir) / PROGRESS_FILE)
        prog = JudgeProgress(f"step {self._current_step()} judging", len(groups))
        if self._progress_writer is not None:
            self._progress_writer.watch(prog)
        try:
            with tracking(prog):
                return self.scorer.score_batch_sync(groups, on_group_done=on_group_done)
        finally:
            prog.finish()
            if self._progress_writer is not None:
                self._progress_writer.watch(prog)

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
        batch = self._score_tracked(groups, on_group_done=lambda done, _total: self.heartbeat.advance(done))
        self.record.timing["score"] += time.perf_counter() - t0
        rewards = row_rewards(batch, n)
        self.record.batch = batch
        self.record.rewards = rewards
        self.record.failed_rows = [r is None for r in rewards]
        self.record.skipped = all(r is None for r in rewards)
        self.record.correct = rollout_correctness(batch, n)
        try:
            self.scorer.check_failure_rate(batch)
            self._check_unscored_rows(batch, rewards)
        except ScoringFailureRateError:
            self._write_aborted_step(batch)
            raise
        self.heartbeat.phase("update")
        self.stop.set_phase("update")
        return rewards

    def _check_unscored_rows(self, batch: BatchResult, rewards: list[float | None]) -> None:
        """The scorer checks failed groups against ``scorer.failure_threshold``; a rollout left without a
        reward inside a scored group is left out of the update too, so the threshold applies to the share
        of all unscored rollouts (the ``judge/failure_rate`` the step reports)."""
        unscored = sum(r is None for r in rewards)
        rate = unscored / len(rewards) if rewards else 0.0
        threshold = self.cfg.scorer.failure_threshold
        if rate > threshold:
            n = self.cfg.trainer.rollouts
            in_failed = sum(n for g in batch.groups if g.status == "failed")
            raise ScoringFailureRateError(
                f"{unscored} of {len(rewards)} rollouts have no reward ({rate:.0%}, above "
                f"scorer.failure_threshold={threshold:g}); {unscored - in_failed} of them in groups that "
                "otherwise scored",
                hint="look at those groups' verdicts in the store (rubric inspector, or export --what verdicts), "
                     "or raise scorer.failure_threshold")

    def _current_step(self) -> int:
        return (self.trainer.state.global_step + 1) if self.trainer is not None else 1

    def _write_aborted_step(self, batch: BatchResult) -> None:
        """A batch over the failure threshold: record it (no update happened) so the user sees why."""
        step = self._current_step()
        metrics = step_metrics(self.record, None, rollouts=self.cfg.trainer.rollouts)
        metrics.pop("time/update", None)
        metrics["update/skipped"] = 1.0
        self.store.write_step(self.run.id, step, metrics, batch.groups)
        self.store.add_event(self.run.id, "scoring_failed",
                             f"step {step}: {sum(g.status == 'failed' for g in batch.groups)} of "
                             f"{len(batch.groups)} groups failed; no update was made", step=step)
        self._mirror()

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
                if state.global_step < state.max_steps and run._check_budget(state.global_step):
                    control.should_save = True  # checkpointed right after this log, then training stops
                    control.should_training_stop = True
                if control.should_save:  # the Trainer saves right after this log
                    run.heartbeat.phase("save", step=state.global_step)

            def on_save(self, args, state, control, **kw):
                run.last_saved_step = state.global_step
                if run.record.logged_at is not None:  # the save follows the step's log directly
                    run.store.write_metrics(run.run.id, state.global_step,
                                            {"time/checkpoint": time.perf_counter() - run.record.logged_at})
                    run._mirror()
                path = checkpoint_dir(run.run) / f"checkpoint-{state.global_step}"
                run.store.add_event(run.run.id, "checkpoint", f"checkpoint saved at step {state.global_step}",
                                    step=state.global_step, data={"path": str(path)})

        return _StoreCallback()

    def _write_step(self, step: int, logs: dict[str, Any]) -> None:
        rec = self.record
        metrics = step_metrics(rec, logs, beta=self.cfg.trainer.beta, rollouts=self.cfg.trainer.rollouts)
        metrics.update(_memory_metrics())
        groups = rec.batch.groups if rec.batch is not None else []
        self.store.write_step(self.run.id, step, metrics, groups)
        if rec.skipped:
            failed = sum(g.status == "failed" for g in groups)
            self.store.add_event(self.run.id, "step_skipped",
                                 f"step {step}: no rollout was scored ({failed} of {len(groups)} groups failed); "
                                 "no update was made", step=step)
        self.last_written_step = step
        rec.logged_at = time.perf_counter()
        self.log(self._progress_line(step, metrics))
        flat = learning_signal(groups)
        if flat is not None:
            self.store.add_event(self.run.id, "no_signal", flat.message(step), step=step, data=flat.data())
            self.log(f"warning: {flat.message(step)}")
        self._mirror()

    def _mirror(self) -> None:
        """Send what the store just got to the experiment trackers (the store stays the source)."""
        if self.mirror is not None:
            self.mirror.sync()

    def _check_budget(self, step: int) -> bool:
        """Whether the next step would take the run's judge cost past ``judge.budget_usd``."""
        from engine.judging.cost import run_budget_reason

        reason = run_budget_reason(self.store, self.run.id, self.cfg.judge.budget_usd, step)
        if reason is None:
            return False
        self.budget_reason = reason
        self.log(f"{reason}: stopping after a checkpoint")
        self.store.add_event(self.run.id, "budget_reached", reason, step=step,
                             data={"budget_usd": self.cfg.judge.budget_usd})
        return True

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
                          eos_token_ids=getattr(tr, "eos_token_ids", None), checker=self._checker(),
                          progress=progress)
        self.stop.set_phase("log")
        metrics = result.metrics()
        self.store.write_metrics(self.run.id, step, metrics)
        self._mirror()
        self.record.logged_at = time.perf_counter()  # time/checkpoint leaves the evaluation out
        self.log(f"eval after step {step}: val accuracy {metrics['val/accuracy']:.3f} "
                 f"({sum(result.correct)}/{len(result.correct)} held-out prompts, greedy)  "
                 f"mean length {metrics['val/response_length']:.1f} tokens  {result.seconds:.1f} s")

    def _progress_line(self, step: int, m: dict[str, float]) -> str:
        def f(key, fmt="{:.3f}"):
            return fmt.format(m[key]) if key in m else "-"

        failed = int(m.get("judge/failed_groups", 0))
        total = len(self.record.batch.groups) if self.record.batch is not None else 0
        loss = "- (no update: nothing scored)" if self.record.skipped else f('loss', '{:.4f}')
        return (f"step {step}/{self.cfg.trainer.steps}  reward {f('reward/mean')}  accuracy {f('accuracy')}  "
                f"loss {loss}  judge failures {failed}/{total}  "
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
            if self.mirror is not None:
                self.mirror.close()

    def _train(self) -> TrainResult:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self._setup_torch()
        t = self.cfg.trainer
        problems = self._load_problems()
        trl_note = check_trl()  # before the judge and the model: an unsupported TRL fails in a second
        if "outside the tested range" in trl_note:
            self.log(trl_note)
        from engine.tracking.mirror import TrackerMirror

        self.mirror = TrackerMirror.for_run(self.cfg, self.store, self.run, log=self.log)  # missing package: ConfigError
        self.scorer = self._build_scorer(problems)
        if self.cfg.judge_is_llm() and hasattr(self.scorer, "preflight_sync"):
            self.scorer.preflight_sync()  # a dead judge fails here (JudgeError), before the model loads
        model_dir = resolve_model_dir(t.model, log=self.log)
        self.log(f"loading the policy from {model_dir}")
        model, tok = load_model_and_tokenizer(model_dir)
        ckpt_root = checkpoint_dir(self.run)
        ckpt_root.mkdir(parents=True, exist_ok=True)
        discarded = discard_incomplete_checkpoints(self.run)
        if discarded:
            what = ", ".join(f"{name} ({_mb(size)})" for name, size in discarded)
            msg = f"discarded incomplete checkpoint(s) left by an interrupted save: {what}"
            self.log(msg)
            self.store.add_event(self.run.id, "checkpoint_discarded", msg,
                                 data={"discarded": [name for name, _ in discarded]})
        resume_from = latest_checkpoint(self.run) if self.resume else None
        if self.resume and resume_from is None:
            self.log("no complete checkpoint to resume from" +
                     (f" (the incomplete {', '.join(n for n, _ in discarded)} was discarded)" if discarded else "")
                     + ": starting from step 1")
        cls = _make_trainer_class()
        cls.ropd = self
        self.trainer = cls(model=model, reward_funcs=[self.reward_fn()], args=self._grpo_args(ckpt_root),
                           train_dataset=self._dataset(), processing_class=tok, callbacks=[self._callback()])
        self.trainer.ropd = self
        if self.trainer.accelerator.num_processes != 1:
            # every process would score, store and checkpoint the same step (and rank-local masks would
            # have to agree): the embedded backend is one process on CPU or one GPU
            raise ConfigError(f"the embedded trainer runs in one process, but {self.trainer.accelerator.num_processes} "
                              "were started (torchrun / accelerate launch)",
                              hint="start it with ropd-tui (one process), or use run.backend=verl for several GPUs")
        _quiet_trainer(self.trainer)
        if resume_from is not None:
            done = int(_CKPT_RE.match(resume_from.name).group(1))
            self.last_written_step = self.last_saved_step = done
            self.log(f"resuming from {resume_from} (step {done} done; continuing at step {done + 1})")
        if resume_from is not None and self._check_budget(self.last_saved_step):
            # resumed without raising judge.budget_usd: not one more step past it
            return TrainResult("budget", self.last_saved_step, self.budget_reason or "")
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
        if self.budget_reason is not None:
            return TrainResult("budget", step, self.budget_reason)
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
