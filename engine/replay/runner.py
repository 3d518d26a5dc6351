"""Replay verification: re-judge stored answers with another template, judge or rubric, and compare.

A replay picks stored groups of a run (steps, prompts, failed groups, a reward range), a template
version per role (the current file, another file, or any stored version by sha prefix) and a judge
(model + base URL, the run's judge, or the offline judge), then either

- ``reuse``: re-runs verification with the stored rubric on the same blind pool (same order), or
- ``induce``: re-runs rubric induction from the stored teacher and student answers, then verification.

A replay whose failed groups exceed ``scorer.failure_threshold`` ends ``failed`` with their causes, as
``score`` and ``train`` do. Results are stored as a replay linked to the original groups and answers (see
:mod:`engine.replay.store`). The report gives, per answer, the old and new reward; per criterion, the
verdict flips; and a summary: mean reward shift, verdict agreement rate, and where ground truth exists
the AUC of reward against correctness, old vs new (the paper's measure of reward quality).

Judge requests go through a cache (:mod:`engine.judging.cache`): an identical request (same rendered
messages, model and parameters) is answered from the store instead of being paid for again, unless
``force`` is set.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

from engine import progress as judge_progress
from engine.config import Config, build_config
from engine.errors import ConfigError, JudgeUnreachableError, StoreError, TemplateError, UserError
from engine.replay.metrics import CriterionFlips, agreement_rate, auc, count_flips, mean
from engine.replay.store import ReplayStore, StoredAnswer, StoredGroup
from engine.scoring.failures import UNREACHABLE_CALL, failure_rate_error
from engine.templates.render import Template, resolve_template_path
from engine.types import AnswerResult, GroupResult, JudgeCall, Rubric

RubricMode = Literal["reuse", "induce"]
REPLAY_ROLES = ("rubricator", "verifier")


# ---------------------------------------------------------------------------------------------
# what to replay

@dataclass
class ReplaySpec:
    """Everything a replay needs; the headless command and the TUI screen both fill one."""

    run: str
    steps: list[int] | None = None
    prompts: list[str] | None = None  # prompt hash prefixes or case-insensitive substrings of the question
    failed_only: bool = False
    reward_range: tuple[float, float] | None = None  # groups with a student answer whose old reward is within
    templates: dict[str, str] = field(default_factory=dict)  # role -> template file or stored sha prefix
    judge_model: str | None = None
    base_url: str | None = None
    offline: bool = False
    rubric_mode: RubricMode = "reuse"
    force: bool = False  # ask the judge again even when the identical request is cached
    concurrency: int | None = None  # requests in flight (default: the run's judge.concurrency)
    max_groups: int | None = None
    name: str | None = None


@dataclass
class ReplayProgress:
    done_groups: int
    total_groups: int
    done_answers: int
    total_answers: int
    failed_groups: int
    judge_calls: int
    cached_calls: int
    elapsed_s: float

    @property
    def fraction(self) -> float:
        return self.done_answers / self.total_answers if self.total_answers else 1.0


@dataclass
class AnswerDiff:
    group_id: int
    step: int
    group_index: int
    kind: str
    index: int
    text: str
    correct: bool | None
    old_reward: float | None
    new_reward: float | None
    old_verdicts: list[bool] | None
    new_verdicts: list[bool] | None

    @property
    def shift(self) -> float | None:
        if self.old_reward is None or self.new_reward is None:
            return None
        return self.new_reward - self.old_reward


@dataclass
class GroupDiff:
    group_id: int
    step: int
    group_index: int
    question: str
    status: str  # the replay's status for this group: ok | failed
    failure_stage: str | None
    failure_cause: str | None
    rubric_source: str  # stored | induced
    old_rubric: Rubric | None
    new_rubric: Rubric | None
    template_versions: dict[str, str]
    answers: list[AnswerDiff]
    criteria: list[CriterionFlips]  # flips per criterion (only when the rubric is the stored one)


@dataclass
class ReplaySummary:
    groups: int
    failed_groups: int
    answers: int  # student answers with both an old and a new reward
    mean_reward_old: float | None
    mean_reward_new: float | None
    mean_reward_shift: float | None
    verdict_agreement: float | None  # over (answer, criterion) pairs judged with the same rubric
    verdict_flips: int
    answers_with_truth: int
    auc_old: float | None
    auc_new: float | None
    teacher_mean_old: float | None
    teacher_mean_new: float | None


@dataclass
class ReplayReport:
    replay_id: int
    run_id: int
    run_name: str | None
    status: str
    settings: dict[str, Any]
    summary: ReplaySummary
    groups: list[GroupDiff]
    stats: dict[str, Any] = field(default_factory=dict)  # calls, cached calls, wall time, answers/s
    cause: str | None = None  # why the replay failed (too many groups failed, or the error that stopped it)
    judge_unreachable: bool = False  # it failed because the judge stopped answering (circuit breaker; not stored)

    @property
    def answers(self) -> list[AnswerDiff]:
        return [a for g in self.groups for a in g.answers]

    def criterion_flips(self, *, only_changed: bool = False) -> list[tuple[GroupDiff, CriterionFlips]]:
        out = [(g, c) for g in self.groups for c in g.criteria]
        if only_changed:
            out = [(g, c) for g, c in out if c.flips]
        return sorted(out, key=lambda gc: (-gc[1].flips, gc[0].step, gc[0].group_index))

    def to_jsonable(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id, "run_id": self.run_id, "run": self.run_name, "status": self.status,
            "cause": self.cause, "settings": self.settings, "summary": asdict(self.summary), "stats": self.stats,
            "answers": [asdict(a) | {"shift": a.shift} for a in self.answers],
            "criteria": [{"group_id": g.group_id, "step": g.step, "group_index": g.group_index,
                          **asdict(c), "flips": c.flips} for g, c in self.criterion_flips()],
            "groups": [{"group_id": g.group_id, "step": g.step, "group_index": g.group_index, "status": g.status,
                        "failure_stage": g.failure_stage, "failure_cause": g.failure_cause,
                        "rubric_source": g.rubric_source, "template_versions": g.template_versions}
                       for g in self.groups],
        }


# ---------------------------------------------------------------------------------------------
# argument parsing shared by the CLI and the TUI

def parse_steps(text: str | None) -> list[int] | None:
    """``"1-5,8"`` -> [1, 2, 3, 4, 5, 8]; empty -> None (all steps)."""
    if text is None or not str(text).strip():
        return None
    steps: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", part)
        if not m:
            raise ConfigError(f"--steps: {part!r} is not a step or a range",
                              hint="write steps like 1-5,8 (inclusive ranges, comma-separated)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise ConfigError(f"--steps: the range {part!r} runs backwards", hint="write the smaller step first")
        steps.update(range(lo, hi + 1))
    return sorted(steps)


def parse_reward_range(text: str | None) -> tuple[float, float] | None:
    """``"0.2:0.6"`` (either side may be empty) -> (0.2, 0.6)."""
    if text is None or not str(text).strip():
        return None
    m = re.fullmatch(r"\s*([0-9.]*)\s*:\s*([0-9.]*)\s*", str(text))
    try:
        if not m:
            raise ValueError
        lo = float(m.group(1)) if m.group(1) else 0.0
        hi = float(m.group(2)) if m.group(2) else 1.0
    except ValueError:
        raise ConfigError(f"--reward-range: {text!r} is not a range", hint="write it as LOW:HIGH, e.g. 0.2:0.6") from None
    if lo > hi:
        raise ConfigError(f"--reward-range: {text!r} runs backwards", hint="write the lower bound first")
    return lo, hi


def parse_template_args(items: list[str] | None) -> dict[str, str]:
    """``["verifier=prompts/v2.txt", "rubricator=3fa9c1"]`` -> {role: value}."""
    out: dict[str, str] = {}
    for item in items or []:
        role, sep, value = item.partition("=")
        role = role.strip()
        if not sep or not value.strip():
            raise ConfigError(f"--template {item!r} is not ROLE=FILE or ROLE=VERSION",
                              hint="e.g. --template verifier=prompts/verifier.txt or --template verifier=3fa9c1d2")
        if role not in REPLAY_ROLES:
            raise ConfigError(f"--template: unknown role {role!r}", hint=f"roles: {', '.join(REPLAY_ROLES)}")
        out[role] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------
# selecting groups, templates, judge

def select_groups(rs: ReplayStore, run_id: int, spec: ReplaySpec) -> list[StoredGroup]:
    groups = rs.load_groups(run_id, steps=spec.steps)
    if spec.prompts:
        needles = [p.strip().lower() for p in spec.prompts if p.strip()]
        groups = [g for g in groups if any(
            (len(n) >= 6 and g.prompt_hash.startswith(n)) or n in (g.question or "").lower() for n in needles)]
    if spec.failed_only:
        groups = [g for g in groups if g.status == "failed"]
    if spec.reward_range is not None:
        lo, hi = spec.reward_range
        groups = [g for g in groups if any(a.reward is not None and lo <= a.reward <= hi for a in g.students)]
    if spec.max_groups is not None:
        groups = groups[: spec.max_groups]
    return groups


def run_config(run_row: dict[str, Any], spec: ReplaySpec) -> Config:
    """The run's config snapshot with the replay's judge settings applied."""
    data = dict(run_row.get("config") or {})
    try:
        cfg = build_config(data, source=f"config snapshot of run {run_row.get('name')!r}")
    except ConfigError:
        cfg = build_config({}, source="defaults")  # a snapshot from another version: judge with defaults
    if spec.offline:
        cfg.judge.mode = "offline"
    if spec.judge_model:
        cfg.judge.mode = "llm"
        cfg.judge.rubricator.model = cfg.judge.verifier.model = spec.judge_model
    if spec.base_url:
        cfg.judge.mode = "llm"
        cfg.judge.rubricator.base_url = cfg.judge.verifier.base_url = spec.base_url
    if spec.concurrency:
        if spec.concurrency < 1:
            raise ConfigError("--concurrency must be >= 1")
        cfg.judge.concurrency = spec.concurrency
    if cfg.judge_is_llm():
        for role in REPLAY_ROLES:
            if not getattr(cfg.judge, role).model:
                raise ConfigError(f"no {role} model for the replay judge",
                                  hint="pass --judge-model MODEL (and --base-url URL), or --offline")
    return cfg


def resolve_template(rs: ReplayStore | None, role: str, value: str) -> Template:
    """A template file path, or a stored version by sha prefix."""
    path = resolve_template_path(value)
    if path.exists():
        return Template.load(path, role)
    if rs is None:
        raise TemplateError(f"{role} template file {value!r} not found")
    try:
        row = rs.find_template(value, role)
    except StoreError as err:
        raise TemplateError(f"--template {role}={value}: no such file, and {err.message}",
                            hint="give a template file or a stored version (ropd-tui --headless templates list)") from None
    return Template.from_text(row["text"] or "", role, source=f"stored version {row['sha'][:12]}")


def resolve_templates(rs: ReplayStore, cfg: Config, spec: ReplaySpec, groups: list[StoredGroup]) -> dict[str, Template]:
    """Per role: the spec's choice; else the current file of the run's config; else the version the
    selected groups were judged with."""
    out: dict[str, Template] = {}
    for role in REPLAY_ROLES:
        if role in spec.templates:
            out[role] = resolve_template(rs, role, spec.templates[role])
            continue
        path = resolve_template_path(getattr(cfg.templates, role))
        if path.exists():
            out[role] = Template.load(path, role)
            continue
        used = Counter(g.template_versions.get(role) for g in groups if g.template_versions.get(role))
        if not used:
            raise TemplateError(f"no {role} template: {path} does not exist and the run recorded no version",
                                hint=f"pass --template {role}=FILE")
        out[role] = resolve_template(rs, role, used.most_common(1)[0][0])
    return out


def judge_label(cfg: Config) -> str:
    if not cfg.judge_is_llm():
        return "offline"
    ep = cfg.judge.verifier
    base = ep.base_url or "default OpenAI endpoint"
    base = re.sub(r"//[^/@]*@", "//", base)  # never keep credentials embedded in a URL
    return f"{ep.model} @ {base}"


class _Fixed:
    """``.current(role)`` over fixed templates (a TemplateSet without files to watch)."""

    def __init__(self, templates: dict[str, Template]):
        self._t = templates

    def current(self, role: str) -> Template:
        if role in self._t:
            return self._t[role]
        return Template.default(role)

    def versions(self) -> dict[str, str]:
        return {r: t.sha256 for r, t in self._t.items()}


# ---------------------------------------------------------------------------------------------
# running

_group_stats: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("replay_group_stats", default=None)


def note_judge_request(cached: bool, request_sha: str | None = None) -> None:
    """Called by the judge cache for every request: counts calls and cache hits per replayed group."""
    stats = _group_stats.get()
    if stats is not None:
        stats["calls"] += 1
        stats["cached"] += int(cached)
        if cached and request_sha:
            stats["hit_shas"].add(request_sha)


def _pool(group: StoredGroup) -> list[StoredAnswer]:
    """The verifier pool as originally judged: answers in their blind pool order."""
    pooled = [a for a in group.answers if a.pool_position is not None]
    if pooled:
        return sorted(pooled, key=lambda a: a.pool_position)
    return group.students + group.teachers


def _is_cancelled(cancel: Any) -> bool:
    return bool(cancel is not None and cancel.is_set())


async def _replay_group(judge: Any, cfg: Config, group: StoredGroup, mode: RubricMode
                        ) -> tuple[Rubric | None, str, list[tuple[StoredAnswer, float | None, list[bool] | None]],
                                   list[JudgeCall]]:
    """Judge one stored group again. Returns (rubric used, its source, per-answer results, calls)."""

    calls: list[JudgeCall] = []
    rubric = group.rubric
    source = "stored"
    if mode == "induce" or rubric is None:
        if not group.teachers and cfg.scorer.k > 0:
            raise _GroupFailure("rubricator", "the store holds no teacher answers for this group")
        rubric, rcalls = await judge.rubricate(group.question, [a.text for a in group.teachers],
                                               [a.text for a in group.students], ground_truth=group.ground_truth)
        calls += rcalls
        source = "induced"
    from engine.scoring.scorer import REFERENCE_LABEL, chunked

    def pool_text(a: StoredAnswer) -> str:  # as the scorer shows it: labelled only when not blind
        return REFERENCE_LABEL + a.text if a.kind == "teacher" and not cfg.scorer.blind else a.text

    chunks = chunked(_pool(group), cfg.scorer.verifier_chunk_size)
    results = await asyncio.gather(*(judge.verify(group.question, rubric, [pool_text(a) for a in chunk])
                                     for chunk in chunks))
    by_answer: dict[int, list[bool]] = {}
    for chunk, (verdicts, _scores, vcalls) in zip(chunks, results):
        calls += vcalls
        for answer, v in zip(chunk, verdicts):
            by_answer[answer.id] = [bool(x) for x in v]
    from engine.scoring.scorer import weighted_reward

    points = [c.points for c in rubric.criteria]
    out = []
    for answer in group.answers:
        v = by_answer.get(answer.id)
        if v is not None and len(v) != len(points):
            raise _GroupFailure("verifier", f"the judge returned {len(v)} verdicts for {len(points)} criteria", calls)
        out.append((answer, weighted_reward(points, v, cfg.scorer.eps) if v is not None else None, v))
    return rubric, source, out, calls


def _group_result(group: StoredGroup, status: str, stage: str | None, cause: str | None, rubric: Rubric | None,
                  versions: dict[str, str], wall_s: float,
                  results: list[tuple[StoredAnswer, float | None, list[bool] | None]], calls: list[JudgeCall],
                  is_llm: bool) -> GroupResult:
    """The replayed group in the scorer's output shape (answers in ``group.answers`` order)."""
    return GroupResult(
        group_index=group.group_index, prompt=group.prompt, question=group.question,
        rollouts_raw=[a.text for a in group.students], status=status, ground_truth=group.ground_truth,
        failure_stage=stage, failure_cause=cause, rubric=rubric,
        answers=[AnswerResult(kind=a.kind, index=a.index, text=a.text, pool_position=a.pool_position,
                              verdicts=v, reward=r, correct=a.correct) for a, r, v in results],
        calls=calls, template_versions=dict(versions), judge_kind="llm" if is_llm else "offline", wall_s=wall_s)


