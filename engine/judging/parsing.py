"""Reading judge replies (untrusted model output) and writing the answer/rubric blocks judges read.

Replies are parsed in two steps: :func:`extract_json` finds the JSON object in the reply (the whole
reply, a code fence, or a balanced ``{...}`` inside prose), then a validator checks it against the
reference schemas ``ropd.rubric.v1`` / ``ropd.batch_verifier.v2`` (and our ``ropd.scalar_judge.v1``).
Every problem raises :class:`ReplyFormatError` with a message that says exactly what is wrong, in
words meant to be sent back to the model when re-asking.

Leniency, deliberately limited to cases where the meaning is unambiguous:

* Reasoning before a closing ``</think>`` is ignored; code fences and surrounding prose are skipped.
* Trailing commas before ``}`` or ``]`` are removed (outside strings). No other JSON repair is done.
* Rubric items may use the aliases ``id`` (for ``criterion_id``), ``text``/``description`` (for
  ``criterion``) and ``weight`` (for ``points``); the list may be called ``rubrics``, ``criteria`` or
  ``rubric``. Points may be written ``3.0`` but not ``2.5`` or ``"3"``. Missing ids become ``c<N>``.
* Criteria must be real: a placeholder (``"..."``, an empty text, a text that trails off in ``...``),
  two criteria with the same text, or a criterion copied from the template's own example is
  rejected, so a small model that copies the reply-format example is re-asked instead of scored.
* Verifier judgements may be JSON booleans or the strings ``"true"``/``"false"`` (any case). Numbers
  (0/1), "yes"/"no" and anything else are rejected. Answers may come in any order as long as their
  ``answer_index`` values are exactly 1..N; they are returned in index order.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, Sequence

from engine.types import Criterion, Rubric

RUBRIC_SCHEMA = "ropd.rubric.v1"
VERIFIER_SCHEMA = "ropd.batch_verifier.v2"
SCALAR_SCHEMA = "ropd.scalar_judge.v1"

#: Tags we use to delimit untrusted text in judge prompts. Any occurrence of ``<tag`` or ``</tag``
#: inside untrusted text is neutralised (``<`` -> ``&lt;``) so a rollout cannot fake a boundary.
BLOCK_TAGS = ("answer", "teacher_answer", "student_answer")
_TAG_RE = re.compile(r"<(/?\s*(?:%s))(?![A-Za-z0-9_])" % "|".join(BLOCK_TAGS), re.IGNORECASE)


class ReplyFormatError(ValueError):
    """A judge reply could not be parsed or validated; the message says what to fix."""


# ---------------------------------------------------------------------------------------------
# formatting untrusted text for judge prompts

def neutralise(text: str) -> str:
    """Make untrusted text unable to open or close one of our answer blocks."""
    return _TAG_RE.sub(r"&lt;\1", text)


def format_blocks(texts: Sequence[str], tag: str) -> str:
    """``<tag id="N">\\ntext\\n</tag>`` blocks numbered 1..N, separated by blank lines."""
    return "\n\n".join(f'<{tag} id="{i}">\n{neutralise(str(t))}\n</{tag}>' for i, t in enumerate(texts, 1))


def format_answers(texts: Sequence[str]) -> str:
    """The verifier/scalar-judge answer pool: unlabelled ``<answer id="N">`` blocks, N = 1..len."""
    return format_blocks(texts, "answer")


def format_rubric(rubric: Rubric) -> str:
    """The rubric as the verifier reads it: a JSON list in criterion order (reference field names)."""
    items = [
        {"criterion_id": c.id, "category": c.category, "criterion": neutralise(c.text), "points": c.points}
        for c in rubric.criteria
    ]
    return "[\n" + ",\n".join("  " + json.dumps(it, ensure_ascii=False) for it in items) + "\n]"


# ---------------------------------------------------------------------------------------------
# finding the JSON object in a reply

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)


def _strip_reasoning(text: str) -> str:
    idx = text.rfind("</think>")
    return text[idx + len("</think>"):] if idx >= 0 else text


def _remove_trailing_commas(s: str) -> str:
    """Drop commas that directly precede ``}`` or ``]`` (ignoring whitespace), outside strings."""
    out: list[str] = []
    in_str = esc = False
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
            out.append(ch)
        elif ch == ",":
            j = i + 1
            while j < n and s[j] in " \t\r\n":
                j += 1
            if j < n and s[j] in "}]":
                i += 1
                continue
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _balanced_objects(s: str) -> Iterable[str]:
    """Top-level ``{...}`` spans of ``s`` with balanced braces (string-aware), left to right."""
    i, n = 0, len(s)
    unbalanced = 0
    while i < n and unbalanced < 64:  # bounded: a reply full of stray braces cannot make this quadratic
        start = s.find("{", i)
        if start < 0:
            return
        depth = 0
        in_str = esc = False
        end = -1
        for j in range(start, n):
            ch = s[j]
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = j
                    break
        if end < 0:  # unbalanced from here on: try the next opening brace
            unbalanced += 1
            i = start + 1
            continue
        yield s[start:end + 1]
        i = end + 1


def _loads(candidate: str) -> tuple[Any, str | None]:
    try:
        return json.loads(candidate), None
    except json.JSONDecodeError as e:
        first_err = f"{e.msg} at line {e.lineno} column {e.colno}"
    try:
        return json.loads(_remove_trailing_commas(candidate)), None
    except json.JSONDecodeError:
        return None, first_err


def extract_json(text: str, *, expect_keys: Sequence[str] = ()) -> dict:
    """The JSON object in a judge reply.

    Tries, in order: the whole reply, each fenced code block, each balanced ``{...}`` span. When
    several objects parse, one holding any of ``expect_keys`` wins; otherwise the largest one.
    Raises :class:`ReplyFormatError` when there is no JSON object or it is malformed.
    """
    if not isinstance(text, str) or not text.strip():
        raise ReplyFormatError("the reply is empty; reply with a single JSON object")
    body = _strip_reasoning(text).strip()
    candidates: list[str] = [body]
    candidates += [m.group(2).strip() for m in _FENCE_RE.finditer(body)]
    candidates += list(_balanced_objects(body))

    found: list[dict] = []
    first_error: str | None = None
    seen: set[str] = set()
    for cand in candidates:
        if not cand or cand in seen:
            continue
        seen.add(cand)
        obj, err = _loads(cand)
        if isinstance(obj, dict):
            found.append(obj)
        elif err and first_error is None and cand.lstrip().startswith("{"):
            first_error = err
    if not found:
        if first_error:
            raise ReplyFormatError(f"the JSON object in the reply is malformed ({first_error}); "
                                   "reply with a single valid JSON object")
        raise ReplyFormatError("the reply contains no JSON object; reply with a single JSON object and nothing else")
    if expect_keys:
        keyed = [o for o in found if any(k in o for k in expect_keys)]
        if keyed:
            found = keyed
    return max(reversed(found), key=lambda o: len(json.dumps(o)))


# ---------------------------------------------------------------------------------------------
# validation

def _first_key(obj: dict, names: Sequence[str]) -> tuple[str | None, Any]:
    for name in names:
        if name in obj:
            return name, obj[name]
    return None, None


def _as_points(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _join(errors: list[str], limit: int = 8) -> str:
    more = f"; and {len(errors) - limit} more problem(s)" if len(errors) > limit else ""
    return "; ".join(errors[:limit]) + more


_PLACEHOLDER_TEXTS = {"criterion", "criterion text", "text", "description", "tbd", "todo", "n/a", "na", "none",
                      "placeholder", "string", "xxx", "etc", "etc."}


def _normalised(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(" .")


def placeholder_problem(text: str) -> str | None:
    """Why a criterion text is a placeholder rather than a check (None when it is a real text)."""
    t = text.strip()
    if not any(ch.isalnum() for ch in t):
        return "has no words"
    if t.endswith(("...", "…")):
        return "trails off in '...'"
    if _normalised(t) in _PLACEHOLDER_TEXTS or re.fullmatch(r"<[^<>]*>|\[[^\[\]]*\]", t):
        return "is a placeholder"
    return None


def example_criteria(template_text: str) -> set[str]:
    """The criterion texts of the example rubric(s) written in a template (normalised), so a reply
    that copies them can be told apart from a rubric written for the question."""
    out: set[str] = set()
    for cand in _balanced_objects(template_text.replace("{{", "{").replace("}}", "}")):
        obj, _ = _loads(cand)
        if not isinstance(obj, dict):
            continue
        _, items = _first_key(obj, ("rubrics", "criteria", "rubric"))
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                _, t = _first_key(item, ("criterion", "text", "description"))
                if isinstance(t, str) and t.strip():
                    out.add(_normalised(t))
    return out


def parse_rubric(text: str, *, min_criteria: int = 4, max_criteria: int = 12,
                 example_texts: set[str] | frozenset[str] = frozenset()) -> Rubric:
    """Validate a rubricator reply (``ropd.rubric.v1``) into a :class:`Rubric`.

    ``example_texts``: normalised criterion texts of the template's example (:func:`example_criteria`);
    a criterion that repeats one is rejected."""
    obj = extract_json(text, expect_keys=("rubrics", "criteria", "rubric"))
    key, items = _first_key(obj, ("rubrics", "criteria", "rubric"))
    if key is None:
        raise ReplyFormatError('the JSON object has no "rubrics" list; put the criteria in "rubrics": [...]')
    if not isinstance(items, list):
        raise ReplyFormatError(f'"{key}" must be a list of criteria, got {type(items).__name__}')
    errors: list[str] = []
    if not (min_criteria <= len(items) <= max_criteria):
        errors.append(f"the rubric has {len(items)} criteria but must have between {min_criteria} and {max_criteria}")
    criteria: list[Criterion] = []
    ids: dict[str, int] = {}
    texts: dict[str, int] = {}  # normalised criterion text -> first position
    for pos, item in enumerate(items, 1):
        label = f"criterion {pos}"
        if not isinstance(item, dict):
            errors.append(f"{label} must be an object with criterion_id, category, criterion and points")
            continue
        _, cid = _first_key(item, ("criterion_id", "id"))
        if cid is None or (isinstance(cid, str) and not cid.strip()):
            cid = f"c{pos}"
        elif not isinstance(cid, (str, int)) or isinstance(cid, bool):
            errors.append(f"{label} has an invalid criterion_id {cid!r}; use a short string like \"c{pos}\"")
            cid = f"c{pos}"
        cid = str(cid).strip()
        label = f"criterion {pos} ({cid})"
        if cid in ids:
            errors.append(f"criterion_id {cid!r} is used by criteria {ids[cid]} and {pos}; ids must be unique")
        ids.setdefault(cid, pos)
        _, ctext = _first_key(item, ("criterion", "text", "description"))
        if not isinstance(ctext, str) or not ctext.strip():
            errors.append(f'{label} has no criterion text; give it a non-empty "criterion" string')
            ctext = ""
        elif (why := placeholder_problem(ctext)) is not None:
            errors.append(f"{label} {why} ({json.dumps(ctext.strip()[:60], ensure_ascii=False)}); write out the "
                          "concrete value, fact or step it checks")
        elif _normalised(ctext) in example_texts:
            errors.append(f"{label} copies the example in the reply format "
                          f"({json.dumps(ctext.strip()[:60], ensure_ascii=False)}); write criteria for this question "
                          "and these answers")
        elif _normalised(ctext) in texts:
            errors.append(f"criteria {texts[_normalised(ctext)]} and {pos} have the same text; each criterion must "
                          "check something different")
        if isinstance(ctext, str) and ctext.strip():
            texts.setdefault(_normalised(ctext), pos)
        pkey, raw_points = _first_key(item, ("points", "weight"))
        points = _as_points(raw_points)
        if pkey is None:
            errors.append(f'{label} has no "points"; give it an integer from 1 to 5')
        elif points is None or not 1 <= points <= 5:
            errors.append(f"{label} has points {raw_points!r}; points must be an integer from 1 to 5")
        category = item.get("category", "")
        if not isinstance(category, str):
            category = str(category)
        criteria.append(Criterion(id=cid, text=ctext.strip(), points=points or 0, category=category.strip()))
    if errors:
        raise ReplyFormatError("invalid rubric: " + _join(errors))
    max_score = _as_points(obj.get("maximum_score"))
    schema = obj.get("schema_version")
    return Rubric(criteria=criteria, schema_version=schema if isinstance(schema, str) and schema else RUBRIC_SCHEMA,
                  maximum_score=max_score)


_BOOL_STRINGS = {"true": True, "false": False}


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _BOOL_STRINGS.get(value.strip().lower())
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _indexed_answers(obj: dict, n_answers: int) -> list[dict]:
    """The ``answers`` list, checked to hold exactly one entry for each answer_index 1..n."""
    key, items = _first_key(obj, ("answers", "results"))
    if key is None:
        raise ReplyFormatError('the JSON object has no "answers" list; give one entry per answer in "answers": [...]')
    if not isinstance(items, list):
        raise ReplyFormatError(f'"{key}" must be a list with one entry per answer, got {type(items).__name__}')
    if len(items) != n_answers:
        raise ReplyFormatError(f"the reply has {len(items)} answer entries but {n_answers} answers were given; "
                               f"give exactly one entry per answer, answer_index 1 to {n_answers}")
    by_index: dict[int, dict] = {}
    errors: list[str] = []
    for pos, item in enumerate(items, 1):
        if not isinstance(item, dict):
            errors.append(f"answer entry {pos} must be an object with answer_index and its judgements")
            continue
        _, raw = _first_key(item, ("answer_index", "index"))
        idx = _as_points(raw)
        if raw is None:
            errors.append(f"answer entry {pos} has no answer_index")
        elif idx is None or not 1 <= idx <= n_answers:
            errors.append(f"answer entry {pos} has answer_index {raw!r}; it must be an integer from 1 to {n_answers}")
        elif idx in by_index:
            errors.append(f"answer_index {idx} appears more than once")
        else:
            by_index[idx] = item
    if not errors:
        missing = [i for i in range(1, n_answers + 1) if i not in by_index]
        if missing:
            errors.append(f"answer_index {', '.join(map(str, missing))} missing")
    if errors:
        raise ReplyFormatError("invalid answers list: " + _join(errors))
    return [by_index[i] for i in range(1, n_answers + 1)]


def parse_verifier(text: str, *, n_answers: int, n_criteria: int) -> list[tuple[list[bool], float | None]]:
    """Validate a verifier reply (``ropd.batch_verifier.v2``).

    Returns, for answers 1..n_answers in order, the judgements (one bool per criterion, in rubric
    order) and the judge's self-reported ``final_score`` (None when absent or not a number; it is
    recorded, never used for the reward).
    """
    obj = extract_json(text, expect_keys=("answers", "results"))
    entries = _indexed_answers(obj, n_answers)
    out: list[tuple[list[bool], float | None]] = []
    errors: list[str] = []
    for idx, item in enumerate(entries, 1):
        jkey, judgement = _first_key(item, ("judgement", "judgements", "judgment", "judgments", "verdicts"))
        if jkey is None:
            errors.append(f'answer {idx} has no "judgement" list')
            continue
        if not isinstance(judgement, list):
            errors.append(f'answer {idx}: "judgement" must be a list of true/false, got {type(judgement).__name__}')
            continue
        if len(judgement) != n_criteria:
            errors.append(f"answer {idx} has {len(judgement)} judgements but the rubric has {n_criteria} criteria")
            continue
        bools = [_as_bool(v) for v in judgement]
        bad = [f"judgement {k} is {json.dumps(v)}" for k, (v, b) in enumerate(zip(judgement, bools), 1) if b is None]
        if bad:
            shown = ", ".join(bad[:4]) + (f" (and {len(bad) - 4} more)" if len(bad) > 4 else "")
            errors.append(f"answer {idx}: every judgement must be true or false, but {shown}")
            continue
        out.append(([bool(b) for b in bools], _as_number(item.get("final_score"))))
    if errors:
        raise ReplyFormatError("invalid verifier reply: " + _join(errors))
    return out


def _check_score(value: Any, where: str) -> float:
    score = _as_number(value)
    if score is None:
        raise ReplyFormatError(f"{where} has score {value!r}; it must be a number from 0 to 10")
    if not 0.0 <= score <= 10.0:
        raise ReplyFormatError(f"{where} has score {value!r}, outside 0 to 10")
    return score


def parse_scalar_batch(text: str, *, n_answers: int) -> list[float]:
    """Validate a scalar-judge reply (``ropd.scalar_judge.v1``): one 0-10 score per answer, in order."""
    obj = extract_json(text, expect_keys=("answers", "results", "scores"))
    if "scores" in obj and "answers" not in obj and isinstance(obj["scores"], list):
        scores = obj["scores"]
        if len(scores) != n_answers:
            raise ReplyFormatError(f"the reply has {len(scores)} scores but {n_answers} answers were given")
        return [_check_score(s, f"answer {i}") for i, s in enumerate(scores, 1)]
    entries = _indexed_answers(obj, n_answers)
    out = []
    for idx, item in enumerate(entries, 1):
        key, value = _first_key(item, ("score", "final_score"))
        if key is None:
            raise ReplyFormatError(f'answer {idx} has no "score"; give a number from 0 to 10')
        out.append(_check_score(value, f"answer {idx}"))
    return out


def parse_scalar(text: str) -> float:
    """One 0-10 score: ``{"score": x}``, a one-entry ``answers`` list, or a bare number reply."""
    stripped = _strip_reasoning(text or "").strip()
    bare = _as_number(stripped)
    if bare is not None:
        return _check_score(bare, "the reply")
    obj = extract_json(stripped, expect_keys=("score", "answers"))
    if "score" in obj:
        return _check_score(obj["score"], "the reply")
    return parse_scalar_batch(json.dumps(obj), n_answers=1)[0]
