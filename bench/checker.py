"""Benchmark: the answer checker's time per answer, and what it adds to a step's reward stage.

4,096 mixed answers in groups of 12 sharing a ground truth (8 rollouts + 4 teacher answers of one
prompt), weighted roughly like MATH / GSM8K / AIME training sets: integers (most in ``\\boxed{}``, some in
GSM8K's ``#### N``), AIME keys with leading zeros, thousands separators, and LaTeX: fractions, decimals
against fractions, radicals, polynomials, pi, sets, intervals, units; a few plain-text answers. About
half are right; every (ground truth, answer) pair is distinct, so nothing comes from the checker's
memory. Prints:

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


def _boxed(rng: random.Random, i: int, value: str, lead: str) -> str:
    """A model's answer ending in ``\\boxed{value}`` (what "put your final answer in \\boxed{}" prompts get)."""
    return f"Attempt {i}. {lead} Therefore the answer is $\\boxed{{{value}}}$."


def _integer(rng: random.Random, i: int, right: bool) -> tuple[str, str]:  # MATH / GSM8K integer answers
    n = rng.randint(-20, 5000)
    got = n if right else n + rng.choice([-10, -1, 1, 2])
    return str(n), _boxed(rng, i, str(got), f"Combining the {rng.randint(2, 9)} cases gives {got}.")


def _gsm8k(rng: random.Random, i: int, right: bool) -> tuple[str, str]:  # GSM8K's own "#### N" format
    a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(1, 50)
    gt = a * b + c
    got = gt if right else gt + rng.choice([-10, -1, 1, 2, 10])
    return str(gt), (f"Step {i}: She buys {b} packs of {a} cards, so {a} * {b} = {a * b} cards.\n"
                     f"Then she gets {c} more: {a * b} + {c} = {got}.\n#### {got}")


def _money(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    n = rng.randint(1, 40) * 1000
    got = n if right else n + 1000
    return f"{n:,}", _boxed(rng, i, f"{got:,}", f"In total they spend ${got:,} on the trip.")


def _aime(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    n = rng.randint(0, 999)
    return f"{n:03d}", _boxed(rng, i, str(n if right else (n + 7) % 1000), "Taking the residue mod 1000,")


def _fraction(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    p, q = rng.randint(1, 9), rng.randint(11, 19)
    return f"\\frac{{{p}}}{{{q}}}", _boxed(rng, i, f"\\frac{{{p if right else p + 1}}}{{{q}}}",
                                          f"Dividing both sides by {q},")


def _decimal(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    q = rng.choice([2, 4, 5, 8])
    p = rng.randint(1, q - 1)
    value = p / q if right else p / q + 0.1
    return f"\\frac{{{p}}}{{{q}}}", _boxed(rng, i, f"{value:g}", "As a decimal the probability is")


def _radical(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    n, d = rng.choice([2, 3, 5, 6, 7]), rng.randint(2, 9)
    return (f"\\frac{{\\sqrt{{{n}}}}}{{{d}}}",
            f"Line {i}. Rationalising, the length is $\\sqrt{{{n}}}/{d if right else d + 1}$.")


def _poly(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    a, b = rng.randint(2, 9), rng.randint(1, 9)
    return f"{a}x^2+{b}", _boxed(rng, i, f"{b if right else b + 1} + {a}x^2", "Expanding,")


def _pi(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    d = rng.choice([2, 3, 4, 6])
    return f"\\pi/{d}", _boxed(rng, i, f"\\frac{{\\pi}}{{{d if right else d + 1}}}", "The angle is")


def _set(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    xs = rng.sample(range(-9, 10), 3)
    shown = list(reversed(xs)) if right else [xs[0], xs[1], xs[2] + 20]
    return (f"\\{{{','.join(map(str, xs))}\\}}",
            f"Root {i}: the solutions are $\\{{{', '.join(map(str, shown))}\\}}$.")


def _interval(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    a, b = rng.randint(-9, 0), rng.randint(1, 9)
    return f"({a},{b}]", _boxed(rng, i, f"{'(' if right else '['}{a}, {b}]", "So x lies in")


def _units(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    n = rng.randint(2, 99)
    return str(n), _boxed(rng, i, f"{n if right else n + 3} \\text{{ cm}}", "The side is")


def _text(rng: random.Random, i: int, right: bool) -> tuple[str, str]:
    city = rng.choice(["Paris", "Lima", "Oslo", "Cairo", "Quito"])
    return city, f"Question {i}: the capital is {city if right else 'Berlin'}."


KINDS = {"integer": _integer, "gsm8k": _gsm8k, "money": _money, "aime": _aime, "fraction": _fraction,
         "decimal": _decimal, "radical": _radical, "polynomial": _poly, "pi": _pi, "set": _set,
         "interval": _interval, "units": _units, "text": _text}
# roughly the answer types of MATH / GSM8K / AIME training sets: mostly integers, some LaTeX
WEIGHTS = {"integer": 40, "gsm8k": 10, "money": 3, "aime": 12, "fraction": 8, "decimal": 3, "radical": 6,
           "polynomial": 5, "pi": 3, "set": 2, "interval": 2, "units": 3, "text": 3}
GROUP = 12  # answers per prompt (8 rollouts + 4 teacher answers) share a ground truth


def mixed_answers(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` distinct (kind, ground truth, answer) triples, in groups of GROUP sharing a ground truth."""
    rng = random.Random(seed)
    kinds = [k for k, w in WEIGHTS.items() for _ in range(w)]
    out: list[tuple[str, str, str]] = []
    for g in range((n + GROUP - 1) // GROUP):
        kind = rng.choice(kinds)
        for j in range(GROUP):
            # the same draws for every answer of the group (the same ground truth); i and right differ
            out.append((kind, *KINDS[kind](random.Random(f"{seed}:{g}"), g * GROUP + j, rng.random() < 0.5)))
    return out[:n]


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

    assert rollouts + 4 == GROUP, "the generator makes groups of 8 rollouts + 4 teacher answers"
    items = mixed_answers(n_groups * GROUP, seed=1)
    proc, base_url = start_server(latency)
    try:
        results: dict[str, list[float]] = defaultdict(list)
        for r in range(repeats):
            for checker in ("rule", "math_verify"):
                answers = mixed_answers(n_groups * GROUP, seed=100 + r)  # fresh answers: nothing remembered
                groups = []
                for g in range(n_groups):
                    chunk = answers[g * GROUP:(g + 1) * GROUP]
                    groups.append(GroupInput(prompt=f"Problem {r}.{g} ({chunk[0][0]})", ground_truth=chunk[0][1],
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
    kinds = defaultdict(int)
    for k, _, _ in items:
        kinds[k] += 1
    print(f"checker benchmark: {len(items)} mixed answers ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    print("1. in this process, one after another:")
    in_process(items)
    print("2. through the checker pool (worker processes, as in training):")
    through_pool(items)
    if not args.skip_stage:
        print("3. a step's reward stage:")
        reward_stage(args.latency, args.groups, args.rollouts, args.repeats)


if __name__ == "__main__":
    main()
