"""The offline judge: a deterministic, rule-based stand-in for the LLM rubricator and verifier.

It is NOT an LLM judge. It exists so the whole pipeline (scorer, store, trainers, TUI) runs with no
network and no judge model, for tasks with a checkable final answer (the demo math task, or any
task whose ground truth or teacher answers end in a number or a short final answer). Use an LLM
judge for real experiments.

How it imitates the method:

* **Rubricate**: it builds candidate criteria from the teacher answers and the question, keeps
  those that *all teacher answers satisfy* (what the teachers share), puts first those that *some
  student answer fails* (the contrast), and drops checks that every answer passes while at least
  ``scorer.min_criteria`` remain. Candidates, with points:

  - 5  the final answer is V (V = ground truth if known, else the teachers' majority final answer)
  - 4  no result other than V: the answer has a final number, and it and every value after "=" /
       "answer is" equal V
  - 4/2  each quantity every teacher answer mentions: an intermediate value (4) or a given one (2);
       not when the question asks for the bare answer ("Answer with just the number."): showing
       working is then not what was asked, and a correct bare answer must not lose to verbosity
  - 2  the answer has a number and every number in it comes from the question or is V (no invented
       numbers)
  - 2  the answer ends with a line holding only the number (the answer format)
  - 1  V is written in digits; at most N words (brevity, N from the teacher answers); no repeated
       line or sentence; the answer does not stop mid-sentence

  Criteria about the result fail when an answer gives no result (a refusal, an empty answer), and
  the quality checks (brevity, no repetition, completeness) fail for an empty answer.

* **Verify**: each criterion's text is canonical, so the check is recovered from the text itself (a
  rubric read back from the run store verifies the same way). "The final answer is V" is decided by
  the task's checker (``task.checker``, math-verify by default), off the event loop. A criterion the offline judge did not
  write is judged by a plain heuristic: every number it mentions appears in the answer, or, without
  numbers, most of its content words do.
* **Scalar score** (T-Judge baseline): 6 for the right final value, 2 for the answer format, 1 for
  brevity, 1 for no conflicting results (0-10). The reference value is the ground truth when given,
  else the demo problem's solution, else the majority final answer of the pool.

Every call returns :class:`~engine.types.JudgeCall` records (model and endpoint "offline") whose
``raw_reply`` is the JSON an LLM judge would have replied in the reference schemas.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

from engine.judging.parsing import RUBRIC_SCHEMA, SCALAR_SCHEMA, VERIFIER_SCHEMA
from engine.tasks import final_answer, final_number, numbers_in, parse_number, strip_reasoning
from engine.types import Criterion, JudgeCall, Rubric

CAT_TASK = "task fulfilment"
CAT_QUALITY = "observable response quality"
CAT_REASONING = "general reasoning quality"

_MAX_QUANTITY_CRITERIA = 3


# ---------------------------------------------------------------------------------------------
# answer features

def _num_set(text: str) -> set[Fraction]:
    out = set()
    for s in numbers_in(text):
        v = parse_number(s)
        if v is not None:
            out.add(v)
    return out


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else (f"{float(v):g}" if (v * 10**6).denominator == 1 else str(v))


_TRUNCATION_RE = re.compile(r"\s*\[\.\.\. truncated: \d+ more characters not shown \.\.\.\]\s*$")


def _clean(text: str) -> str:
    """The answer as the rules read it: no reasoning block, no truncation marker (its count is no answer)."""
    return _TRUNCATION_RE.sub("", strip_reasoning(str(text)))


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in strip_reasoning(text).strip().splitlines() if ln.strip()]


_BARE_NUMBER_LINE = re.compile(r"^\**\s*-?[\d,]*\.?\d+(?:/\d+)?\s*\.?\s*\**$")
_STATED_RE = re.compile(r"(?:=|\banswer\s*(?:is|:))\s*\**\s*(-?[\d,]*\.?\d+(?:/\d+)?)", re.IGNORECASE)
_ENDS_COMPLETE = re.compile(r"[\w.!?)\]\"'*`]$")
_DANGLING = re.compile(r"(?:[,;:(\-]|\b(?:and|or|but|the|a|an|of|to|in|with|as|is|are|that|which|for|so|then|such as))$",
                       re.IGNORECASE)


def _ends_with_bare_number(text: str) -> bool:
    lines = _lines(text)
    return bool(lines) and bool(_BARE_NUMBER_LINE.match(lines[-1]))


def _stated_results(text: str) -> list[Fraction]:
    out = []
    for m in _STATED_RE.finditer(strip_reasoning(text)):
        v = parse_number(m.group(1))
        if v is not None:
            out.append(v)
    return out


def _consistent(text: str, value: Fraction | None) -> bool:
    """No conflicting result: there is a final number, and it and every stated result equal ``value``
    (an answer with no result has nothing consistent about it)."""
    final = final_number(text)
    return final is not None and final == value and all(x == value for x in _stated_results(text))


def _said_something(text: str) -> bool:
    return bool(strip_reasoning(text).strip())


_BARE_ANSWER_RE = re.compile(
    r"\b(?:(?:with|give|write|reply with|respond with|answer with|return)\s+)?(?:just|only)\s+(?:the\s+)?"
    r"(?:final\s+)?(?:number|answer|result|value)\b|\banswer\s+only\b|\bnothing\s+else\b", re.IGNORECASE)


def asks_for_bare_answer(question: str) -> bool:
    """The question asks for the bare result ("Answer with just the number.", "only the final answer")."""
    return bool(_BARE_ANSWER_RE.search(question or ""))


def _word_count(text: str) -> int:
    return len(strip_reasoning(text).split())


def _has_repeats(text: str) -> bool:
    body = strip_reasoning(text)
    pieces = [p.strip().lower() for p in re.split(r"[\n.!?]+", body)]
    pieces = [p for p in pieces if len(p.split()) >= 3]
    return len(pieces) != len(set(pieces))


def _is_complete(text: str) -> bool:
    """False for an answer cut off mid-sentence: ends on a comma/connective, or a long last line without
    closing punctuation."""
    lines = _lines(text)
    if not lines:
        return False
    last = lines[-1]
    if _DANGLING.search(last):
        return False
    if last[-1].isalpha() and len(last.split()) > 6:
        return False
    return bool(_ENDS_COMPLETE.search(last))


# ---------------------------------------------------------------------------------------------
# criteria: canonical text <-> check

@dataclass
class _Candidate:
    kind: str
    text: str
    points: int
    category: str
    check: Callable[[str], bool]


def _final_check(value: str) -> Callable[[str], bool]:
    from engine.tasks import check_answer

    return lambda a: check_answer(a, value)


_FINAL_RE = re.compile(r"^The final answer is (.+)\.$", re.S)

# (value, cleaned answer) -> whether the task's checker finds the answer's final result equal to value
Finals = Mapping[tuple[str, str], bool]


def final_value(criterion_text: str) -> str | None:
    """V of the canonical "The final answer is V." criterion, else None."""
    m = _FINAL_RE.match(criterion_text.strip())
    return m.group(1) if m else None


def _only_numbers(allowed: set[Fraction]) -> Callable[[str], bool]:
    """The answer has numbers and all of them are ``allowed`` (no numbers: no result, fails)."""
    def check(a: str) -> bool:
        found = _num_set(strip_reasoning(a))
        return bool(found) and found <= allowed

    return check


def _rules() -> list[tuple[re.Pattern, Callable[[re.Match], Callable[[str], bool]]]]:
    num = r"(-?[\d,]*\.?\d+(?:/\d+)?)"

    def nums_of(listing: str) -> set[Fraction]:
        return _num_set(listing)

    return [
        (_FINAL_RE, lambda m: _final_check(m.group(1))),
        (re.compile(rf"^The answer gives no result other than {num}: its final number and every value after '=' or "
                    rf"'answer is' equal {num}\.$"),
         lambda m: (lambda v: (lambda a: _consistent(a, v)))(parse_number(m.group(1)))),
        (re.compile(rf"^The answer (?:works out the intermediate value|uses the quantity) {num}(?: from the question)?\.$"),
         lambda m: (lambda v: (lambda a: v in _num_set(strip_reasoning(a))))(parse_number(m.group(1)))),
        (re.compile(r"^Every number in the answer is one of: (.+)\.$"),
         lambda m: _only_numbers(nums_of(m.group(1)))),
        (re.compile(r"^The answer ends with a line that holds only the final number\.$"),
         lambda m: _ends_with_bare_number),
        (re.compile(rf"^The answer writes the final value {num} in digits\.$"),
         lambda m: (lambda v: (lambda a: v in _num_set(strip_reasoning(a))))(parse_number(m.group(1)))),
        (re.compile(r"^The answer is at most (\d+) words long\.$"),
         lambda m: (lambda n: (lambda a: 0 < _word_count(a) <= n))(int(m.group(1)))),
        (re.compile(r"^The answer does not repeat any sentence or line\.$"),
         lambda m: (lambda a: _said_something(a) and not _has_repeats(a))),
        (re.compile(r"^The answer is complete: it does not stop in the middle of a sentence\.$"),
         lambda m: _is_complete),
    ]


_RULES = _rules()
_STOPWORDS = set(
    "the a an of to in on and or is are be it its that this with for as by at from about answer response does not "
    "states state mentions mention gives give uses use includes include explicitly clearly correct correctly talks "
    "talk which what when where how".split())


def _heuristic_check(text: str) -> Callable[[str], bool]:
    nums = _num_set(text)
    if nums:
        return lambda a: nums <= _num_set(strip_reasoning(a))
    words = {w for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in _STOPWORDS}
    if not words:
        return lambda a: False
    return lambda a: len(words & set(re.findall(r"[a-z]{3,}", strip_reasoning(a).lower()))) * 2 >= len(words)


def criterion_check(text: str, finals: Finals | None = None) -> Callable[[str], bool]:
    """The rule that decides a criterion (canonical offline-judge text, else the heuristic). ``finals``:
    verdicts of the task's checker for the final-answer criterion (the rule-based check without them)."""
    value = final_value(text)
    if value is not None and finals is not None:
        fallback = _final_check(value)
        return lambda a: finals[(value, a)] if (value, a) in finals else fallback(a)
    for pattern, make in _RULES:
        m = pattern.match(text.strip())
        if m:
            check = make(m)
            if check is not None:
                return check
    return _heuristic_check(text)


