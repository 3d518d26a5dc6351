"""Replay throughput (answers per second) against the loopback judge at a fixed latency, cold and cached.

A generated store (``tests/replay_fixtures.py``: groups of 4 student + 4 teacher answers, 4 criteria)
is replayed through the real path: openai SDK -> HTTP -> the loopback server running in its own
process (``python tests/loopback_server.py --latency ...``), results written to the store.

- cold: every judge request goes to the server (``force=True``);
- cached: the same replay again: every request is answered from the store's judge cache.

Usage: python bench/replay.py [--groups 256] [--latency 0.2] [--concurrency 32] [--mode reuse|induce|both]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "loopback_server.py"), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"loopback server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def server_stats(base_url: str) -> dict:
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{root}/_stats", timeout=10) as r:
        return json.loads(r.read())


def reset_server(base_url: str, latency: float) -> None:
    root = base_url.rsplit("/v1", 1)[0]
    req = urllib.request.Request(f"{root}/_reset", data=json.dumps({"latency_s": latency}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).read()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=256)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--mode", choices=("reuse", "induce", "both"), default="both")
    args = ap.parse_args(argv)

    from engine.replay.runner import ReplaySpec, run_replay_sync
    from replay_fixtures import make_store

    per_step = 32
    steps = max(1, math.ceil(args.groups / per_step))
    tmp = Path(tempfile.mkdtemp(prefix="ropd-bench-replay-"))
    t0 = time.perf_counter()
    make_store(tmp / "ropd.db", steps=steps, groups=min(per_step, args.groups)).close()
    n_groups = steps * min(per_step, args.groups)
    print(f"store: {n_groups} groups x 8 answers (4 students + 4 teachers), 4 criteria; built in "
          f"{time.perf_counter() - t0:.1f}s")
    proc, url = start_server(args.latency)
    print(f"loopback judge: {url}  latency {args.latency * 1000:.0f} ms  concurrency {args.concurrency}")
    print(f"{'mode':8} {'run':7} {'answers':>8} {'wall s':>8} {'answers/s':>10} {'calls':>6} {'cached':>7} "
          f"{'server reqs':>11} {'peak in flight':>14} {'lower bound s':>13}")
    modes = ["reuse", "induce"] if args.mode == "both" else [args.mode]
    try:
        # warm-up (imports of the SDK and first connections are not replay throughput): one group
        run_replay_sync(tmp / "ropd.db", ReplaySpec(run="r1", judge_model="bench-judge", base_url=url, force=True,
                                                    max_groups=1, concurrency=args.concurrency))
        for mode in modes:
            trips = 1 if mode == "reuse" else 2
            bound = math.ceil(n_groups / args.concurrency) * trips * args.latency
            for label, force in (("cold", True), ("cached", False)):
                reset_server(url, args.latency)
                spec = ReplaySpec(run="r1", judge_model="bench-judge", base_url=url, rubric_mode=mode, force=force,
                                  concurrency=args.concurrency)
                t = time.perf_counter()
                rep = run_replay_sync(tmp / "ropd.db", spec)
                wall = time.perf_counter() - t
                st = server_stats(url)
                judged = st["by_role"].get("rubricator", 0) + st["by_role"].get("verifier", 0)
                answers = rep.stats["answers"]
                print(f"{mode:8} {label:7} {answers:8d} {wall:8.2f} {answers / wall:10.1f} "
                      f"{rep.stats['judge_calls']:6d} {rep.stats['cached_calls']:7d} {judged:11d} "
                      f"{st['max_in_flight']:14d} {bound if label == 'cold' else 0.0:13.2f}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