class _GroupFailure(Exception):
    def __init__(self, stage: str, cause: str, calls: list[JudgeCall] | None = None):
        super().__init__(cause)
        self.stage, self.cause, self.calls = stage, cause, calls or []


async def run_replay(store: Any, spec: ReplaySpec, *, progress: Callable[[ReplayProgress], None] | None = None,
                     cancel: threading.Event | asyncio.Event | None = None, judge: Any = None) -> ReplayReport:
    """Run a replay and store it; returns its report. ``cancel`` stops it between groups (the groups
    done so far are kept, status ``cancelled``). ``judge``: an already built Judge (tests, benches)."""
    from engine.judging.cache import CachingJudge

    if spec.rubric_mode not in ("reuse", "induce"):
        raise ConfigError(f"--rubric must be reuse or induce, got {spec.rubric_mode!r}")
    rs = ReplayStore(store)
    try:
        run_row = rs.resolve_run(spec.run)
        run_id = int(run_row["id"])
        cfg = run_config(run_row, spec)
        groups = select_groups(rs, run_id, spec)
        if not groups:
            raise UserError(f"nothing to replay: run {run_row['name']!r} has no stored groups matching the selection",
                            hint="check --steps/--prompts/--failed-only/--reward-range (ropd-tui --headless metrics RUN)")
        templates = resolve_templates(rs, cfg, spec, groups)
        fixed = _Fixed(templates)
        if judge is None:
            from engine.judging.factory import make_judge

            judge = make_judge(cfg, templates=fixed)
        is_llm = cfg.judge_is_llm()
        if is_llm and callable(getattr(judge, "preflight", None)):
            await judge.preflight()  # a dead or misconfigured judge fails here, naming the URL and the cause
        cached_judge = CachingJudge(judge, rs, force=spec.force, on_request=note_judge_request) if is_llm else judge
        settings = {
            "run": run_row["name"], "steps": spec.steps, "prompts": spec.prompts, "failed_only": spec.failed_only,
            "reward_range": list(spec.reward_range) if spec.reward_range else None,
            "templates": {r: {"sha256": t.sha256, "source": t.source} for r, t in templates.items()},
            "judge": judge_label(cfg), "offline": not is_llm, "rubric_mode": spec.rubric_mode, "force": spec.force,
            "concurrency": cfg.judge.concurrency,
        }
        total_answers = sum(len(_pool(g)) for g in groups)
        replay_id = rs.create_replay(run_id, spec.name, settings, len(groups))
        prog = ReplayProgress(0, len(groups), 0, total_answers, 0, 0, 0, 0.0)
        tracker = judge_progress.current()  # the shared request/group counters (``replay``'s progress bar)
        if tracker is not None:
            tracker.groups_total = len(groups)
        started = time.monotonic()
        versions = {r: t.sha256 for r, t in templates.items()}
        sem = asyncio.Semaphore(max(1, cfg.judge.concurrency))
        status = "done"
        cause: str | None = None
        unreachable: list[str] = []  # causes of groups ended by an open circuit breaker (the judge stopped answering)

        async def one(group: StoredGroup) -> None:
            async with sem:
                if _is_cancelled(cancel):
                    return
                stats: dict[str, Any] = {"calls": 0, "cached": 0, "hit_shas": set()}
                _group_stats.set(stats)
                t0 = time.monotonic()
                try:
                    rubric, source, results, calls = await _replay_group(cached_judge, cfg, group, spec.rubric_mode)
                    gstatus, stage, gcause = "ok", None, None
                except _GroupFailure as err:
                    rubric, source, calls = None, "induced", err.calls
                    results = [(a, None, None) for a in group.answers]
                    gstatus, stage, gcause = "failed", err.stage, err.cause
                except Exception as err:  # JudgeStageError and friends: this group fails, the replay goes on
                    if isinstance(err, UserError) and not hasattr(err, "stage"):
                        raise  # a dead/misconfigured judge: stop the whole replay with its message
                    rubric, source = None, "induced" if spec.rubric_mode == "induce" else "stored"
                    calls = list(getattr(err, "calls", []) or [])
                    results = [(a, None, None) for a in group.answers]
                    gstatus, stage = "failed", getattr(err, "stage", "verifier")
                    gcause = str(getattr(err, "cause", None) or err)
                wall = time.monotonic() - t0
                if gstatus == "failed" and any(getattr(c, "error_class", None) == UNREACHABLE_CALL for c in calls):
                    unreachable.append(str(gcause))
                for call in calls:
                    call.template_sha = call.template_sha or versions.get(call.role)
                    call.cached = bool(call.request_sha and call.request_sha in stats["hit_shas"])
                if rubric is None and source == "stored":
                    rubric = group.rubric
                rs.write_group(replay_id, group, _group_result(group, gstatus, stage, gcause, rubric, versions,
                                                               wall, results, calls, is_llm))
                prog.done_groups += 1
                prog.done_answers += len(_pool(group))
                prog.failed_groups += gstatus == "failed"
                if tracker is not None:
                    tracker.group_finished(gstatus == "failed")
                prog.judge_calls += stats["calls"] or len(calls)
                prog.cached_calls += stats["cached"]
                prog.elapsed_s = time.monotonic() - started
                if progress is not None:
                    progress(prog)

        tasks = [asyncio.ensure_future(one(g)) for g in groups]
        watcher = asyncio.ensure_future(_watch_cancel(cancel, tasks)) if cancel is not None else None
        try:
            done = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if watcher is not None:
                watcher.cancel()
        errors = [d for d in done if isinstance(d, BaseException) and not isinstance(d, asyncio.CancelledError)]
        if _is_cancelled(cancel) or any(isinstance(d, asyncio.CancelledError) for d in done):
            status = "cancelled"
        if errors:
            status, cause = "failed", str(errors[0])
        wall = time.monotonic() - started
        report = load_report(rs, replay_id)
        if status == "done":  # as in score and train: too many failed groups fail the whole replay
            too_many = failure_rate_error([(g.failure_stage, g.failure_cause) for g in report.groups
                                           if g.status == "failed"], len(report.groups), cfg.scorer.failure_threshold,
                                          unreachable=unreachable[0] if unreachable else None)
            if too_many is not None:
                status, cause = "failed", too_many.message
                report.judge_unreachable = isinstance(too_many, JudgeUnreachableError)
                if report.judge_unreachable and too_many.hint:
                    cause += f"; {too_many.hint}"  # what to do about the judge, kept with the stored cause
        report.stats = {"judge_calls": prog.judge_calls, "cached_calls": prog.cached_calls, "wall_s": wall,
                        "answers": prog.done_answers,
                        "answers_per_s": prog.done_answers / wall if wall > 0 else None}
        summary_json = asdict(report.summary) | {"stats": report.stats}
        rs.finish_replay(replay_id, status, summary_json, cause)
        report.status, report.cause = status, cause
        if errors:
            err = errors[0]
            if isinstance(err, UserError):
                raise err
            raise UserError(f"replay {replay_id} failed: {err}") from err
        return report
    finally:
        rs.close()


