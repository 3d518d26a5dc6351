"""The scorer's input and output shapes: the contract between judging, the run store, trainers,
replay and the UI.

Everything here is plain data (dataclasses of str/int/float/bool/list/dict) so it can be written to
SQLite, sent across Ray, or dumped to JSONL with :func:`to_jsonable`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Union

Messages = list[dict[str, Any]]
Prompt = Union[str, Messages]

GroupStatus = Literal["ok", "recovered", "failed"]
FailureStage = Literal["teacher", "rubricator", "verifier", "scorer"]
AnswerKind = Literal["student", "teacher"]
JudgeRole = Literal["teacher", "rubricator", "verifier", "scalar_judge"]


def canonical_prompt(prompt: Prompt) -> str:
    """Canonical JSON of a prompt (a string or a list of chat messages)."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def prompt_hash(prompt: Prompt) -> str:
    """sha256 of the canonical JSON of the prompt: the teacher-index key."""
    return hashlib.sha256(canonical_prompt(prompt).encode("utf-8")).hexdigest()


def prompt_text(prompt: Prompt) -> str:
    """The question as plain text: the string itself, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"]
    msg = users[-1] if users else (prompt[-1] if prompt else {"content": ""})
    content = msg.get("content", "")
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


@dataclass
class GroupInput:
    """One prompt with its n student rollouts, to be scored as a group."""

    prompt: Prompt
    rollouts: list[str]
    ground_truth: str | None = None
    teacher_answers: list[str] | None = None  # None: look them up in the teacher index
    uid: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    clipped: list[bool | None] | None = None  # per rollout: cut at the token limit (None: unknown)


@dataclass
class Criterion:
    id: str
    text: str
    points: int
    category: str = ""


@dataclass
class Rubric:
    criteria: list[Criterion]
    schema_version: str = "ropd.rubric.v1"
    maximum_score: int | None = None  # as reported by the rubricator; recorded, never used

    @property
    def total_points(self) -> int:
        return sum(c.points for c in self.criteria)


@dataclass
class JudgeCall:
    """One logical judge request (with its retries/re-asks) and its outcome."""

    role: JudgeRole
    model: str
    status: Literal["ok", "error"]
    latency_s: float
    attempts: int = 1
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_class: str | None = None
    error: str | None = None
    raw_reply: str | None = None
    template_sha: str | None = None
    request_sha: str | None = None  # sha256 of the canonical request, for replay caching
    cached: bool = False
    endpoint: str | None = None  # base URL without credentials, or "offline"
    finish_reason: str | None = None  # the server's: "stop", or "length" when the reply hit max_tokens
    response_format: str | None = None  # the output format asked for: json_schema | json_object | none
    cached_prompt_tokens: int | None = None  # of prompt_tokens, those the server's prompt cache served


@dataclass
class AnswerResult:
    """One answer in the verification pool: a student rollout or a teacher answer."""

    kind: AnswerKind
    index: int  # position among answers of its kind (rollout i, teacher answer k)
    text: str  # the text as judged (reasoning stripped, truncated)
    truncated: bool = False  # cut to the judge's character budget (scorer.answer_char_budget)
    clipped: bool | None = None  # the rollout was cut at the token limit (max_new_tokens); None: unknown
    pool_position: int | None = None  # 1-based position in the shuffled verifier pool
    verdicts: list[bool] | None = None  # one per criterion, in rubric order
    reward: float | None = None  # recomputed weighted pass rate in [0, 1]
    judge_score: float | None = None  # the judge's self-reported score; recorded, never used
    correct: bool | None = None  # correctness against the ground truth, when known
    checker: str | None = None  # which checker decided ``correct`` (math_verify, rule, exact, python:..., +:timeout)


@dataclass
class GroupResult:
    group_index: int
    prompt: Prompt
    question: str
    rollouts_raw: list[str]
    status: GroupStatus
    ground_truth: str | None = None
    uid: str | None = None
    failure_stage: FailureStage | None = None
    failure_cause: str | None = None
    rubric: Rubric | None = None
    answers: list[AnswerResult] = field(default_factory=list)  # students first, then teachers
    calls: list[JudgeCall] = field(default_factory=list)
    template_versions: dict[str, str] = field(default_factory=dict)  # role -> sha256
    judge_kind: Literal["offline", "llm"] = "offline"
    reward_mode: Literal["rubric", "scalar_judge"] = "rubric"
    wall_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def student_answers(self) -> list[AnswerResult]:
        return [a for a in self.answers if a.kind == "student"]

    @property
    def teacher_answers(self) -> list[AnswerResult]:
        return [a for a in self.answers if a.kind == "teacher"]

    @property
    def student_rewards(self) -> list[float | None]:
        """Per-rollout rewards; None for every rollout of a failed group (never a silent 0)."""
        if self.status == "failed":
            return [None] * len(self.rollouts_raw)
        return [a.reward for a in self.student_answers]

    @property
    def teacher_scores(self) -> list[float | None]:
        return [a.reward for a in self.teacher_answers]


@dataclass
class BatchResult:
    groups: list[GroupResult]
    wall_s: float = 0.0

    @property
    def failure_rate(self) -> float:
        if not self.groups:
            return 0.0
        return sum(g.status == "failed" for g in self.groups) / len(self.groups)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses -> dicts (recursively), leaving JSON types alone."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj
