"""Tasks with a checkable final answer: answer extraction and the rule-based check.

:func:`check_answer` is the ``rule`` checker (and math-verify's fallback for plain-text ground truths,
see :mod:`engine.tasks.checkers`): for a numeric ground truth the answer's final number is compared
numerically; otherwise the normalised final answer is compared with the normalised ground truth. Which
checker fills ``AnswerResult.correct`` is ``task.checker`` (:mod:`engine.tasks.checker_pool`).
"""

from __future__ import annotations

import re
import string
from fractions import Fraction

__all__ = ["check_answer", "final_answer", "final_number", "numbers_in", "parse_number", "strip_reasoning",
           "normalise_text"]

_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])"
    r"|(?<![\w.])-?\.\d+(?![\w])"
)
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS_RE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*\**\s*([^\n]*)", re.IGNORECASE)


def strip_reasoning(text: str) -> str:
    """Drop everything up to and including the last ``</think>``."""
    idx = text.rfind("</think>")
    return text[idx + len("</think>"):] if idx >= 0 else text


def parse_number(s: str) -> Fraction | None:
    """A number written as an integer, decimal, thousands-separated or simple fraction; else None."""
    s = s.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    if not s:
        return None
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return Fraction(int(num), int(den)) if int(den) != 0 else None
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_in(text: str) -> list[str]:
    """The numbers written in ``text``, in order, as they are written (e.g. ``"1,000"``, ``"3/4"``)."""
    return [m.group(0) for m in _NUMBER_RE.finditer(text)]


def final_number(text: str) -> Fraction | None:
    """The answer's final number: the last ``\\boxed{}``, else the last "answer is X", else the last number."""
    text = strip_reasoning(text)
    boxed = _BOXED_RE.findall(text)
    if boxed:
        nums = numbers_in(boxed[-1])
        if nums:
            return parse_number(nums[-1])
    stated = _ANSWER_IS_RE.findall(text)
    if stated:
        nums = numbers_in(stated[-1])
        if nums:
            return parse_number(nums[0])
    nums = numbers_in(text)
    return parse_number(nums[-1]) if nums else None


def normalise_text(s: str) -> str:
    s = s.lower().strip()
    s = re.sub(r"^(the )?(final )?answer( is|:)\s*", "", s)
    s = s.translate(str.maketrans("", "", string.punctuation.replace("-", "")))
    return " ".join(s.split())


def final_answer(text: str) -> str:
    """The answer's final statement: the last ``\\boxed{}``, else the last non-empty line."""
    text = strip_reasoning(text)
    boxed = _BOXED_RE.findall(text)
    if boxed:
        return boxed[-1].strip()
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def check_answer(text: str, ground_truth: str | int | float | None) -> bool:
    """Rule-based correctness of ``text`` against ``ground_truth``.

    Numeric ground truth: the final number of the answer (see :func:`final_number`) must equal it.
    Other ground truth: the normalised final statement (last ``\\boxed{}`` or last line) must equal
    the normalised ground truth or end with it ("The capital of France is Paris.").
    """
    if ground_truth is None or text is None:
        return False
    gt = str(ground_truth).strip()
    gt_num = parse_number(gt)
    if gt_num is not None:
        got = final_number(text)
        return got is not None and got == gt_num
    norm_gt = normalise_text(gt)
    if not norm_gt:
        return False
    body = strip_reasoning(text)
    last = normalise_text(final_answer(body))
    # "Paris" or "The capital of France is Paris." (the final statement ends with the answer)
    return last == norm_gt or last.endswith(" " + norm_gt) or normalise_text(body) == norm_gt
