"""Answer checking: math-verify for math ground truths (LaTeX answers of the AIME, MATH and GSM8K kinds),
the rule-based check for plain text, exact and python: checkers, and the worker pool with its
per-answer timeout (real worker processes)."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from engine.errors import ConfigError
from engine.tasks.checker_pool import CheckerPool
from engine.tasks.checkers import (Checked, check_exact, check_math_verify, check_rule, is_math_ground_truth,
                                   resolve_checker, validate_checker_spec)

# (ground truth, answer, correct)
MATH_CASES = [
    # MATH: fractions, radicals, sets, intervals, polynomials, pi, units
    (r"\frac{1}{2}", r"So $x = \boxed{\frac{1}{2}}$.", True),
    (r"\frac{1}{2}", r"The answer is $\boxed{0.5}$", True),
    ("0.5", r"\boxed{\frac{1}{2}}", True),
    (r"\frac{1}{2}", r"\boxed{\frac{1}{3}}", False),
    (r"\frac{\sqrt2}{2}", r"The answer is $\sqrt{2}/2$.", True),
    (r"\frac{\sqrt{2}}{2}", r"$\boxed{\frac{1}{\sqrt{2}}}$", True),
    (r"\frac{\sqrt2}{2}", r"$\boxed{\sqrt{2}}$", False),
    (r"\{1,2,3\}", r"The solutions are $\{3, 2, 1\}$.", True),
    (r"\{1,2,3\}", r"$\{1, 2\}$", False),
    ("(0,1]", r"The interval is $(0, 1]$.", True),
    ("(0,1]", r"$\boxed{[0, 1]}$", False),
    ("x^2+1", r"$\boxed{1 + x^2}$", True),
    (r"\pi/2", r"$\frac{\pi}{2}$", True),
    ("10", r"The side is $\boxed{10 \text{ cm}}$.", True),
    ("10", r"The length is $10\text{ cm}$", True),
    # AIME: integers 000-999, leading zeros in the key
    ("073", r"Therefore the answer is $\boxed{73}$.", True),
    ("204", r"The final answer is $\boxed{204}$", True),
    ("204", r"$\boxed{240}$", False),
    # GSM8K: "#### N", thousands separators, money
    ("18", "She sells 16 - 3 - 4 = 9 eggs, and makes 9 * 2 = $18 every day.\n#### 18", True),
    ("1,000", "They need 1000 bricks in total. The answer is 1000", True),
    ("72", "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 71 clips altogether.\n#### 71", False),
    # reasoning before </think> is not the answer
    ("7", r"<think>maybe the answer is 5</think> The answer is $\boxed{7}$", True),
]


@pytest.mark.parametrize("gt, answer, correct", MATH_CASES)
def test_math_verify_decides_math_ground_truths(gt, answer, correct):
    assert check_math_verify(answer, gt) == Checked(correct, "math_verify")


def test_the_rule_based_check_misses_what_math_verify_finds():
    missed = [(gt, a) for gt, a, ok in MATH_CASES if ok and not check_rule(a, gt).correct]
    assert len(missed) >= 6  # fractions vs decimals, radicals, sets, intervals, polynomials, pi


@pytest.mark.parametrize("gt, answer, correct", [
    ("Paris", "The capital of France is Paris.", True),
    ("Paris", "sirap", False),  # parsed as LaTeX, "Paris" would be a product of symbols
    ("yes", "Yes", True),
    ("B", r"\boxed{B}", True),
    (r"\text{Monday}", "It is Monday.", True),
])
def test_plain_text_ground_truths_go_to_the_rule_based_check(gt, answer, correct):
    assert not is_math_ground_truth(gt)
    assert check_math_verify(answer, gt) == Checked(correct, "rule")


def test_exact_compares_the_final_statement():
    assert check_exact(r"so \boxed{7}", "7") == Checked(True, "exact")
    assert check_exact("The sum is 3 + 4.\n7.", "7").correct
    assert not check_exact("7.0", "7").correct
    assert not check_exact("paris", "Paris").correct


def test_checker_specs(tmp_path, monkeypatch):
    for spec in ("math_verify", "rule", "exact", "python:my_checks:is_right"):
        assert validate_checker_spec(spec) == spec
    with pytest.raises(ConfigError, match="unknown checker 'mathverify'"):
        validate_checker_spec("mathverify")
    with pytest.raises(ConfigError, match="python:module:function"):
        validate_checker_spec("python:no_function")
    (tmp_path / "my_checks.py").write_text(textwrap.dedent("""
        def is_right(answer, ground_truth):
            return answer.strip().lower() == ground_truth.lower()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    check = resolve_checker("python:my_checks:is_right")
    assert check("<think>no</think> PARIS", "paris") == Checked(True, "python:my_checks:is_right")
    with pytest.raises(ConfigError, match="cannot import module 'nope_checks'"):
        resolve_checker("python:nope_checks:f")
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        resolve_checker("python:my_checks:missing")


# -- the worker pool -------------------------------------------------------------------------------

CHECKS_MODULE = """
import signal, sys, time

def spin(answer, ground_truth):          # a Python loop: SIGALRM interrupts it inside the worker
    if answer == "spin":
        while True:
            pass
    return answer == ground_truth

def stuck(answer, ground_truth):         # out of SIGALRM's reach: the pool has to kill the worker
    if answer == "stuck":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return answer == ground_truth

def noisy(answer, ground_truth):         # prints do not reach the protocol
    print("checking", answer)
    sys.stdout.flush()
    return answer == ground_truth

def broken(answer, ground_truth):
    raise ValueError("no idea")

def slow(answer, ground_truth):
    time.sleep(0.5)
    return True
"""


