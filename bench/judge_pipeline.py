"""Benchmark: the reward stage of one training step against a judge with a fixed latency.

32 groups x (8 rollouts + 4 teacher answers) are scored with the LLM judge path (openai SDK, real
HTTP) against the loopback judge server (tests/loopback_server.py) running in its own process with
a fixed per-request latency (200 ms by default). For each judge concurrency (4, 16, 64) it prints:

* the reward-stage wall time (``Scorer.score_batch``),
* the two-round-trip lower bound (rubricator + verifier latency: no pipeline can beat it),
* their ratio (target: <= 1.2 at concurrency 64),
* the peak number of requests in flight at the server,
* the judge prompt tokens of the step (as reported by the server's usage).

Usage: ``python bench/judge_pipeline.py [--latency 0.2] [--concurrency 4 16 64] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import load_config  # noqa: E402
from engine.judging.client import aclose_loop_clients  # noqa: E402
from engine.scoring.scorer import Scorer  # noqa: E402
from engine.types import GroupInput  # noqa: E402


def make_groups(n: int, rollouts: int, teachers: int) -> list[GroupInput]:
    groups = []
    for g in range(n):
        a, b = 17 + g, 40 + 7 * g
        right = a + b
        t_answers = [f"We add {a} and {b}: {a} + {b} = {right}.\nThe answer is {right}." for _ in range(teachers)]
        rolls = []
        for i in range(rollouts):
            if i % 3 == 0:
                rolls.append(f"{a} + {b} = {right}. The answer is {right}.")
            elif i % 3 == 1:
                rolls.append(f"Adding gives {right + i}. The answer is {right + i}.")
            else:
                rolls.append(f"I think the total is {right}.")
        groups.append(GroupInput(prompt=f"Tom has {a} marbles and finds {b} more. How many marbles does he have?",
                                 rollouts=rolls, teacher_answers=t_answers, ground_truth=str(right), uid=f"b{g}"))
    return groups


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "loopback_server.py"), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"loopback server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def http(base_url: str, path: str, body: dict | None = None) -> dict:
    root = base_url.rsplit("/v1", 1)[0]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(root + path, data=data, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


async def run_level(base_url: str, concurrency: int, groups: list[GroupInput], repeats: int,
                    http_backend: str = "auto") -> dict:
    overrides = ["judge.mode=llm", f"judge.concurrency={concurrency}", "scorer.k=4", "scorer.verifier_chunk_size=16",
                 f"judge.http_backend={http_backend}"]
    for role in ("rubricator", "verifier"):
        overrides += [f"judge.{role}.base_url={base_url}", f"judge.{role}.model=bench-judge"]
    cfg = load_config(None, overrides)
    scorer = Scorer(cfg)
    try:
        await scorer.score_batch(groups[:2])  # warm up: connections, imports
        best = None
        walls = []
        for _ in range(repeats):
            http(base_url, "/_reset", {})
            cpu0 = time.process_time()
            batch = await scorer.score_batch(groups)
            cpu = time.process_time() - cpu0
            stats = http(base_url, "/_stats")
            failed = sum(g.status == "failed" for g in batch.groups)
            tokens = sum(c.prompt_tokens or 0 for g in batch.groups for c in g.calls)
            row = {"wall_s": batch.wall_s, "peak": stats["max_in_flight"], "requests": stats["requests"],
                   "prompt_tokens": tokens, "failed": failed, "client_cpu_s": cpu}
            walls.append(batch.wall_s)
            if best is None or row["wall_s"] < best["wall_s"]:
                best = row
        best["median_wall_s"] = statistics.median(walls)
        return best
    finally:
        await aclose_loop_clients()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.2, help="judge latency per request, seconds (default 0.2)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--teachers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per level; the best is printed")
    ap.add_argument("--http-backend", choices=["auto", "httpx", "aiohttp"], default="auto",
                    help="the openai SDK transport (judge.http_backend)")
    args = ap.parse_args(argv)

    groups = make_groups(args.groups, args.rollouts, args.teachers)
    proc, base_url = start_server(args.latency)
    try:
        bound = 2 * args.latency
        print(f"judge pipeline: {args.groups} groups x ({args.rollouts} rollouts + {args.teachers} teacher answers), "
              f"loopback judge latency {args.latency * 1000:.0f} ms, server {base_url}, "
              f"http backend {args.http_backend}")
        print(f"{'concurrency':>11} {'wall s':>8} {'bound s':>8} {'ratio':>6} {'peak in flight':>15} "
              f"{'requests':>9} {'prompt tokens/step':>19} {'failed':>7} {'client cpu s':>13} {'slot bound s':>13} "
              f"{'median wall s':>14}")
        for c in args.concurrency:
            row = asyncio.run(run_level(base_url, c, groups, args.repeats, args.http_backend))
            # with c slots, the requests of the step need at least ceil(requests / c) round trips
            slot_bound = max(2, math.ceil(row["requests"] / c)) * args.latency
            print(f"{c:>11} {row['wall_s']:>8.3f} {bound:>8.3f} {row['wall_s'] / bound:>6.2f} {row['peak']:>15} "
                  f"{row['requests']:>9} {row['prompt_tokens']:>19} {row['failed']:>7} {row['client_cpu_s']:>13.3f} "
                  f"{slot_bound:>13.3f} {row['median_wall_s']:>14.3f}")
        print(f"wall = best of {args.repeats} timed runs after a warm-up; ratio = wall / (one rubricator + one "
              "verifier round trip); target <= 1.2 at concurrency 64")
        print(f"machine load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