async def _watch_cancel(cancel: Any, tasks: list[asyncio.Future]) -> None:
    while not all(t.done() for t in tasks):
        if _is_cancelled(cancel):
            await asyncio.sleep(0)  # let groups that are writing finish their write
            for t in tasks:
                if not t.done():
                    t.cancel()
            return
        await asyncio.sleep(0.05)


def run_replay_sync(store: Any, spec: ReplaySpec, **kwargs: Any) -> ReplayReport:
    return asyncio.run(run_replay(store, spec, **kwargs))


# ---------------------------------------------------------------------------------------------
# reading a stored replay back

def _rubric_from_json(data: dict[str, Any] | None) -> Rubric | None:
    if not data:
        return None
    from engine.types import Criterion

    return Rubric(criteria=[Criterion(id=c["id"], text=c["text"], points=int(c["points"]),
                                      category=c.get("category") or "") for c in data.get("criteria", [])],
                  schema_version=data.get("schema_version") or "ropd.rubric.v1")


def load_report(store: Any, replay_id: int) -> ReplayReport:
    """A stored replay with old vs new per answer, flips per criterion and the summary."""
    rs = store if isinstance(store, ReplayStore) else ReplayStore(store)
    try:
        row = rs.get_replay(replay_id)
        rgroups = rs.replay_results(replay_id)
        originals = {g.id: g for g in rs.load_groups(row["run_id"], group_ids=[g["group_id"] for g in rgroups])} \
            if rgroups else {}
    finally:
        if rs is not store:
            rs.close()
    mode = (row.get("settings") or {}).get("rubric_mode", "reuse")
    groups: list[GroupDiff] = []
    for rg in rgroups:
        orig = originals.get(rg["group_id"])
        if orig is None:
            continue  # the original run's data was deleted
        new_rubric = _rubric_from_json(rg["rubric"])
        source = "stored" if mode == "reuse" and orig.rubric is not None else "induced"
        same_rubric = source == "stored"
        crits = [CriterionFlips(c.id, c.text, c.points) for c in orig.rubric.criteria] if same_rubric else []
        answers_by_id = {a.id: a for a in orig.answers}
        diffs = []
        for ra in rg["answers"]:
            oa = answers_by_id.get(ra["answer_id"])
            if oa is None:
                continue
            old_reward = oa.reward if orig.status != "failed" else None
            diffs.append(AnswerDiff(rg["group_id"], orig.step, orig.group_index, oa.kind, oa.index, oa.text,
                                    oa.correct, old_reward, ra["reward"], oa.verdicts, ra["verdicts"]))
            if same_rubric:
                count_flips(oa.verdicts, ra["verdicts"], crits)
        diffs.sort(key=lambda d: (d.kind != "student", d.index))
        groups.append(GroupDiff(rg["group_id"], orig.step, orig.group_index, orig.question, rg["status"],
                                rg["failure_stage"], rg["failure_cause"], source, orig.rubric, new_rubric,
                                rg["template_versions"], diffs, crits))
    groups.sort(key=lambda g: (g.step, g.group_index))
    stats = dict((row.get("summary") or {}).get("stats") or {})
    return ReplayReport(int(row["id"]), int(row["run_id"]), row.get("run_name"), row["status"], row["settings"],
                        summarize(groups), groups, stats, cause=row.get("cause"))


