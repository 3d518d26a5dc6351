"""The ROPD scorer: a batch of groups in, rubrics, verdict matrices and rewards out.

Per group (all groups run concurrently; the only bound is the judge's per-endpoint concurrency, and
each group goes on to verification as soon as its own rubric arrives; there is no batch barrier):

1. **teacher**: K teacher answers (``scorer.k``): the group's own ``teacher_answers`` if given, else
   the teacher index (``teacher.index``). A miss fails the group at this stage with the index's
   message; it is never scored as 0.
2. Answers are prepared: reasoning up to a closing ``</think>`` is stripped, then each answer is cut
   to ``scorer.answer_char_budget`` characters with a visible marker (``AnswerResult.truncated``).
3. **rubricator**: one rubric for the whole group (``rubric_scope=shared``), from the question, the
   teacher answers and all rollouts.
4. **verifier**: the pool (rollouts + teacher answers, or rollouts only with
   ``teacher_in_pool=false``) is shuffled with an RNG seeded by ``scorer.shuffle_seed`` and the
   group's uid (or index), so the order is reproducible; answers carry no labels (with
   ``blind=false`` teacher answers are marked as references). The pool is split into chunks of
   ``scorer.verifier_chunk_size`` judged concurrently against the same rubric; verdicts are mapped
   back to the answers.
5. **rewards** are recomputed from the verdicts: ``sum(points * verdict) / (sum(points) + eps)``,
   clamped to [0, 1]. The judge's self-reported score is kept in ``judge_score`` only.

Ablations: ``rubric_scope=pair`` writes one rubric per (teacher answer, rollout) pair and judges the
rollout (with that teacher answer when ``teacher_in_pool``) against it; a rollout's reward is the
**mean of its rewards over its K pairs**, a teacher answer's score the mean over its n pairs. The
pair rubrics and verdicts are in ``GroupResult.meta["pairs"]`` (``rubric`` and per-answer
``verdicts`` stay empty, since no single rubric applies). ``reward_mode=scalar_judge`` asks the
scalar judge (the teacher as a 0-10 judge, the paper's T-Judge) for a score per answer; reward =
score / 10.

Every group ends ``ok``, ``recovered`` (it needed re-asks or transport retries) or ``failed`` with
the stage and cause; a failed group's rewards are all None. :meth:`Scorer.check_failure_rate` stops
training when too many groups of a batch failed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import inspect
import logging
import random
import time
from typing import Any, Callable, Sequence

from engine import progress
from engine.config import Config
from engine.errors import TeacherIndexError, UserError
from engine.judging.factory import make_judge
from engine.judging.protocol import JudgeStageError
from engine.scoring.failures import cause_summary, failure_rate_error, unreachable_cause
from engine.types import AnswerResult, BatchResult, GroupInput, GroupResult, JudgeCall, Rubric, prompt_text

log = logging.getLogger("ropd.scorer")

REFERENCE_LABEL = "[Reference answer written by the teacher model]\n"
TRUNCATION_MARKER = "\n[... truncated: {n} more characters not shown ...]"


# ---------------------------------------------------------------------------------------------
# pure helpers

def strip_reasoning(text: str) -> str:
    """Everything after the last ``</think>`` (the whole text when there is none)."""
    text = "" if text is None else str(text)
    idx = text.rfind("</think>")
    return text[idx + len("</think>"):].strip() if idx >= 0 else text


def truncate(text: str, budget: int | None) -> tuple[str, bool]:
    """Cut ``text`` to ``budget`` characters plus a visible marker; (text, was_truncated)."""
    if not budget or budget <= 0 or len(text) <= budget:
        return text, False
    return text[:budget] + TRUNCATION_MARKER.format(n=len(text) - budget), True


def weighted_reward(points: Sequence[int], verdicts: Sequence[bool], eps: float) -> float:
    """sum(points * verdict) / (sum(points) + eps), clamped to [0, 1]."""
    total = sum(points)
    got = sum(p for p, v in zip(points, verdicts) if v)
    return min(1.0, max(0.0, got / (total + eps)))


def group_rng(seed: int, key: Any, *extra: Any) -> random.Random:
    """A reproducible RNG for one group (and optionally one pair inside it)."""
    material = "|".join(str(x) for x in (seed, key, *extra))
    return random.Random(int.from_bytes(hashlib.sha256(material.encode("utf-8")).digest()[:8], "big"))


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    size = max(1, size)
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_sync(make_coro):
    """Run ``make_coro()`` to completion from synchronous code and close the judge's HTTP clients.

    Works in a thread with no event loop (``asyncio.run``) and in one that already runs a loop (the
    coroutine then runs on a fresh loop in a helper thread, so the caller's loop is never re-entered)."""
    from engine.judging.client import aclose_loop_clients

    async def main():
        try:
            return await make_coro()
        finally:
            await aclose_loop_clients()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ropd-scorer") as ex:
        # the caller's context (its progress tracker) goes with the coroutine into the helper thread
        return ex.submit(contextvars.copy_context().run, asyncio.run, main()).result()


class _StageFailure(Exception):
    """Internal: a failure with its stage, carrying the calls made so far."""

    def __init__(self, stage: str, cause: str, calls: list[JudgeCall]):
        super().__init__(cause)
        self.stage, self.cause, self.calls = stage, cause, calls


# ---------------------------------------------------------------------------------------------
# the scorer

class Scorer:
    """Scores batches of groups with a Judge (offline or LLM; see :func:`engine.judging.protocol.make_judge`)."""

    def __init__(self, cfg: Config, *, judge=None, teacher_index=None, templates=None, checker=None):
        self.cfg = cfg
        self.templates = templates
        self.judge = judge if judge is not None else make_judge(cfg, templates)
        self._teacher_index = teacher_index
        self._index_error: UserError | None = None
        self._checker = checker
        kind = getattr(self.judge, "kind", None) or getattr(getattr(self.judge, "judge", None), "kind", None)
        self.judge_kind = "llm" if kind == "llm" else "offline"
        try:
            self._scalar_takes_gt = "ground_truth" in inspect.signature(self.judge.scalar_score).parameters
        except (TypeError, ValueError, AttributeError):
            self._scalar_takes_gt = False

    # -- correctness -----------------------------------------------------------------------------

    @property
    def checker(self):
        """The task's answer checker (:func:`engine.tasks.checker_pool.checker_for`), shared process-wide."""
        if self._checker is None:
            from engine.tasks.checker_pool import checker_for

            self._checker = checker_for(self.cfg.task)
        return self._checker

    def _start_checks(self, ground_truth: str | None, prepared: list[tuple[AnswerResult, str]],
                      checks: list[tuple[list[AnswerResult], "asyncio.Future"]]) -> None:
        """Start checking ``prepared`` answers (off the event loop); collected by :meth:`_collect_checks`."""
        if ground_truth is None or not prepared:
            return
        task = asyncio.ensure_future(self.checker.acheck_many([(text, ground_truth) for _, text in prepared]))
        checks.append(([a for a, _ in prepared], task))

    @staticmethod
    async def _collect_checks(checks: list[tuple[list[AnswerResult], "asyncio.Future"]]) -> None:
        for answers, task in checks:
            try:
                verdicts = await task
            except Exception:  # noqa: BLE001 - correctness is advisory; never fail a group over it
                log.exception("checking answers failed")
                continue
            for answer, verdict in zip(answers, verdicts):
                answer.correct, answer.checker = verdict.correct, verdict.checker

    # -- teacher answers -------------------------------------------------------------------------

    @property
    def teacher_index(self):
        """The teacher index (loaded on first use from ``teacher.index``); TeacherIndexError if unusable."""
        if self._teacher_index is None:
            if self._index_error is not None:
                raise self._index_error
            path = self.cfg.teacher.index
            if not path:
                self._index_error = TeacherIndexError(
                    "no teacher index configured and the group has no teacher answers",
                    hint="set teacher.index to a JSONL index (ropd-tui --headless index build ...), "
                    "or give teacher_answers with each group")
                raise self._index_error
            from engine.teacher.index import TeacherIndex

            try:
                self._teacher_index = TeacherIndex.load(path)
            except UserError as e:
                self._index_error = e
                raise
        return self._teacher_index

    def teacher_answers_for(self, group: GroupInput) -> tuple[list[str], str]:
        """(K teacher answers, where they came from: "input" | "index" | "none")."""
        k = self.cfg.scorer.k
        if k <= 0:
            return [], "none"
        if group.teacher_answers is not None:
            return [str(t) for t in group.teacher_answers][:k], "input"
        return [str(t) for t in self.teacher_index.lookup(group.prompt, k)], "index"

    async def preflight(self) -> list[dict[str, Any]]:
        """Check the judge endpoints before a run (JudgeError naming the URL and cause); [] for the offline judge."""
        check = getattr(self.judge, "preflight", None)
        if self.judge_kind != "llm" or not callable(check):
            return []
        return list(await check() or [])

    def preflight_sync(self) -> list[dict[str, Any]]:
        """:meth:`preflight` from synchronous code."""
        return run_sync(self.preflight)

    # -- batch -----------------------------------------------------------------------------------

    async def score_batch(self, groups: Sequence[GroupInput], *,
                          on_group_done: Callable[[int, int], None] | None = None) -> BatchResult:
        """Score every group concurrently; each runs its own rubricate -> verify pipeline.
        ``on_group_done(done, total)`` is called as each group finishes (progress; it must be cheap)."""
        t0 = time.perf_counter()
        finished = [0]

        async def one(g: GroupInput, i: int) -> GroupResult:
            res = await self.score_group(g, i)
            finished[0] += 1
            if on_group_done is not None:
                try:
                    on_group_done(finished[0], len(groups))
                except Exception:  # noqa: BLE001 - progress reporting never fails a batch
                    log.exception("on_group_done failed")
            return res

        results = await asyncio.gather(*(one(g, i) for i, g in enumerate(groups)))
        return BatchResult(groups=list(results), wall_s=time.perf_counter() - t0)

    def score_batch_sync(self, groups: Sequence[GroupInput], *,
                         on_group_done: Callable[[int, int], None] | None = None) -> BatchResult:
        """:meth:`score_batch` from synchronous code (a thread with or without a running event loop)."""
        return run_sync(lambda: self.score_batch(groups, on_group_done=on_group_done))

    def check_failure_rate(self, batch: BatchResult) -> float:
        """The batch's failure rate; ScoringFailureRateError when it passes ``scorer.failure_threshold``."""
        failed = [(g.failure_stage, g.failure_cause) for g in batch.groups if g.status == "failed"]
        err = failure_rate_error(failed, len(batch.groups), self.cfg.scorer.failure_threshold,
                                 unreachable=unreachable_cause(batch.groups))
        if err is not None:
            raise err
        return batch.failure_rate

    # -- one group -------------------------------------------------------------------------------

    async def score_group(self, group: GroupInput, index: int = 0) -> GroupResult:
        t0 = time.perf_counter()
        s = self.cfg.scorer
        res = GroupResult(group_index=index, prompt=group.prompt, question=prompt_text(group.prompt),
                          rollouts_raw=[str(r) for r in group.rollouts], status="ok",
                          ground_truth=group.ground_truth, uid=group.uid, judge_kind=self.judge_kind,  # type: ignore[arg-type]
                          reward_mode=s.reward_mode, meta=dict(group.meta or {}))
        stage = ["teacher"]
        full: list[tuple[AnswerResult, str]] = []  # each answer with its untruncated text
        checks: list[tuple[list[AnswerResult], asyncio.Future]] = []  # correctness, checked while judging
        try:
            await self._score_into(res, group, index, stage, full, checks)
        except (JudgeStageError, _StageFailure) as e:
            self._fail(res, getattr(e, "stage", stage[0]) or stage[0], str(e.cause), list(e.calls))
        except UserError as e:
            self._fail(res, stage[0], str(e), [])
        except Exception as e:  # noqa: BLE001 - a bug must fail the group visibly, never score it as 0
            log.exception("scoring group %s failed at stage %s", index, stage[0])
            self._fail(res, stage[0], f"{type(e).__name__}: {e}", [])
        else:
            if any(c.attempts > 1 or c.status == "error" for c in res.calls):
                res.status = "recovered"
        await self._collect_checks(checks)
        res.template_versions = {c.role: c.template_sha for c in res.calls if c.template_sha}
        res.wall_s = time.perf_counter() - t0
        prog = progress.current()
        if prog is not None:
            prog.group_finished(res.status == "failed")
        return res

    def _fail(self, res: GroupResult, stage: str, cause: str, calls: list[JudgeCall]) -> None:
        res.status = "failed"
        res.failure_stage = stage  # type: ignore[assignment]
        res.failure_cause = cause
        res.calls.extend(c for c in calls if not any(c is x for x in res.calls))
        for a in res.answers:  # nothing of a failed group may be read as a reward
            a.reward = None
        log.warning("group %s failed at %s: %s", res.group_index, stage, cause_summary(cause))

    def _prepare(self, text: str, kind: str, index: int, full: list[tuple[AnswerResult, str]]) -> AnswerResult:
        stripped = strip_reasoning(text)
        judged, cut = truncate(stripped, self.cfg.scorer.answer_char_budget)
        answer = AnswerResult(kind=kind, index=index, text=judged, truncated=cut)  # type: ignore[arg-type]
        full.append((answer, stripped))
        return answer

    async def _score_into(self, res: GroupResult, group: GroupInput, index: int, stage: list[str],
                          full: list[tuple[AnswerResult, str]],
                          checks: list[tuple[list[AnswerResult], asyncio.Future]]) -> None:
        s = self.cfg.scorer
        # the rollouts first: their correctness is checked (in other processes) while the judge works,
        # and is known even when the teacher lookup fails
        students = [self._prepare(t, "student", i, full) for i, t in enumerate(group.rollouts)]
        for a, clipped in zip(students, group.clipped or []):
            a.clipped = clipped
        res.answers = list(students)
        self._start_checks(group.ground_truth, full[:len(students)], checks)
        teachers_raw, source = self.teacher_answers_for(group)
        res.meta["teacher_source"] = source
        stage[0] = "scorer"
        if s.k > 0 and len(teachers_raw) < s.k:
            res.meta["teacher_answers_short"] = f"{len(teachers_raw)} of k={s.k}"
        teachers = [self._prepare(t, "teacher", k, full) for k, t in enumerate(teachers_raw)]
        self._start_checks(group.ground_truth, full[len(students):], checks)
        res.answers = students + teachers
        if not students:
            raise _StageFailure("scorer", "the group has no rollouts to score", [])
        key = group.uid if group.uid is not None else index
        if s.reward_mode == "scalar_judge":
            stage[0] = "verifier"
            await self._scalar(res, students, teachers, key, stage)
        elif s.rubric_scope == "pair":
            stage[0] = "rubricator"
            await self._pairs(res, students, teachers, key, stage)
        else:
            stage[0] = "rubricator"
            await self._shared(res, students, teachers, key, stage)

    def _pool(self, students: list[AnswerResult], teachers: list[AnswerResult], rng: random.Random) -> list[AnswerResult]:
        pool = list(students) + (list(teachers) if self.cfg.scorer.teacher_in_pool else [])
        rng.shuffle(pool)
        return pool

    def _pool_text(self, a: AnswerResult) -> str:
        if a.kind == "teacher" and not self.cfg.scorer.blind:
            return REFERENCE_LABEL + a.text
        return a.text

    async def _verify_pool(self, question: str, rubric: Rubric, pool: list[AnswerResult]
                           ) -> tuple[list[list[bool]], list[float | None], list[JudgeCall]]:
        """Verify the pool in chunks (concurrently, same rubric); verdicts in pool order."""
        chunks = chunked(pool, self.cfg.scorer.verifier_chunk_size)
        outs = await asyncio.gather(*(self.judge.verify(question, rubric, [self._pool_text(a) for a in ch])
                                      for ch in chunks), return_exceptions=True)
        calls: list[JudgeCall] = []
        verdicts: list[list[bool]] = []
        scores: list[float | None] = []
        failure: BaseException | None = None
        n_crit = len(rubric.criteria)
        for ch, out in zip(chunks, outs):
            if isinstance(out, BaseException):
                calls.extend(getattr(out, "calls", []) or [])
                failure = failure or out
                continue
            v, sc, c = out
            calls.extend(c)
            if len(v) != len(ch) or any(len(row) != n_crit for row in v):
                failure = failure or _StageFailure(
                    "verifier", f"the judge returned {len(v)} verdict rows for {len(ch)} answers "
                    f"(expected {n_crit} verdicts each)", [])
                continue
            verdicts.extend([[bool(x) for x in row] for row in v])
            sc = list(sc) if sc is not None else []
            scores.extend(sc + [None] * (len(ch) - len(sc)))
        if failure is not None:
            if isinstance(failure, (JudgeStageError, _StageFailure)):
                raise _StageFailure(failure.stage, str(failure.cause), calls)
            if isinstance(failure, UserError):
                raise _StageFailure("verifier", str(failure), calls)
            raise failure
        return verdicts, scores, calls

    async def _rubricate(self, res: GroupResult, teachers: list[str], students: list[str]) -> tuple[Rubric, list[JudgeCall]]:
        rubric, calls = await self.judge.rubricate(res.question, teachers, students, ground_truth=res.ground_truth)
        if rubric is None or not rubric.criteria or rubric.total_points <= 0:
            raise _StageFailure("rubricator", "the rubricator returned an empty rubric", list(calls))
        return rubric, calls

    async def _shared(self, res: GroupResult, students: list[AnswerResult], teachers: list[AnswerResult],
                      key: Any, stage: list[str]) -> None:
        s = self.cfg.scorer
        rubric, calls = await self._rubricate(res, [a.text for a in teachers], [a.text for a in students])
        res.calls.extend(calls)
        res.rubric = rubric
        stage[0] = "verifier"
        pool = self._pool(students, teachers, group_rng(s.shuffle_seed, key))
        for pos, a in enumerate(pool, 1):
            a.pool_position = pos
        verdicts, scores, vcalls = await self._verify_pool(res.question, rubric, pool)
        res.calls.extend(vcalls)
        stage[0] = "scorer"
        points = [c.points for c in rubric.criteria]
        for a, v, sc in zip(pool, verdicts, scores):
            a.verdicts = v
            a.judge_score = sc
            a.reward = weighted_reward(points, v, s.eps)

    async def _pairs(self, res: GroupResult, students: list[AnswerResult], teachers: list[AnswerResult],
                     key: Any, stage: list[str]) -> None:
        s = self.cfg.scorer
        if not teachers:
            raise _StageFailure("scorer", "rubric_scope=pair needs at least one teacher answer (scorer.k >= 1)", [])

        async def one(t: AnswerResult, st: AnswerResult) -> dict[str, Any]:
            calls: list[JudgeCall] = []
            try:
                rubric, rc = await self._rubricate(res, [t.text], [st.text])
                calls += rc
                pool = [st] + ([t] if s.teacher_in_pool else [])
                group_rng(s.shuffle_seed, key, t.index, st.index).shuffle(pool)
                verdicts, scores, vc = await self._verify_pool(res.question, rubric, pool)
                calls += vc
            except (JudgeStageError, _StageFailure) as e:
                raise _StageFailure(e.stage, str(e.cause),
                                    calls + [c for c in e.calls if not any(c is x for x in calls)]) from None
            points = [c.points for c in rubric.criteria]
            by_kind = {a.kind: (v, sc) for a, v, sc in zip(pool, verdicts, scores)}
            sv, ssc = by_kind["student"]
            out = {"teacher": t.index, "student": st.index, "calls": calls,
                   "rubric": {"schema_version": rubric.schema_version,
                              "criteria": [{"id": c.id, "text": c.text, "points": c.points, "category": c.category}
                                           for c in rubric.criteria]},
                   "student_verdicts": sv, "student_reward": weighted_reward(points, sv, s.eps),
                   "student_judge_score": ssc}
            if "teacher" in by_kind:
                tv, tsc = by_kind["teacher"]
                out.update(teacher_verdicts=tv, teacher_reward=weighted_reward(points, tv, s.eps),
                           teacher_judge_score=tsc)
            return out

        outs = await asyncio.gather(*(one(t, st) for t in teachers for st in students), return_exceptions=True)
        calls: list[JudgeCall] = []
        failure: BaseException | None = None
        pairs = []
        for out in outs:
            if isinstance(out, BaseException):
                calls.extend(getattr(out, "calls", []) or [])
                failure = failure or out
            else:
                calls.extend(out.pop("calls"))
                pairs.append(out)
        if failure is not None:
            if isinstance(failure, _StageFailure):
                raise _StageFailure(failure.stage, failure.cause, calls)
            raise failure
        res.calls.extend(calls)
        stage[0] = "scorer"
        res.meta["pairs"] = pairs
        for st in students:
            rewards = [p["student_reward"] for p in pairs if p["student"] == st.index]
            st.reward = sum(rewards) / len(rewards)
        if s.teacher_in_pool:
            for t in teachers:
                rewards = [p["teacher_reward"] for p in pairs if p["teacher"] == t.index]
                t.reward = sum(rewards) / len(rewards)

    async def _scalar(self, res: GroupResult, students: list[AnswerResult], teachers: list[AnswerResult],
                      key: Any, stage: list[str]) -> None:
        s = self.cfg.scorer
        pool = self._pool(students, teachers, group_rng(s.shuffle_seed, key))
        for pos, a in enumerate(pool, 1):
            a.pool_position = pos
        kw = {"ground_truth": res.ground_truth} if self._scalar_takes_gt else {}
        chunks = chunked(pool, s.verifier_chunk_size)
        outs = await asyncio.gather(*(self.judge.scalar_score(res.question, [self._pool_text(a) for a in ch], **kw)
                                      for ch in chunks), return_exceptions=True)
        calls: list[JudgeCall] = []
        failure: BaseException | None = None
        for ch, out in zip(chunks, outs):
            if isinstance(out, BaseException):
                calls.extend(getattr(out, "calls", []) or [])
                failure = failure or out
                continue
            scores, c = out
            calls.extend(c)
            if len(scores) != len(ch):
                failure = failure or _StageFailure("verifier", f"the scalar judge returned {len(scores)} scores "
                                                   f"for {len(ch)} answers", [])
                continue
            for a, sc in zip(ch, scores):
                a.judge_score = float(sc)
                a.reward = min(1.0, max(0.0, float(sc) / 10.0))
        if failure is not None:
            if isinstance(failure, (JudgeStageError, _StageFailure)):
                raise _StageFailure(failure.stage, str(failure.cause), calls)
            if isinstance(failure, UserError):
                raise _StageFailure("verifier", str(failure), calls)
            raise failure
        res.calls.extend(calls)
