"""The demo task: very easy one-step arithmetic word problems with deterministic teacher answers.

Made for the embedded default (SmolLM2-135M-Instruct on CPU): single-digit addition, subtraction and
small multiplication, asked with "Answer with just the number." so a 135M model gets some right and
some wrong at temperature 0.7, which gives GRPO a reward spread to learn from.

:func:`teacher_answers` writes k varied, correct teacher answers (different phrasings and amounts of
working, all ending with a line holding just the number), standing in for a real teacher model so the
demo runs without network. :func:`ensure_teacher_index` writes them to a teacher index.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any

from engine.types import prompt_hash, prompt_text
from engine.tasks import check_answer  # re-exported: engine.tasks.demo_math.check_answer

__all__ = ["DATA_SOURCE", "INSTRUCTION", "make_problems", "teacher_answers", "check_answer", "ensure_teacher_index",
           "solve_question", "TEACHER_SETTINGS"]

DATA_SOURCE = "demo_math"
INSTRUCTION = "Answer with just the number."
TEACHER_SETTINGS = {"teacher": "demo_math deterministic teacher", "version": 1}

_NAMES = ["Tom", "Mia", "Sam", "Lea", "Ben", "Ana", "Max", "Zoe", "Leo", "Ivy", "Raj", "Eva"]
_OBJECTS = ["apples", "pencils", "marbles", "books", "cookies", "stickers", "coins", "shells", "cards", "toys"]

# One-step word problems. {n}: name, {o}: objects, {a} {b}: numbers.
_TEMPLATES: dict[str, list[str]] = {
    "add": [
        "{n} has {a} {o}. {n} gets {b} more {o}. How many {o} does {n} have now?",
        "There are {a} {o} on a table. {n} puts {b} more {o} on the table. How many {o} are on the table now?",
        "{n} found {a} {o} in the morning and {b} {o} in the afternoon. How many {o} did {n} find in all?",
    ],
    "sub": [
        "{n} has {a} {o}. {n} gives away {b} {o}. How many {o} does {n} have left?",
        "There are {a} {o} in a bag. {n} takes out {b} {o}. How many {o} are still in the bag?",
        "{n} had {a} {o} and lost {b} of them. How many {o} does {n} have now?",
    ],
    "mul": [
        "{n} has {a} bags with {b} {o} in each bag. How many {o} does {n} have in total?",
        "There are {a} boxes and each box holds {b} {o}. How many {o} are there altogether?",
        "{n} buys {a} packs of {o}. Each pack has {b} {o}. How many {o} does {n} buy?",
    ],
}
_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}


def _numbers(op: str, rng: random.Random) -> tuple[int, int]:
    if op == "add":
        return rng.randint(2, 9), rng.randint(2, 9)
    if op == "sub":
        a = rng.randint(4, 12)
        return a, rng.randint(2, a - 1)
    return rng.randint(2, 5), rng.randint(2, 5)


def _result(op: str, a: int, b: int) -> int:
    return a + b if op == "add" else a - b if op == "sub" else a * b


def make_problems(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distinct problems, deterministic in ``seed``.

    Each is ``{"prompt": [{"role": "user", "content": "... Answer with just the number."}],
    "ground_truth": "7", "data_source": "demo_math", "extra_info": {"op", "a", "b", "name", "object", "index"}}``.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(f"demo_math:{seed}")
    ops = list(_TEMPLATES)
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        op = ops[len(problems) % len(ops)] if attempts < 50 * (n + 1) else rng.choice(ops)
        a, b = _numbers(op, rng)
        name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
        question = rng.choice(_TEMPLATES[op]).format(n=name, o=obj, a=a, b=b)
        content = f"{question} {INSTRUCTION}"
        if content in seen and attempts < 50 * (n + 1):
            continue
        seen.add(content)
        problems.append({
            "prompt": [{"role": "user", "content": content}],
            "ground_truth": str(_result(op, a, b)),
            "data_source": DATA_SOURCE,
            "extra_info": {"op": op, "a": a, "b": b, "name": name, "object": obj, "index": len(problems)},
        })
    return problems


_KEYWORDS = {"add": ("more", "in all", "afternoon"), "sub": ("gives away", "takes out", "lost", "left"),
             "mul": ("each",)}


def solve_question(text: str) -> dict[str, Any] | None:
    """Recover ``{op, a, b, answer, object, name}`` from a demo question's text; None if it is not one."""
    for op, templates in _TEMPLATES.items():
        for tpl in templates:
            pattern = re.escape(tpl)
            for field, rx in (("n", r"(?P<n>[A-Z][a-z]+)"), ("o", r"(?P<o>[a-z]+)"), ("a", r"(?P<a>\d+)"),
                              ("b", r"(?P<b>\d+)")):
                esc = re.escape("{" + field + "}")
                pattern = pattern.replace(esc, rx, 1).replace(esc, f"(?P={field})")
            m = re.search(pattern, text)
            if m:
                a, b = int(m.group("a")), int(m.group("b"))
                g = m.groupdict()
                return {"op": op, "a": a, "b": b, "answer": _result(op, a, b), "name": g.get("n") or "They",
                        "object": g.get("o") or "items"}
    return None