def summarize(groups: list[GroupDiff]) -> ReplaySummary:
    students = [a for g in groups for a in g.answers if a.kind == "student"]
    teachers = [a for g in groups for a in g.answers if a.kind == "teacher"]
    both = [a for a in students if a.old_reward is not None and a.new_reward is not None]
    crits = [c for g in groups for c in g.criteria]
    truth = [a for a in both if a.correct is not None]
    return ReplaySummary(
        groups=len(groups), failed_groups=sum(g.status == "failed" for g in groups), answers=len(both),
        mean_reward_old=mean(a.old_reward for a in both), mean_reward_new=mean(a.new_reward for a in both),
        mean_reward_shift=mean(a.shift for a in both),
        verdict_agreement=agreement_rate(crits), verdict_flips=sum(c.flips for c in crits),
        answers_with_truth=len(truth),
        auc_old=auc([a.old_reward for a in truth], [a.correct for a in truth]),
        auc_new=auc([a.new_reward for a in truth], [a.correct for a in truth]),
        teacher_mean_old=mean(a.old_reward for a in teachers), teacher_mean_new=mean(a.new_reward for a in teachers),
    )


def list_replays(store: Any, run: str | None = None) -> list[dict[str, Any]]:
    rs = ReplayStore(store)
    try:
        run_id = int(rs.resolve_run(run)["id"]) if run else None
        return rs.list_replays(run_id)
    finally:
        rs.close()
