"""Answer checkers: is an answer's final result right, given the ground truth?

``task.checker`` picks one (:func:`resolve_checker`):

- ``math_verify`` (default): HuggingFace's math-verify, the library TRL, open-r1 and verl's math scorers
  use. The ground truth (wrapped in ``\\boxed{}`` unless it already has one or ``$`` delimiters) and the
  answer are parsed to SymPy and compared: ``\\boxed{\\frac{1}{2}}`` equals ``0.5``, ``\\sqrt{2}/2`` equals
  ``\\frac{\\sqrt2}{2}``, ``\\{3,2,1\\}`` equals ``\\{1,2,3\\}``, ``(0,1]`` is not ``[0,1]``, ``10\\text{ cm}``
  equals ``10``. A ground truth written as plain text (no digit, no LaTeX command, no operator or
  bracket: "Paris", "yes", "B") or one math-verify cannot parse is checked by the rule-based check
  instead, and recorded as ``rule``.
- ``rule``: :func:`engine.tasks.check_answer` (the final number for a numeric ground truth, else the
  normalised final statement).
- ``exact``: the final statement (the last ``\\boxed{}``, else the last non-empty line), trimmed and
  without a trailing period, is exactly the ground truth (trimmed).
- ``python:module:function``: your own ``function(answer: str, ground_truth: str) -> bool``; the module
  is imported from the Python path (the working directory comes last on it).

Every checker sees the answer with reasoning up to ``</think>`` removed. A check returns
:class:`Checked`: the verdict and the name of the checker that decided it (the run store records it).
These functions run wherever they are called and may be slow (SymPy): callers in the training path go
through :mod:`engine.tasks.checker_pool`, which runs them in worker processes with a per-answer timeout.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable

from engine.errors import ConfigError
from engine.tasks import check_answer, final_answer, strip_reasoning

__all__ = ["Checked", "CheckFn", "BUILTIN_CHECKERS", "resolve_checker", "validate_checker_spec",
           "is_math_ground_truth", "check_rule", "check_exact", "check_math_verify"]

BUILTIN_CHECKERS = ("math_verify", "rule", "exact")
CHECKER_HINT = "use math_verify, rule, exact or python:module:function"


@dataclass(frozen=True)
class Checked:
    """A checker's verdict: ``correct`` (None when unknown) and which checker decided it.

    ``checker`` is the checker's name (``math_verify``, ``rule``, ``exact``, ``python:mod:fn``), with
    ``:timeout`` appended when the answer took longer than the per-answer limit (then ``correct`` is
    False, as math-verify itself rules on a timeout) and ``:error`` when the checker raised or its worker
    died (then ``correct`` is None).
    """

    correct: bool | None
    checker: str


CheckFn = Callable[[str, str], Checked]


# ---------------------------------------------------------------------------------------------
# rule and exact

def check_rule(answer: str, ground_truth: str) -> Checked:
    return Checked(bool(check_answer(strip_reasoning(answer), ground_truth)), "rule")


def _final_statement(answer: str) -> str:
    return final_answer(strip_reasoning(answer)).strip().rstrip(".").strip()


def check_exact(answer: str, ground_truth: str) -> Checked:
    return Checked(_final_statement(answer) == str(ground_truth).strip(), "exact")


# ---------------------------------------------------------------------------------------------
# math-verify

# Something only mathematics has: a digit, a LaTeX command, an operator or a bracket.
_MATH_SIGN = re.compile(r"[0-9\\^_=+*/<>()\[\]{}|√π∞]")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox)\s*\{([^{}]*)\}")


def _unwrap_text(gt: str) -> str:
    """``\\text{Monday}`` -> ``Monday`` (also ``\\textbf``, ``\\mathrm``...), and ``$...$`` delimiters off."""
    s = gt.strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$").strip()
    return _TEXT_WRAPPER.sub(lambda m: m.group(1), s).strip()


def is_math_ground_truth(ground_truth: str) -> bool:
    """Whether math-verify should decide: the ground truth has a digit, a LaTeX command other than a text
    wrapper, an operator or a bracket. Plain words ("Paris", "yes", "B") go to the rule-based check:
    parsed as LaTeX they would become products of symbols ("Paris" = "sirap")."""
    return bool(_MATH_SIGN.search(_unwrap_text(str(ground_truth))))


_math_verify: Any = None


def _mv() -> Any:
    """The math_verify module, imported once, its "timeout disabled" warning silenced (our callers bound
    the time per answer themselves: math-verify's own timeout uses SIGALRM and fails outside the main thread)."""
    global _math_verify
    if _math_verify is None:
        try:
            import math_verify
        except ImportError as err:  # pragma: no cover - a core dependency
            raise ConfigError("task.checker is math_verify but the math-verify package is not installed",
                              hint="pip install 'math-verify>=0.8,<0.10' (a dependency of ropd-tui: "
                                   "reinstall with pip install -e .), or set task.checker=rule") from err
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
        _math_verify = math_verify
    return _math_verify


@lru_cache(maxsize=4096)
def _parsed_gold(ground_truth: str) -> tuple:
    mv = _mv()
    gt = ground_truth.strip()
    text = gt if ("\\boxed" in gt or "$" in gt) else "\\boxed{" + gt + "}"
    return tuple(mv.parse(text, extraction_config=[mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
                          parsing_timeout=None))


# A number as written in a ground truth or a \boxed{} answer: 42, -7, 073, 1,000, 1{,}000, 0.25, 3/4, \frac{3}{4}
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+|-?\d+/\d+|-?\\[dt]?frac\{\d+\}\{\d+\}")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")


def _plain_number(text: str) -> Fraction | None:
    s = text.strip().replace("{,}", ",").replace("\\!", "").replace(" ", "")
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    m = _FRAC.fullmatch(s)
    try:
        if m:
            return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _only_boxed(text: str) -> str | None:
    """The content of the answer's only ``\\boxed{}`` (braces balanced); None for none, several, or unclosed."""
    start = text.find("\\boxed{")
    if start < 0 or text.find("\\boxed", start + 1) >= 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _numeric_shortcut(answer: str, ground_truth: str) -> bool | None:
    """math-verify's verdict, without its LaTeX parser, where it is certain; None elsewhere.

    Only for an answer with exactly one ``\\boxed{}`` and no "final answer" phrase (then math-verify reads
    the boxed content, nothing else) against a ground truth without delimiters: the same text is right; two
    plain numbers decide when equal, when both are exact (integers, fractions: math-verify compares them
    exactly) or when they differ by more than its rounding of decimals to 6 places could hide. ANTLR's LaTeX parse costs 1-60 ms per answer; this, microseconds.
    tests/test_checkers.py checks that it agrees with the full path.
    """
    if "$" in ground_truth or "\\boxed" in ground_truth or "final answer" in answer.lower():
        return None
    boxed = _only_boxed(answer)
    if boxed is None:
        return None
    if "".join(boxed.split()) == "".join(ground_truth.split()):
        return True
    got, want = _plain_number(boxed), _plain_number(ground_truth)
    if got is None or want is None:
        return None
    if got == want:
        return True
    exact = "." not in boxed and "." not in ground_truth  # math-verify compares exact numbers exactly,
    if exact or abs(got - want) > Fraction(1, 10**5):       # decimals after rounding to 6 places
        return False
    return None


def check_math_verify(answer: str, ground_truth: str, *, shortcut: bool = True) -> Checked:
    """math-verify for a math ground truth, the rule-based check for plain text (see the module doc).
    ``shortcut``: decide a boxed plain number without the LaTeX parser where math-verify's verdict is certain."""
    gt = str(ground_truth)
    if not is_math_ground_truth(gt):
        return Checked(check_rule(answer, _unwrap_text(gt)).correct, "rule")
    text = strip_reasoning(answer)
    # a plain-number ground truth is one math-verify reads: no need to parse it before the shortcut
    fast = _numeric_shortcut(text, gt) if shortcut and _plain_number(gt) is not None else None
    if fast is not None:
        return Checked(fast, "math_verify")
    gold = _parsed_gold(gt)
    if not gold:  # math-verify cannot read this ground truth
        return check_rule(answer, gt)
    fast = _numeric_shortcut(text, gt) if shortcut else None
    if fast is not None:
        return Checked(fast, "math_verify")
    mv = _mv()
    pred = mv.parse(text, extraction_config=[mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
                    parsing_timeout=None)
    return Checked(bool(pred) and bool(mv.verify(list(gold), pred, timeout_seconds=None)), "math_verify")


# ---------------------------------------------------------------------------------------------
# choosing one

def validate_checker_spec(spec: str) -> str:
    """``spec`` when it names a checker, else ConfigError (the python: form is only split, not imported)."""
    spec = str(spec or "").strip()
    if spec in BUILTIN_CHECKERS:
        return spec
    if spec.startswith("python:"):
        module, _, func = spec[len("python:"):].rpartition(":")
        if module and func and all(part.isidentifier() for part in module.split(".")) and func.isidentifier():
            return spec
        raise ConfigError(f"task.checker: {spec!r} is not of the form python:module:function",
                          hint="e.g. python:my_checks:is_correct for def is_correct(answer, ground_truth) -> bool "
                               "in my_checks.py")
    raise ConfigError(f"task.checker: unknown checker {spec!r}", hint=CHECKER_HINT)


def _python_checker(spec: str) -> CheckFn:
    module_name, _, func_name = spec[len("python:"):].rpartition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and os.path.abspath(cwd) not in {os.path.abspath(p or os.curdir) for p in sys.path}:
        sys.path.append(cwd)  # as in our subprocesses (engine.runs.entrypoint): last, so it shadows nothing
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's module
        raise ConfigError(f"task.checker {spec}: cannot import module {module_name!r} "
                          f"({type(err).__name__}: {err})",
                          hint="put the module on the Python path (the directory you start ropd-tui from "
                               "works) or fix the name") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"task.checker {spec}: module {module_name!r} has no function {func_name!r}",
                          hint="define def {0}(answer: str, ground_truth: str) -> bool".format(func_name))

    def check(answer: str, ground_truth: str) -> Checked:
        return Checked(bool(fn(strip_reasoning(answer), ground_truth)), spec)

    return check


def resolve_checker(spec: str) -> CheckFn:
    """The check function for a ``task.checker`` value (ConfigError for an unknown or unimportable one)."""
    spec = validate_checker_spec(spec)
    if spec == "rule":
        return check_rule
    if spec == "exact":
        return check_exact
    if spec == "math_verify":
        _mv()
        return check_math_verify
    return _python_checker(spec)
