"""Gathering a prompt's n rollouts (which verl hands out one at a time) into one scored group.

verl's reward loop calls ``run_single`` once per rollout, spread over several reward workers that may
sit on other nodes. ROPD needs all n rollouts of a prompt in ONE rubricator call, so every reward
worker forwards its rollout to one named async Ray actor per run (:class:`GroupGatherer`, looked up by
name and namespace from any node). The actor collects rollouts by ``uid`` until n have arrived, scores
the group with the engine :class:`~engine.scoring.scorer.Scorer`, resolves every waiting rollout with its own
reward, and appends the :class:`~engine.types.GroupResult` to the run's side-channel file.

A group whose rollouts do not all arrive within ``group_timeout_s`` (counted from its first rollout),
or whose scoring takes longer than that, fails: every rollout gets reward 0 with ``failed=True`` and the
failed group (stage ``scorer``, cause ``timeout ...``) is recorded like any other. Nothing waits forever.
A rollout that verl's agent loop lost (it raised before reaching the reward loop) stalls its step until
then; so when prompts still miss rollouts ``straggler_warn_s`` after their last one arrived, one
``warning`` event says so (long generations also trigger it; it changes nothing). Another warns when one
reward worker holds close to Ray's per-actor concurrency limit in waiting calls.

The actor is pinned to the launch node (``NodeAffinitySchedulingStrategy``, hard), so the side-channel
file, the teacher index and the templates are read and written where the run store lives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from engine.types import GroupInput, GroupResult, prompt_text
from engine.verl_backend.composed import RAY_ACTOR_CONCURRENCY  # verl's reward workers are Ray actors

if TYPE_CHECKING:
    from engine.config import Config

log = logging.getLogger(__name__)

ScoreFn = Callable[[GroupInput], Awaitable[GroupResult]]
ResultSink = Callable[[GroupResult, "int | None"], None]
EventSink = Callable[[str, str, "int | None"], None]  # (kind, message, step)


@dataclass
class SampleOutcome:
    """What one rollout gets back: the reward verl trains on plus the per-sample extra info."""

    reward: float
    failed: bool
    acc: float
    rubric_reward: float
    teacher_mean: float
    status: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Pending:
    uid: str
    n: int
    prompt: Any
    ground_truth: str | None
    step: int | None
    meta: dict[str, Any]
    texts: dict[int, str] = field(default_factory=dict)
    future: asyncio.Future | None = None
    timer: asyncio.Task | None = None
    started: float = field(default_factory=time.monotonic)
    last_arrival: float = field(default_factory=time.monotonic)
    warned: bool = False


def _is_correct(text: str, ground_truth: str | None) -> bool | None:
    """Rule-based correctness for samples the scorer never saw (a group that timed out, a late rollout)."""
    if ground_truth is None:
        return None
    from engine.tasks import check_answer

    try:
        return bool(check_answer(text, ground_truth))
    except Exception:  # a malformed ground truth must not take the group down
        log.exception("check_answer failed")
        return None


class GroupCollector:
    """The gathering logic, independent of Ray (the actor below wraps it; tests drive it directly)."""

    def __init__(self, score_group: ScoreFn, *, group_timeout_s: float, on_result: ResultSink | None = None,
                 remember: int = 20000, straggler_warn_s: float | None = None, on_event: EventSink | None = None):
        if group_timeout_s <= 0:
            raise ValueError("group_timeout_s must be > 0")
        self._score_group = score_group
        self.group_timeout_s = float(group_timeout_s)
        self._on_result = on_result
        self._on_event = on_event
        self.straggler_warn_s = float(straggler_warn_s) if straggler_warn_s and straggler_warn_s > 0 else None
        self._watchdog: asyncio.Task | None = None
        self._pending: dict[str, _Pending] = {}
        # uid -> ground truth of closed groups (small: only for answering late rollouts)
        self._finished: OrderedDict[str, str | None] = OrderedDict()
        self._remember = remember
        self.counts = {"groups_ok": 0, "groups_failed": 0, "timeouts": 0, "late_samples": 0}
        # waiting submit() calls per reward worker (verl's RewardLoopWorker: one Ray actor each)
        self._in_flight: dict[str, int] = {}
        self.peak_in_flight: dict[str, int] = {}
        self._concurrency_warned = False

    # -- public -----------------------------------------------------------------------------------
    async def submit(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Add one rollout; returns its outcome once its group is scored (or failed)."""
        worker = str(sample.get("worker") or "?")
        self._in_flight[worker] = self._in_flight.get(worker, 0) + 1
        self.peak_in_flight[worker] = max(self.peak_in_flight.get(worker, 0), self._in_flight[worker])
        if self._in_flight[worker] >= 0.8 * RAY_ACTOR_CONCURRENCY and not self._concurrency_warned:
            self._concurrency_warned = True
            self._event("warning", f"reward worker {worker} holds {self._in_flight[worker]} calls waiting for their "
                        f"groups; Ray runs at most {RAY_ACTOR_CONCURRENCY} calls of one actor at once, and groups "
                        "whose last rollout queues behind them stall: raise reward.num_workers", sample.get("step"))
        try:
            return await self._submit(sample)
        finally:
            self._in_flight[worker] -= 1

    async def _submit(self, sample: dict[str, Any]) -> dict[str, Any]:
        uid = str(sample["uid"])
        text = str(sample.get("text", ""))
        if uid in self._finished:  # arrived after its group was closed (e.g. timed out)
            self.counts["late_samples"] += 1
            return self._late_outcome(self._finished[uid], text).as_dict()
        pending = self._pending.get(uid)
        if pending is None:
            pending = self._open(uid, sample)
        pending.last_arrival = time.monotonic()
        index = self._slot(pending, sample.get("index"))
        pending.texts[index] = text
        if len(pending.texts) >= pending.n:
            self._close(pending)
        group = await asyncio.shield(pending.future)
        return self._outcome(group, index, text).as_dict()

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "pending": len(self._pending),
                "peak_in_flight_per_worker": max(self.peak_in_flight.values(), default=0),
                "workers": len(self.peak_in_flight)}

    def _event(self, kind: str, message: str, step: int | None) -> None:
        log.warning("%s", message)
        if self._on_event is not None:
            try:
                self._on_event(kind, message, step)
            except Exception:  # noqa: BLE001 - recording must never block training
                log.exception("recording an event failed")

    async def _watch_stragglers(self) -> None:
        """While groups are pending: one event for the groups that got no rollout for straggler_warn_s."""
        warn = self.straggler_warn_s
        while self._pending:
            await asyncio.sleep(max(0.02, warn / 4))
            now = time.monotonic()
            late = [p for p in self._pending.values() if not p.warned and now - p.last_arrival >= warn]
            if not late:
                continue
            for p in late:
                p.warned = True
            first = late[0]
            more = f" and {len(late) - 1} more" if len(late) > 1 else ""
            self._event("warning", f"{len(late)} prompt(s) still miss rollouts {warn:g} s after their last one arrived "
                        f"(uid {first.uid}: {len(first.texts)} of {first.n}{more}); a rollout that verl's agent loop "
                        "lost (an error or abort before the reward loop) never arrives, so these groups fail after "
                        f"verl.group_timeout_s ({self.group_timeout_s:g} s): see verl's log for the rollout error",
                        first.step)

    # -- internals --------------------------------------------------------------------------------
    def _open(self, uid: str, sample: dict[str, Any]) -> _Pending:
        n = int(sample.get("n") or 0)
        if n < 1:
            raise ValueError(f"sample for uid {uid} has no group size n")
        p = _Pending(uid=uid, n=n, prompt=sample.get("prompt"), ground_truth=sample.get("ground_truth"),
                     step=sample.get("step"), meta=dict(sample.get("meta") or {}))
        loop = asyncio.get_running_loop()
        p.future = loop.create_future()
        p.timer = loop.create_task(self._expire(p))
        self._pending[uid] = p
        if self.straggler_warn_s and (self._watchdog is None or self._watchdog.done()):
            self._watchdog = loop.create_task(self._watch_stragglers())
        return p

    @staticmethod
    def _slot(p: _Pending, index: Any) -> int:
        try:
            i = int(index)
        except (TypeError, ValueError):
            i = -1
        if 0 <= i < p.n and i not in p.texts:
            return i
        return next(j for j in range(p.n + len(p.texts) + 1) if j not in p.texts)

    def _close(self, p: _Pending) -> None:
        if self._pending.pop(p.uid, None) is None:
            return
        if p.timer is not None and p.timer is not asyncio.current_task():
            p.timer.cancel()
        asyncio.get_running_loop().create_task(self._score_and_resolve(p))

    async def _expire(self, p: _Pending) -> None:
        await asyncio.sleep(self.group_timeout_s)
        if self._pending.get(p.uid) is not p:
            return
        self._pending.pop(p.uid, None)
        self.counts["timeouts"] += 1
        cause = (f"timeout: only {len(p.texts)} of {p.n} rollouts of uid {p.uid} arrived within "
                 f"{self.group_timeout_s:g} s (verl.group_timeout_s)")
        self._resolve(p, self._failed_group(p, cause, wall_s=time.monotonic() - p.started))

    async def _score_and_resolve(self, p: _Pending) -> None:
        rollouts = [p.texts[i] for i in sorted(p.texts)]
        gi = GroupInput(prompt=p.prompt, rollouts=rollouts, ground_truth=p.ground_truth, uid=p.uid,
                        meta=dict(p.meta))
        t0 = time.monotonic()
        try:
            group = await asyncio.wait_for(self._score_group(gi), timeout=self.group_timeout_s)
        except asyncio.TimeoutError:
            self.counts["timeouts"] += 1
            group = self._failed_group(p, f"timeout: scoring uid {p.uid} took longer than "
                                          f"{self.group_timeout_s:g} s (verl.group_timeout_s)",
                                       wall_s=time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 - any scorer bug becomes a recorded failed group
            log.exception("scoring uid %s failed", p.uid)
            group = self._failed_group(p, f"{type(e).__name__}: {e}", wall_s=time.monotonic() - t0)
        group.uid = p.uid
        group.meta = {**p.meta, **(group.meta or {})}
        self._resolve(p, group)

    def _resolve(self, p: _Pending, group: GroupResult) -> None:
        self.counts["groups_failed" if group.status == "failed" else "groups_ok"] += 1
        self._finished[p.uid] = group.ground_truth
        while len(self._finished) > self._remember:
            self._finished.popitem(last=False)
        if self._on_result is not None:
            try:
                self._on_result(group, p.step)
            except Exception:  # noqa: BLE001 - recording must never block training
                log.exception("recording group %s failed", p.uid)
        if p.future is not None and not p.future.done():
            p.future.set_result(group)

    @staticmethod
    def _failed_group(p: _Pending, cause: str, *, wall_s: float) -> GroupResult:
        return GroupResult(group_index=0, prompt=p.prompt, question=prompt_text(p.prompt or ""),
                           rollouts_raw=[p.texts[i] for i in sorted(p.texts)], status="failed",
                           ground_truth=p.ground_truth, uid=p.uid, failure_stage="scorer",
                           failure_cause=cause, wall_s=wall_s, meta=dict(p.meta))

    @staticmethod
    def _teacher_mean(group: GroupResult) -> float:
        scores = [s for s in group.teacher_scores if s is not None]
        return float(sum(scores) / len(scores)) if scores else 0.0

    def _outcome(self, group: GroupResult, index: int, text: str) -> SampleOutcome:
        answer = next((a for a in group.student_answers if a.index == index), None)
        if group.status == "failed":  # the task's checker still ruled on it, unless the group never reached the scorer
            correct = answer.correct if answer is not None and answer.correct is not None else \
                _is_correct(text, group.ground_truth)
            return SampleOutcome(0.0, True, float(correct) if correct is not None else 0.0, 0.0, 0.0, "failed")
        reward = float(answer.reward) if answer is not None and answer.reward is not None else 0.0
        correct = answer.correct if answer is not None else None
        if correct is None:
            correct = _is_correct(text, group.ground_truth)
        acc = float(correct) if correct is not None else reward
        return SampleOutcome(reward, False, acc, reward, self._teacher_mean(group), group.status)

    @staticmethod
    def _late_outcome(ground_truth: str | None, text: str) -> SampleOutcome:
        correct = _is_correct(text, ground_truth)
        return SampleOutcome(0.0, True, float(correct) if correct is not None else 0.0, 0.0, 0.0, "failed")


class GroupGatherer:
    """The per-run Ray actor (wrapped with ``ray.remote`` by :func:`start_gatherer`)."""

    def __init__(self, cfg_dict: dict[str, Any], side_channel_path: str, group_timeout_s: float,
                 straggler_warn_s: float | None = None):
        from engine.config import build_config
        from engine.scoring.scorer import Scorer

        from engine.verl_backend.side_channel import SideChannelWriter, group_to_record

        self._cfg = build_config(cfg_dict, source="run config (group gatherer)")
        self._scorer = Scorer(self._cfg, templates=_live_templates(self._cfg))
        if self._cfg.scorer.k > 0:
            self._scorer.teacher_index  # noqa: B018 - load now: a missing index fails the launch, not every group
        self._writer = SideChannelWriter(side_channel_path)
        self._to_record = group_to_record
        if straggler_warn_s is None:
            straggler_warn_s = self._cfg.verl.straggler_warn_s
        self._collector = GroupCollector(self._score, group_timeout_s=group_timeout_s, on_result=self._record,
                                         straggler_warn_s=straggler_warn_s, on_event=self._record_event)

    async def _score(self, gi: GroupInput) -> GroupResult:
        batch = await self._scorer.score_batch([gi])
        return batch.groups[0]

    def _record(self, group: GroupResult, step: int | None) -> None:
        self._writer.append(self._to_record(group, step=step))

    def _record_event(self, kind: str, message: str, step: int | None) -> None:
        from engine.verl_backend.side_channel import event_record

        self._writer.append(event_record(kind, message, step=step))

    async def submit(self, sample: dict[str, Any]) -> dict[str, Any]:
        return await self._collector.submit(sample)

    async def ready(self) -> dict[str, Any]:
        """Up and the judge answers (JudgeError naming the URL otherwise)."""
        import ray

        await self._scorer.preflight()
        return {"node_id": ray.get_runtime_context().get_node_id(), **self._collector.stats()}

    async def stats(self) -> dict[str, Any]:
        return self._collector.stats()


def _live_templates(cfg: "Config"):
    """Watched templates (edits reload into the running scorer) when ``templates.watch`` is on; else None
    (the scorer's static templates). Changes are logged to this actor's output; versions and change
    events reach the store through the launcher's own TemplateSet on the same files (same node), since
    only the launcher writes the store."""
    if not cfg.templates.watch:
        return None
    from engine.templates.watched import TemplateSet

    return TemplateSet(cfg).start()


def gatherer_name(run_id: Any, attempt: Any = 1) -> str:
    """The Ray actor name of one attempt's gatherer. Run ids restart at 1 in every store, and several
    stores (users, checkouts) may share one cluster and namespace, so the name carries a random part."""
    import uuid

    return f"ropd_gatherer_{run_id}_{attempt}_{uuid.uuid4().hex[:12]}"


def start_gatherer(cfg: "Config | dict[str, Any]", side_channel_path: str, *, name: str, namespace: str, group_timeout_s: float,
                   node_id: str | None = None, ready_timeout_s: float = 300.0, straggler_warn_s: float | None = None):
    """Create the run's gatherer actor on ``node_id`` (default: this process's node) and wait until it
    is up. Needs ``ray.init`` done. Constructor errors (bad config, missing teacher index) are raised here
    as the original :class:`~engine.errors.UserError`.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from engine.errors import UserError

    cfg_dict = cfg if isinstance(cfg, dict) else cfg.to_dict()
    check_scoring_setup(cfg_dict)
    node_id = node_id or ray.get_runtime_context().get_node_id()
    actor_cls = ray.remote(GroupGatherer)
    handle = actor_cls.options(
        name=name,
        namespace=namespace,
        num_cpus=0,  # never takes a CPU slot from verl's workers
        max_concurrency=100_000,  # every rollout of a step waits inside submit()
        max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote(cfg_dict, str(side_channel_path), float(group_timeout_s), straggler_warn_s)
    try:
        ray.get(handle.ready.remote(), timeout=ready_timeout_s)
    except Exception as e:  # noqa: BLE001
        user_error = _innermost_user_error(e, UserError)
        if user_error is not None:
            ray.kill(handle)
            raise user_error from None
        raise
    return handle


def check_scoring_setup(cfg_dict: dict[str, Any]) -> None:
    """What the actor's constructor would fail on (config, templates, teacher index), checked here on the
    launch node first: Ray keeps only the text of a constructor's exception, not the error itself."""
    from engine.config import build_config
    from engine.scoring.scorer import Scorer
    from engine.templates.watched import TemplateSet

    cfg = build_config(cfg_dict, source="run config (group gatherer)")
    scorer = Scorer(cfg, templates=TemplateSet(cfg))
    if cfg.scorer.k > 0:
        scorer.teacher_index  # noqa: B018 - raises TeacherIndexError naming the file


def _innermost_user_error(err: BaseException, user_error_cls: type) -> BaseException | None:
    """The UserError a Ray error wraps (ActorDiedError -> RayTaskError -> the constructor's error)."""
    found, cur = None, err
    for _ in range(8):
        if isinstance(cur, user_error_cls):
            found = cur
        nxt = getattr(cur, "cause", None) or cur.__cause__
        if nxt is None or nxt is cur:
            break
        cur = nxt
    if found is not None and type(found).__module__.startswith("ray"):
        # Ray's RayTaskError(UserError) subclass: rebuild the plain error so the message stays clean
        for klass in type(found).__mro__[1:]:
            if issubclass(klass, user_error_cls) and not klass.__module__.startswith("ray"):
                return klass(getattr(found, "message", str(found)), hint=getattr(found, "hint", None))
    return found
