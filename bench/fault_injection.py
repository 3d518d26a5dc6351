"""Benchmark: judge faults. Prints numbers, asserts nothing.

1. **Mixed faults**: 64 groups (6 rollouts + 2 teacher answers) scored through real HTTP against the
   loopback judge (tests/loopback_server.py) while a share of the judge requests (default 30%) fails
   in 15 ways (HTTP 408/429/500/502/503/504, a hang past the client timeout, a dropped connection, a
   proxy's HTML page and a non-chat JSON body with status 200, cut-off JSON, prose, an empty reply,
   chatter around JSON, wrong counts), over several fault seeds. Prints the share of groups scored,
   wrong rewards (a scored group whose rewards differ from a fault-free run), failed groups read as
   a number (must be 0), crashes, and the faults injected. The default settings are used
   (judge.max_retries=4, judge.reask_attempts=2) with short timeouts and backoff.
2. **Dead and hung judges**: how long ``score``, ``replay``, ``train`` and ``index build`` take to
   report a judge that refuses connections, and one that accepts them and never answers (a real
   socket that reads and stays silent), with their exit codes; and how long ``score`` takes to
   report a judge that dies after the preflight (64 groups, concurrency 8, default retries), and one
   that hangs after it (timeout_s=2 so the run without the circuit breaker ends too), with the circuit
   breaker and without it, with the number of judge requests the server received.

Usage: ``python bench/fault_injection.py [--rate 0.3] [--seeds 1 2 ... 10] [--skip-dead] [--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from engine.judging.client import forget_unsupported_params  # noqa: E402
from engine.scoring.failures import cause_summary  # noqa: E402
from engine.scoring.scorer import Scorer  # noqa: E402
from loopback_server import HungServer, LoopbackJudgeServer, loopback_config  # noqa: E402
from test_fault_injection import SETTINGS, fault_groups  # noqa: E402


def mixed_faults(rate: float, seeds: list[int], extra: list[str]) -> None:
    import logging

    logging.getLogger("ropd").addHandler(logging.NullHandler())  # failed groups are counted below
    settings = (*SETTINGS, *extra)
    groups = fault_groups()
    total = scored = wrong = failed_as_number = crashes = 0
    kinds: Counter = Counter()
    worst = 1.0
    with LoopbackJudgeServer() as srv:
        forget_unsupported_params()
        reference = Scorer(loopback_config(srv, *settings)).score_batch_sync(groups)
        for seed in seeds:
            srv.random_faults(rate, seed=seed, hang_s=1.0)
            forget_unsupported_params()
            t0 = time.perf_counter()
            try:
                batch = Scorer(loopback_config(srv, *settings)).score_batch_sync(groups)
            except Exception as err:  # noqa: BLE001 - a crash is what we count
                crashes += 1
                print(f"  seed {seed}: CRASH {type(err).__name__}: {err}")
                continue
            ok = [g for g in batch.groups if g.status != "failed"]
            bad = sum(g.student_rewards != r.student_rewards or g.teacher_scores != r.teacher_scores
                      for g, r in zip(batch.groups, reference.groups) if g.status != "failed")
            as_number = sum(any(x is not None for x in g.student_rewards) for g in batch.groups if g.status == "failed")
            total += len(groups)
            scored += len(ok)
            wrong += bad
            failed_as_number += as_number
            kinds.update(srv.fault_counts)
            worst = min(worst, len(ok) / len(groups))
            print(f"  seed {seed}: {len(ok)}/{len(groups)} groups scored, {sum(srv.fault_counts.values())} faults "
                  f"injected, {bad} wrong rewards, {time.perf_counter() - t0:.1f}s")
            for g in batch.groups:
                if g.status == "failed":  # why: which fault kinds exhausted the retries and re-asks
                    print(f"    group {g.group_index} failed at {g.failure_stage}: "
                          f"{cause_summary(g.failure_cause, 220)}")
    print(f"mixed faults at {rate:.0%} of judge requests, {len(seeds)} seeds x {len(groups)} groups"
          f"{' with ' + ' '.join(extra) if extra else ''}:")
    print(f"  groups scored: {scored}/{total} = {scored / max(total, 1):.1%} (worst seed {worst:.1%})")
    print(f"  wrong rewards: {wrong}   failed groups read as a number: {failed_as_number}   crashes: {crashes}")
    print(f"  faults injected: {sum(kinds.values())} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def timed(argv: list[str], cwd: Path) -> tuple[float, int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ROPD_"))}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whatever is installed
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "ropd_tui.cli", "--headless", *argv], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=900)
    first_error = next((ln for ln in res.stderr.splitlines() if ln.startswith("error:")), res.stderr.strip()[-200:])
    return time.perf_counter() - t0, res.returncode, first_error


def dead_and_hung() -> None:
    import fixtures_store

    tmp = Path(tempfile.mkdtemp(prefix="ropd-faults-"))
    store = tmp / "runs" / "ropd.db"
    fixtures_store.build_store(store, fixtures_store.DEFAULT_RUNS[:1])
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 2 + 2?"}) + "\n")
    demo = ROOT / "data" / "demo" / "groups.jsonl"

    def commands(url: str) -> dict[str, list[str]]:
        judge = ["judge.mode=llm"] + [f"judge.{r}.{k}={v}" for r in ("rubricator", "verifier")
                                      for k, v in (("base_url", url), ("model", "m"))]
        return {
            "score": ["score", "--input", str(demo), "--out", str(tmp / "s.jsonl"), *judge],
            "replay": ["--store", str(store), "replay", "demo-baseline", "--steps", "1", "--judge-model", "m",
                       "--base-url", url],
            "train": ["--store", str(store), "train", "--config", str(ROOT / "configs" / "demo.yaml"), *judge],
            "index build": ["index", "build", "--prompts", str(prompts), "--out", str(tmp / "i.jsonl"),
                            "--teacher-model", "m", "--base-url", url, "--quiet"],
        }

    print("dead and hung judges (seconds until the command reports it; exit code):")
    with HungServer() as hung:
        for label, url in (("dead (connection refused)", f"http://127.0.0.1:{closed_port()}/v1"),
                           ("hung (accepts, never answers)", hung.base_url)):
            for name, argv in commands(url).items():
                secs, rc, msg = timed(argv, tmp)
                print(f"  {label:30s} {name:12s} {secs:5.1f}s  exit {rc}  {msg[:150]}")


def _groups_file(tmp: Path) -> Path:
    groups = tmp / "groups.jsonl"
    with groups.open("w") as f:
        for g in fault_groups():
            f.write(json.dumps({"prompt": g.prompt, "rollouts": g.rollouts, "teacher_answers": g.teacher_answers}) + "\n")
    return groups


def failing_mid_run(how: str, concurrency: int = 8, timeout_s: float | None = None) -> None:
    """A judge that dies (``how="dying"``: every judge request dropped) or hangs (``"hanging"``: no judge
    request ever answered) after the preflight (``/models`` answers): 64 groups, default retries
    (judge.max_retries=4, backoff 0.5 s doubling, 8 s cap): how long until ``score`` reports it and how
    many judge requests the server received, with the circuit breaker and without it
    (``judge.circuit_breaker_failures=0``)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"ropd-{how}-"))
    groups = _groups_file(tmp)
    for label, extra in (("breaker on (default)", []), ("breaker off", ["judge.circuit_breaker_failures=0"])):
        with LoopbackJudgeServer(models=["m"]) as srv:
            if how == "dying":
                srv.drop_next(1_000_000)
            else:
                srv.hang_next(1_000_000, seconds=3600)
            judge = ["judge.mode=llm", f"judge.concurrency={concurrency}", "scorer.k=2", *extra] + [
                f"judge.{r}.{k}={v}" for r in ("rubricator", "verifier") for k, v in (
                    ("base_url", srv.base_url), ("model", "m"), *((("timeout_s", timeout_s),) if timeout_s else ()))]
            secs, rc, msg = timed(["score", "--input", str(groups), "--out", str(tmp / "s.jsonl"), *judge], tmp)
            sent = len(srv.requests)
        tmo = f", timeout_s={timeout_s:g}" if timeout_s else ""
        print(f"judge {how} after the preflight, 64 groups at concurrency {concurrency}{tmo}, default retries, "
              f"{label}: {secs:.1f}s, {sent} judge requests, exit {rc}: {msg[:200]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=0.30)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    ap.add_argument("--skip-dead", action="store_true", help="only the mixed-fault runs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for the mixed-fault runs, e.g. judge.reask_attempts=3")
    args = ap.parse_args()
    mixed_faults(args.rate, args.seeds, args.set)
    if not args.skip_dead:
        dead_and_hung()
        failing_mid_run("dying")
        failing_mid_run("hanging", timeout_s=2.0)  # short, so the run without the breaker ends too
    return 0


if __name__ == "__main__":
    sys.exit(main())
