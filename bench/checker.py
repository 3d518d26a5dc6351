"""Benchmark: the answer checker's time per answer, and what it adds to a step's reward stage.

4,096 mixed answers (GSM8K-style numbers, MATH-style LaTeX: fractions, radicals, sets, intervals,
polynomials, pi, units; AIME-style integers; plain text), about half right, every (ground truth, answer)
pair distinct so nothing is answered from the checker's memory. Prints:

1. time per answer, checked in this process one after another (``math_verify`` and ``rule``), by kind;
2. time per answer through the checker pool (worker processes, the path training uses), 1 and 2 workers;
3. the reward stage of one step against the loopback judge server at a fixed latency (200 ms by
   default; LLM judge path, real HTTP): wall time with ``task.checker=rule`` and ``math_verify``, and
   the difference, as a share of the stage (the issue's target: under 5%). Checks start when a group's
   answers are ready and run in the worker processes while the judge works.

Usage: ``python bench/checker.py [--answers 4096] [--latency 0.2] [--groups 32] [--rollouts 8]``
(a few minutes on 2 cores; ``--skip-stage`` for parts 1-2 only).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine.tasks.checker_pool import CheckerPool  # noqa: E402
from engine.tasks.checkers import check_math_verify, check_rule  # noqa: E402


def _gsm8k(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(1, 50)
    gt = a * b + c
    got = gt if right else gt + rng.choice([-10, -1, 1, 2, 10])
    return str(gt), (f"Step {i}: She buys {b} packs of {a} cards, so {a} * {b} = {a * b} cards.\n"
                     f"Then she gets {c} more: {a * b} + {c} = {got}.\n#### {got}")


def _money(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    n = rng.randint(1, 40) * 1000
    got = n if right else n + 1000
    return f"{n:,}", f"Case {i}. In total they spend ${got:,} on the trip. The answer is {got}"


def _fraction(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    p, q = rng.randint(1, 9), rng.randint(11, 19)
    wrong = f"\\frac{{{p + 1}}}{{{q}}}"
    return f"\\frac{{{p}}}{{{q}}}", (f"Problem {i}. Dividing both sides by {q} we get "
                                     f"$x = \\boxed{{{f'{p}/{q}' if right else wrong}}}$.")


def _decimal(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    q = rng.choice([2, 4, 5, 8])
    p = rng.randint(1, q - 1)
    value = p / q if right else p / q + 0.1
    return f"\\frac{{{p}}}{{{q}}}", f"Attempt {i}: the probability is $\\boxed{{{value:g}}}$"


def _radical(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    n = rng.choice([2, 3, 5, 6, 7])
    d = rng.randint(2, 9)
    return (f"\\frac{{\\sqrt{{{n}}}}}{{{d}}}", f"Line {i}. Rationalising, the length is "
            f"$\\sqrt{{{n}}}/{d if right else d + 1}$.")


def _set(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    xs = rng.sample(range(-9, 10), 3)
    shown = list(reversed(xs)) if right else [xs[0], xs[1], xs[2] + 20]
    return (f"\\{{{','.join(map(str, xs))}\\}}", f"Root {i}: the solutions are "
            f"$\\{{{', '.join(map(str, shown))}\\}}$.")


def _interval(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    a = rng.randint(-9, 0)
    b = rng.randint(1, 9)
    return f"({a},{b}]", f"Region {i}: so $x \\in \\boxed{{{'(' if right else '['}{a}, {b}]}}$"


def _poly(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    a, b = rng.randint(2, 9), rng.randint(1, 9)
    return f"{a}x^2+{b}", f"Expanding case {i} gives $\\boxed{{{b if right else b + 1} + {a}x^2}}$"


def _pi(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    d = rng.choice([2, 3, 4, 6])
    return f"\\pi/{d}", f"Angle {i}: $\\theta = \\frac{{\\pi}}{{{d if right else d + 1}}}$"


def _units(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    n = rng.randint(2, 99)
    return str(n), f"Side {i}: the length is $\\boxed{{{n if right else n + 3} \\text{{ cm}}}}$."


def _aime(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    n = rng.randint(0, 999)
    return f"{n:03d}", f"Trial {i}. Therefore the answer is $\\boxed{{{n if right else (n + 7) % 1000}}}$."


def _text(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    city = rng.choice(["Paris", "Lima", "Oslo", "Cairo", "Quito"])
    other = "Berlin"
    return city, f"Question {i}: the capital is {city if right else other}."


KINDS = {"gsm8k": _gsm8k, "money": _money, "fraction": _fraction, "decimal": _decimal, "radical": _radical,
         "set": _set, "interval": _interval, "polynomial": _poly, "pi": _pi, "units": _units, "aime": _aime,
         "text": _text}
WEIGHTS = {"gsm8k": 4, "money": 1, "fraction": 1, "decimal": 1, "radical": 1, "set": 1, "interval": 1,
           "polynomial": 1, "pi": 1, "units": 1, "aime": 2, "text": 1}


def mixed_answers(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` distinct (kind, ground truth, answer) triples."""
    rng = random.Random(seed)
    kinds = [k for k, w in WEIGHTS.items() for _ in range(w)]
    return [(kind, *KINDS[kind](rng, i, rng.random() < 0.5)) for i, kind in enumerate(rng.choice(kinds)
                                                                                      for _ in range(n))]