def _facts(problem: dict[str, Any]) -> dict[str, Any]:
    info = problem.get("extra_info") or {}
    if {"op", "a", "b"} <= set(info):
        facts = dict(info)
    else:
        solved = solve_question(prompt_text(problem["prompt"]))
        if solved is None:
            raise ValueError("not a demo_math problem: cannot recover its numbers from the prompt")
        facts = solved
    facts.setdefault("name", "They")
    facts.setdefault("object", "items")
    facts["c"] = _result(facts["op"], int(facts["a"]), int(facts["b"]))
    return facts


def _styles(f: dict[str, Any]) -> list[str]:
    op, a, b, c, o = f["op"], f["a"], f["b"], f["c"], f["object"]
    s = _SYMBOL[op]
    if op == "add":
        story = f"We start with {a} {o} and {b} more come, so {a} + {b} = {c}."
        verb = f"Adding {b} to {a} gives {c}."
        check = f"{a} + {b} = {c}, and {c} - {b} gives back {a}."
        total = f"Together that makes {a} + {b} = {c} {o}."
    elif op == "sub":
        story = f"We start with {a} {o} and {b} go away, so {a} - {b} = {c}."
        verb = f"Taking {b} away from {a} leaves {c}."
        check = f"{a} - {b} = {c}, and {c} + {b} gives back {a}."
        total = f"{a} - {b} = {c} {o} are left."
    else:
        story = f"There are {a} groups of {b} {o}, so {a} * {b} = {c}."
        verb = f"{a} groups of {b} make {c}."
        check = f"{a} * {b} = {c}, and {c} / {b} gives back {a}."
        total = f"In total: {a} x {b} = {c} {o}."
    return [
        f"{a} {s} {b} = {c}\n{c}",
        f"{story}\n{c}",
        f"{verb}\n{c}",
        f"{c}",
        f"{check}\n{c}",
        f"{total}\n{c}",
        f"Step 1: start with {a}.\nStep 2: {'add' if op == 'add' else 'subtract' if op == 'sub' else 'multiply by'} {b}.\n"
        f"Result: {c}.\n{c}",
    ]


def teacher_answers(problem: dict[str, Any], k: int) -> list[str]:
    """``k`` varied, correct teacher answers, deterministic per problem (distinct while k <= 7)."""
    if k <= 0:
        return []
    styles = _styles(_facts(problem))
    start = int(hashlib.sha256(prompt_hash(problem["prompt"]).encode()).hexdigest(), 16) % len(styles)
    return [styles[(start + i) % len(styles)] for i in range(k)]


def ensure_teacher_index(path: str | Path, problems: list[dict[str, Any]], k: int) -> Path:
    """Make sure the teacher index at ``path`` has at least ``k`` answers for every problem.

    Existing rows are kept; missing or short ones are (re)written with :func:`teacher_answers`, appended
    crash-safely. Returns the path.
    """
    from engine.teacher.index import TeacherIndex, append_rows

    path = Path(path)
    existing = TeacherIndex.load(path) if path.exists() else None
    rows = []
    for p in problems:
        if existing is not None and len(existing.answers_for(p["prompt"]) or []) >= k:
            continue
        rows.append({"prompt": p["prompt"], "answers": teacher_answers(p, max(k, 1)), "settings": dict(TEACHER_SETTINGS)})
    if rows or existing is None:
        append_rows(path, rows)
    return path