@pytest.fixture
def checks_module(tmp_path, monkeypatch):
    (tmp_path / "pool_checks.py").write_text(CHECKS_MODULE)
    monkeypatch.chdir(tmp_path)  # the worker finds user modules in the working directory
    monkeypatch.syspath_prepend(str(tmp_path))
    return "pool_checks"


def test_the_pool_checks_latex_answers_in_worker_processes():
    pool = CheckerPool("math_verify", timeout_s=30, workers=2)
    try:
        items = [(answer, gt) for gt, answer, _ in MATH_CASES]
        got = pool.check_many(items)
        assert got == [Checked(ok, "math_verify") for _, _, ok in MATH_CASES]
        assert pool.workers_started == 2
        assert pool.check_many(items[:3]) == got[:3]  # remembered: no new work
        assert asyncio.run(pool.acheck_many([("Paris", "Paris")])) == [Checked(True, "rule")]
    finally:
        pool.close()


def test_a_pathological_answer_times_out_and_the_next_one_is_still_checked(checks_module):
    pool = CheckerPool(f"python:{checks_module}:spin", timeout_s=0.5, workers=1)
    try:
        got = pool.check_many([("spin", "x"), ("x", "x"), ("y", "x")])
        name = f"python:{checks_module}:spin"
        assert got == [Checked(False, f"{name}:timeout"), Checked(True, name), Checked(False, name)]
        assert pool.workers_started == 1  # interrupted inside the worker, which lived on
    finally:
        pool.close()


def test_a_worker_stuck_out_of_reach_is_killed_and_replaced(checks_module):
    pool = CheckerPool(f"python:{checks_module}:stuck", timeout_s=0.3, workers=1)
    try:
        name = f"python:{checks_module}:stuck"
        assert pool.check_many([("stuck", "x"), ("x", "x")]) == [Checked(False, f"{name}:timeout"),
                                                                  Checked(True, name)]
        assert pool.workers_started == 2
    finally:
        pool.close()


def test_prints_errors_and_unimportable_checkers(checks_module):
    noisy = CheckerPool(f"python:{checks_module}:noisy", timeout_s=5, workers=1)
    broken = CheckerPool(f"python:{checks_module}:broken", timeout_s=5, workers=1)
    missing = CheckerPool("python:no_such_module_here:f", timeout_s=5, workers=1)
    try:
        assert noisy.check_many([("a", "a"), ("b", "a")]) == [Checked(True, f"python:{checks_module}:noisy"),
                                                              Checked(False, f"python:{checks_module}:noisy")]
        assert broken.check("a", "a") == Checked(None, f"python:{checks_module}:broken:error")
        assert missing.check("a", "a") == Checked(None, "python:no_such_module_here:f:error")
        assert "cannot import module 'no_such_module_here'" in missing.broken
    finally:
        for p in (noisy, broken, missing):
            p.close()


async def test_checking_never_blocks_the_event_loop(checks_module):
    pool = CheckerPool(f"python:{checks_module}:slow", timeout_s=10, workers=1)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    try:
        await asyncio.sleep(0.05)
        before = ticks
        assert await pool.acheck_many([("a", "a")]) == [Checked(True, f"python:{checks_module}:slow")]
        assert ticks > before  # the loop kept running while the worker slept
    finally:
        task.cancel()
        await asyncio.to_thread(pool.close)


def test_rule_and_exact_run_in_process():
    pool = CheckerPool("rule", workers=1)
    assert pool.check_many([("The answer is 7", "7"), ("8", "7")]) == [Checked(True, "rule"), Checked(False, "rule")]
    assert pool.workers_started == 0


def test_timeout_must_be_positive():
    with pytest.raises(ValueError):
        CheckerPool("rule", timeout_s=0)


def _numeric_pairs(n: int = 200):
    import random

    rng = random.Random(7)
    forms = [lambda p, q: str(p), lambda p, q: f"{p:03d}" if 0 <= p < 1000 else str(p),
             lambda p, q: f"{p:,}", lambda p, q: f"{p}{{,}}000" if 0 < p < 1000 else str(p),
             lambda p, q: f"\\frac{{{p}}}{{{q}}}", lambda p, q: f"{p}/{q}", lambda p, q: f"{p / q:g}",
             lambda p, q: f"{p / q:.3f}", lambda p, q: f"\\dfrac{{{p}}}{{{q}}}", lambda p, q: f"{p / q:.6f}",
             lambda p, q: f"{p / q + 3e-6:.7f}"]
    pairs = []
    for _ in range(n):
        p, q = rng.randint(-50, 5000), rng.choice([1, 2, 3, 4, 8, 10, 16])
        gold = rng.choice(forms)(p, q)
        p2 = p if rng.random() < 0.5 else p + rng.choice([-1, 1, 10])
        boxed = rng.choice(forms)(p2, q if rng.random() < 0.8 else q + 1)
        pairs.append((gold, rng.choice([f"So the answer is $\\boxed{{{boxed}}}$.", f"\\boxed{{ {boxed} }}",
                                        f"Adding up: 3 + 4 = 7, then \\boxed{{{boxed}}}"])))
    return pairs


def test_the_numeric_shortcut_agrees_with_the_full_math_verify_path():
    from engine.tasks.checkers import _numeric_shortcut

    pairs = _numeric_pairs()
    decided = [(gt, a) for gt, a in pairs if _numeric_shortcut(a, gt) is not None]
    assert len(decided) > len(pairs) // 2  # most boxed numbers skip the LaTeX parser
    disagree = [(gt, a) for gt, a in decided
                if check_math_verify(a, gt) != check_math_verify(a, gt, shortcut=False)]
    assert disagree == []