def in_process(items: list[tuple[str, str, str]]) -> None:
    for name, fn in (("math_verify", check_math_verify), ("rule", check_rule)):
        for _, gt, ans in items[:64]:  # warm up imports and parser caches (gold parses are cached per value)
            fn(ans, gt)
        per_kind: dict[str, list[float]] = defaultdict(list)
        t_all = time.perf_counter()
        for kind, gt, ans in items:
            t0 = time.perf_counter()
            fn(ans, gt)
            per_kind[kind].append(time.perf_counter() - t0)
        total = time.perf_counter() - t_all
        print(f"  {name:12s} {1000 * total / len(items):7.3f} ms/answer  ({total:.2f} s for {len(items)})")
        if name == "math_verify":
            cells = [f"{k} {1000 * statistics.mean(v):.2f}" for k, v in sorted(per_kind.items())]
            print("    by kind (ms):", ", ".join(cells))
            worst = max((max(v), k) for k, v in per_kind.items())
            print(f"    slowest single answer: {1000 * worst[0]:.1f} ms ({worst[1]})")


def through_pool(items: list[tuple[str, str, str]]) -> None:
    pairs = [(ans, gt) for _, gt, ans in items]
    for workers in (1, 2):
        pool = CheckerPool("math_verify", timeout_s=5.0, workers=workers)
        try:
            t0 = time.perf_counter()
            pool.check_many([(f"warm-up {i} is 1", "1") for i in range(2 * workers)])  # start the workers
            started = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = pool.check_many(pairs)
            total = time.perf_counter() - t0
        finally:
            pool.close()
        timeouts = sum(g.checker.endswith(":timeout") for g in got)
        print(f"  pool, {workers} worker{'s' if workers > 1 else ' '}: {1000 * total / len(pairs):7.3f} ms/answer "
              f"({total:.2f} s; worker start {started:.1f} s; {timeouts} timeouts)")


async def stage(base_url: str, groups, checker: str) -> float:
    from engine.config import load_config
    from engine.judging.client import aclose_loop_clients
    from engine.scoring.scorer import Scorer

    cfg = load_config(None, ["judge.mode=llm", "judge.concurrency=64", "scorer.k=4", "judge.rubricator.model=m",
                             "judge.verifier.model=m", f"judge.rubricator.base_url={base_url}",
                             f"judge.verifier.base_url={base_url}", f"task.checker={checker}"],
                      env={"OPENAI_API_KEY": "sk-bench"})
    scorer = Scorer(cfg)
    scorer.checker.check_many([(f"warm-up {i} is 1", "1") for i in range(8)])  # workers up before timing
    t0 = time.perf_counter()
    batch = await scorer.score_batch(groups)
    wall = time.perf_counter() - t0
    await aclose_loop_clients()
    failed = sum(g.status == "failed" for g in batch.groups)
    if failed:
        raise SystemExit(f"{failed} groups failed: {batch.groups[0].failure_cause}")
    return wall


def reward_stage(latency: float, n_groups: int, rollouts: int, repeats: int) -> None:
    from engine.types import GroupInput
    from judge_pipeline import start_server

    items = mixed_answers(n_groups * (rollouts + 4), seed=1)
    proc, base_url = start_server(latency)
    try:
        results: dict[str, list[float]] = defaultdict(list)
        for r in range(repeats):
            for checker in ("rule", "math_verify"):
                rng = iter(mixed_answers(n_groups * (rollouts + 4), seed=100 + r))  # fresh answers each time
                groups = []
                for g in range(n_groups):
                    chunk = [next(rng) for _ in range(rollouts + 4)]
                    groups.append(GroupInput(prompt=f"Problem {r}.{g}: {chunk[0][1]}?", ground_truth=chunk[0][1],
                                             rollouts=[a for _, _, a in chunk[:rollouts]],
                                             teacher_answers=[a for _, _, a in chunk[rollouts:]], uid=f"{r}.{g}"))
                results[checker].append(asyncio.run(stage(base_url, groups, checker)))
        rule, mv = statistics.median(results["rule"]), statistics.median(results["math_verify"])
        print(f"  {n_groups} groups x ({rollouts} rollouts + 4 teacher answers) = {len(items)} answers checked, "
              f"judge latency {1000 * latency:.0f} ms, concurrency 64, median of {repeats}:")
        print(f"  reward stage with task.checker=rule        {rule:.3f} s")
        print(f"  reward stage with task.checker=math_verify {mv:.3f} s")
        print(f"  math_verify adds {mv - rule:+.3f} s = {100 * (mv - rule) / rule:+.1f}% of the stage (target < 5%)")
    finally:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=int, default=4096)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-stage", action="store_true")
    args = ap.parse_args()
    items = mixed_answers(args.answers)
    print(f"checker benchmark: {len(items)} mixed answers, "
          f"{sum(1 for k, _, _ in items if k == 'text')} plain-text, the rest math")
    print("1. in this process, one after another:")
    in_process(items)
    print("2. through the checker pool (worker processes, as in training):")
    through_pool(items)
    if not args.skip_stage:
        print("3. a step's reward stage:")
        reward_stage(args.latency, args.groups, args.rollouts, args.repeats)


if __name__ == "__main__":
    main()