# ---------------------------------------------------------------------------------------------
# the judge

def _reference_value(teacher_answers: Sequence[str], ground_truth: str | None) -> str | None:
    if ground_truth is not None and str(ground_truth).strip():
        gt = str(ground_truth).strip()
        num = parse_number(gt)
        return _fmt(num) if num is not None else gt
    finals = [final_number(t) for t in teacher_answers]
    finals = [f for f in finals if f is not None]
    if finals:
        return _fmt(Counter(finals).most_common(1)[0][0])
    texts = [final_answer(t) for t in teacher_answers if final_answer(t)]
    if texts:
        return Counter(texts).most_common(1)[0][0]
    return None


def _call(role: str, t0: float, raw: dict[str, Any]) -> JudgeCall:
    return JudgeCall(role=role, model="offline", status="ok", latency_s=time.perf_counter() - t0, attempts=1,
                     raw_reply=json.dumps(raw, ensure_ascii=False), template_sha=None, endpoint="offline")


class OfflineJudge:
    """Deterministic rule-based judge implementing the Judge protocol (see the module docstring)."""

    kind = "offline"

    def __init__(self, cfg: Any = None, *, checker: Any = None):
        scorer = getattr(cfg, "scorer", None)
        self.min_criteria = getattr(scorer, "min_criteria", 4)
        self.max_criteria = getattr(scorer, "max_criteria", 12)
        self._task = getattr(cfg, "task", None)
        self._checker = checker

    @property
    def checker(self) -> Any:
        """The task's answer checker (decides "The final answer is V."); None without a task config (then
        the rule-based check decides, in this thread)."""
        if self._checker is None and self._task is not None:
            from engine.tasks.checker_pool import checker_for

            self._checker = checker_for(self._task)
        return self._checker

    async def final_verdicts(self, values: Sequence[str], answers: Sequence[str]) -> Finals | None:
        """The checker's verdicts on ``answers`` (cleaned) for each final value, off the event loop."""
        checker = self.checker
        pairs = [(v, a) for v in dict.fromkeys(values) for a in dict.fromkeys(answers)]
        if checker is None or not pairs:
            return None
        verdicts = await checker.acheck_many([(a, v) for v, a in pairs])
        return {pair: bool(res.correct) for pair, res in zip(pairs, verdicts)}

    # -- rubric ----------------------------------------------------------------------------------
    def candidates(self, question: str, teacher_answers: Sequence[str], value: str,
                   finals: Finals | None = None) -> list[_Candidate]:
        num = parse_number(value)
        cands: list[_Candidate] = []

        def add(kind: str, text: str, points: int, category: str) -> None:
            cands.append(_Candidate(kind, text, points, category, criterion_check(text, finals)))

        add("final", f"The final answer is {value}.", 5, CAT_TASK)
        q_nums = _num_set(question)
        if num is not None:
            add("consistent", f"The answer gives no result other than {_fmt(num)}: its final number and every value "
                f"after '=' or 'answer is' equal {_fmt(num)}.", 4, CAT_REASONING)
            if teacher_answers and not asks_for_bare_answer(question):
                shared = set.intersection(*[_num_set(strip_reasoning(t)) for t in teacher_answers]) - {num}
                # intermediate values (not given in the question) first, then given quantities
                ranked = sorted(shared, key=lambda v: (v in q_nums, v))
                for v in ranked[:_MAX_QUANTITY_CRITERIA]:
                    if v in q_nums:
                        add("quantity", f"The answer uses the quantity {_fmt(v)} from the question.", 2, CAT_REASONING)
                    else:
                        add("quantity", f"The answer works out the intermediate value {_fmt(v)}.", 4, CAT_REASONING)
            allowed = sorted(q_nums | {num})
            add("no_invented", f"Every number in the answer is one of: {', '.join(_fmt(v) for v in allowed)}.", 2,
                CAT_REASONING)
            add("format", "The answer ends with a line that holds only the final number.", 2, CAT_QUALITY)
            add("digits", f"The answer writes the final value {_fmt(num)} in digits.", 1, CAT_QUALITY)
        longest = max((_word_count(t) for t in teacher_answers), default=10)
        add("brevity", f"The answer is at most {max(12, 2 * longest)} words long.", 1, CAT_QUALITY)
        add("no_repeat", "The answer does not repeat any sentence or line.", 1, CAT_QUALITY)
        add("complete", "The answer is complete: it does not stop in the middle of a sentence.", 1, CAT_QUALITY)
        return cands

    def build_rubric(self, question: str, teacher_answers: Sequence[str], student_answers: Sequence[str],
                     ground_truth: str | None = None, finals: Finals | None = None) -> Rubric:
        teacher_answers = [_clean(t) for t in teacher_answers]
        student_answers = [_clean(a) for a in student_answers]
        value = _reference_value(teacher_answers, ground_truth)
        if value is None:
            raise ValueError("the offline judge needs a ground truth or teacher answers with a final answer "
                             "(it only handles tasks with a checkable final answer); configure an LLM judge")
        cands = self.candidates(question, teacher_answers, value, finals)
        teachers = list(teacher_answers)
        students = list(student_answers)
        # keep what all teachers share (the final answer is always kept: it is the task)
        shared = [c for c in cands if c.kind == "final" or all(c.check(t) for t in teachers)]
        discriminative = [c for c in shared if any(not c.check(s) for s in students)]
        rest = [c for c in shared if c not in discriminative]
        chosen = list(discriminative)
        # top up with shared-but-trivial checks (then any candidate) only to reach the minimum
        for pool in (rest, [c for c in cands if c not in shared]):
            for c in pool:
                if len(chosen) >= self.min_criteria:
                    break
                chosen.append(c)
        if not any(c.kind == "final" for c in chosen):
            chosen.insert(0, cands[0])
        order = {id(c): i for i, c in enumerate(cands)}
        chosen.sort(key=lambda c: (-c.points, order[id(c)]))
        chosen = chosen[: self.max_criteria]
        criteria = [Criterion(id=f"c{i}", text=c.text, points=c.points, category=c.category)
                    for i, c in enumerate(chosen, 1)]
        return Rubric(criteria=criteria, schema_version=RUBRIC_SCHEMA, maximum_score=sum(c.points for c in criteria))

    async def rubricate(self, question: str, teacher_answers: Sequence[str], student_answers: Sequence[str], *,
                        ground_truth: str | None = None) -> tuple[Rubric, list[JudgeCall]]:
        t0 = time.perf_counter()
        try:
            cleaned = [_clean(t) for t in list(teacher_answers) + list(student_answers)]
            value = _reference_value(cleaned[:len(teacher_answers)], ground_truth)
            finals = await self.final_verdicts([value], cleaned) if value is not None else None
            rubric = self.build_rubric(question, teacher_answers, student_answers, ground_truth, finals)
        except ValueError as e:
            raise _stage_error("rubricator", e, [JudgeCall(role="rubricator", model="offline", status="error",
                                                           latency_s=time.perf_counter() - t0, error_class="ValueError",
                                                           error=str(e), endpoint="offline")]) from e
        raw = {"schema_version": RUBRIC_SCHEMA, "maximum_score": rubric.maximum_score,
               "rubrics": [{"criterion_id": c.id, "category": c.category, "criterion": c.text, "points": c.points}
                           for c in rubric.criteria]}
        return rubric, [_call("rubricator", t0, raw)]

    # -- verification ----------------------------------------------------------------------------
    def judge_matrix(self, rubric: Rubric, answers: Sequence[str], finals: Finals | None = None) -> list[list[bool]]:
        checks = [criterion_check(c.text, finals) for c in rubric.criteria]
        return [[bool(chk(a)) for chk in checks] for a in map(_clean, answers)]

    async def verify(self, question: str, rubric: Rubric, answers: Sequence[str]
                     ) -> tuple[list[list[bool]], list[float | None], list[JudgeCall]]:
        t0 = time.perf_counter()
        values = [v for v in (final_value(c.text) for c in rubric.criteria) if v is not None]
        finals = await self.final_verdicts(values, [_clean(a) for a in answers]) if values else None
        matrix = self.judge_matrix(rubric, answers, finals)
        points = [c.points for c in rubric.criteria]
        scores: list[float | None] = [float(sum(p for p, v in zip(points, row) if v)) for row in matrix]
        raw = {"schema_version": VERIFIER_SCHEMA,
               "answers": [{"answer_index": i, "judgement": row, "final_score": s}
                           for i, (row, s) in enumerate(zip(matrix, scores), 1)]}
        return matrix, scores, [_call("verifier", t0, raw)]

    # -- T-Judge baseline ------------------------------------------------------------------------
    def scalar_scores(self, question: str, answers: Sequence[str], ground_truth: str | None = None) -> list[float]:
        value = None
        if ground_truth is not None:
            value = parse_number(str(ground_truth))
        if value is None:
            from engine.tasks.demo_math import solve_question

            solved = solve_question(question)
            if solved is not None:
                value = Fraction(solved["answer"])
        if value is None:
            finals = [f for f in (final_number(a) for a in answers) if f is not None]
            value = Counter(finals).most_common(1)[0][0] if finals else None
        out = []
        for a in map(_clean, answers):
            score = 0.0
            if value is not None and final_number(a) == value:
                score += 6
            if _ends_with_bare_number(a):
                score += 2
            if 0 < _word_count(a) <= 40:
                score += 1
            if value is not None and _consistent(a, value):
                score += 1
            out.append(score)
        return out

    async def scalar_score(self, question: str, answers: Sequence[str], *, ground_truth: str | None = None
                           ) -> tuple[list[float], list[JudgeCall]]:
        t0 = time.perf_counter()
        scores = self.scalar_scores(question, answers, ground_truth)
        raw = {"schema_version": SCALAR_SCHEMA,
               "answers": [{"answer_index": i, "score": s} for i, s in enumerate(scores, 1)]}
        return scores, [_call("scalar_judge", t0, raw)]


def _stage_error(stage: str, cause: Exception, calls: list[JudgeCall]) -> Exception:
    try:
        from engine.judging.protocol import JudgeStageError
    except ImportError:  # pragma: no cover - engine.judging.protocol not present
        return cause
    return JudgeStageError(stage, cause, calls)
