"""Run-store benchmark: step ingest into a large store, and the UI's hot reads.

    python bench/store.py [--prefill-verdicts 1000000] [--steps 20] [--text-len 1000] [--dir DIR]
                          [--groups 32] [--students 8] [--teachers 4] [--criteria 12] [--bulk-prefill]

1. Prefill a fresh store: 20 runs with 1,000 steps x 30 metric keys each, and one run with enough
   full-size steps (by default 32 groups x 12 answers x 12 criteria = 4,608 verdicts per step, with answer
   and criterion texts and judge calls; a large verl step: --groups 256 --students 16 --teachers 4
   --criteria 10) to hold >= --prefill-verdicts verdicts (``--bulk-prefill``: written with bulk SQL,
   tests/fixtures_store.build_bulk_store, minutes instead of an hour for 40M verdicts).
2. Time ``write_step`` of --steps more full-size steps (one transaction each).
3. Time the reads the UI does: latest metrics of 20 runs (and list_runs), one metric series of 1,000
   steps, one step's groups with rubrics and verdict matrices, and the run-wide criteria page.
4. The store's size per million verdicts.
Targets: <= 50 ms per ingested step, <= 50 ms per read. Prints the numbers; exit code 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from dummy_trainers.payloads import make_step  # noqa: E402
from engine.store import RunStore  # noqa: E402
from engine.store.step_writer import write_metric_rows  # noqa: E402

TARGET_MS = 50.0


def timed(fn, repeat: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds of each call (CPU time is what the machine's load does not inflate)."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def report(label: str, ms: tuple[list[float], list[float]]) -> bool:
    wall, cpu = ms
    med, p95 = statistics.median(wall), sorted(wall)[max(0, int(len(wall) * 0.95) - 1)]
    cpu_med = statistics.median(cpu)
    ok = med <= TARGET_MS
    print(f"  {label:<52} median {med:7.2f} ms  p95 {p95:7.2f} ms  max {max(wall):7.2f} ms  "
          f"cpu median {cpu_med:6.2f} ms  {'OK' if ok else 'OVER TARGET'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefill-verdicts", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=20, help="full-size steps to time")
    ap.add_argument("--text-len", type=int, default=1000, help="characters per answer text")
    ap.add_argument("--dir", help="where to create the store (default: a temporary folder, removed after)")
    ap.add_argument("--groups", type=int, default=32, help="groups (prompts) per step")
    ap.add_argument("--students", type=int, default=8, help="student rollouts per group")
    ap.add_argument("--teachers", type=int, default=4, help="teacher answers per group")
    ap.add_argument("--criteria", type=int, default=12, help="rubric criteria per group")
    ap.add_argument("--bulk-prefill", action="store_true", help="prefill the big run with bulk SQL inserts")
    args = ap.parse_args(argv)
    GROUPS, STUDENTS, TEACHERS, CRITERIA = args.groups, args.students, args.teachers, args.criteria
    VERDICTS_PER_STEP = GROUPS * (STUDENTS + TEACHERS) * CRITERIA

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ropd-bench-store-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "ropd.db"
    if path.exists():
        print(f"{path} exists; pass an empty --dir", file=sys.stderr)
        return 2
    prefill_steps = -(-args.prefill_verdicts // VERDICTS_PER_STEP)
    if args.bulk_prefill:
        from fixtures_store import build_bulk_store

        t0 = time.perf_counter()
        build_bulk_store(path, steps=prefill_steps, groups=GROUPS, n_students=STUDENTS, n_teachers=TEACHERS,
                         n_criteria=CRITERIA, text_chars=args.text_len, name="run-00")
        print(f"bulk prefill of run-00: {prefill_steps} steps in {time.perf_counter() - t0:.0f} s")
    store = RunStore(path)
    try:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"store: {path}   (load average {load:.1f} on {os.cpu_count()} cores: wall times include waiting "
              "for a CPU; the cpu column does not)")
        payloads = [make_step(i, GROUPS, students=STUDENTS, teachers=TEACHERS, criteria=CRITERIA,
                              text_len=args.text_len) for i in range(2)]

        # 1. prefill
        t0 = time.perf_counter()
        runs = [store.get_run("run-00") if args.bulk_prefill and i == 0 else store.create_run(f"run-{i:02d}", "embedded", {})
                for i in range(20)]
        keys = [f"metric/{k:02d}" for k in range(28)] + ["loss", "reward/mean"]
        for rec in runs[1:] if args.bulk_prefill else runs:
            with store.write_transaction() as c:
                for step in range(1, 1001):
                    write_metric_rows(c, rec.id, 1, step, {k: step * 0.001 + j for j, k in enumerate(keys)},
                                      time.time())
        big = runs[0]
        for i in range(0 if args.bulk_prefill else prefill_steps):
            store.write_step(big.id, 1001 + i, {"loss": 0.5}, payloads[i % 2])
        with store.lock:
            n_verdicts = store.connection.execute("SELECT count(*) FROM verdicts").fetchone()[0]
        print(f"prefill: 20 runs x 1,000 steps x {len(keys)} metrics, {prefill_steps} full steps -> "
              f"{n_verdicts:,} verdicts in {time.perf_counter() - t0:.1f} s")

        # 2. ingest
        print(f"\ningest ({GROUPS} groups x {STUDENTS + TEACHERS} answers x {CRITERIA} criteria = "
              f"{VERDICTS_PER_STEP:,} verdicts per step, answer texts {args.text_len} chars):")
        next_step = 1001 + prefill_steps
        counter = iter(range(next_step, next_step + args.steps))
        ok = report("write_step (one transaction)",
                    timed(lambda: store.write_step(big.id, next(counter), {"loss": 0.4, "reward/mean": 0.5},
                                                   payloads[0]), args.steps))

        # 3. reads
        print("\nreads:")
        ids = [r.id for r in runs]
        ok &= report("latest_metrics of 20 runs", timed(lambda: store.latest_metrics(ids), 30))
        ok &= report("list_runs (20 runs, headline metrics)", timed(store.list_runs, 30))
        series_run = runs[1]
        assert len(store.metric_series(series_run.id, "loss")) == 1000
        ok &= report("metric_series: 1,000 steps", timed(lambda: store.metric_series(series_run.id, "loss"), 30))
        ok &= report("metric_curve: 1,000 steps at screen resolution",
                     timed(lambda: store.metric_curve(series_run.id, "loss"), 30))
        last = next_step + args.steps - 1
        groups = store.step_groups(big.id, last)
        assert len(groups) == GROUPS and len(groups[0]["verdicts"]) == STUDENTS + TEACHERS
        ok &= report(f"step_groups: {GROUPS} groups with rubrics + verdict matrices + calls",
                     timed(lambda: store.step_groups(big.id, last), 20))
        ok &= report("step_groups without judge calls",
                     timed(lambda: store.step_groups(big.id, last, include_calls=False), 20))
        ok &= report("criterion_pass_rates by step (whole run)",
                     timed(lambda: store.criterion_pass_rates(big.id, by="step"), 10))
        ok &= report("criterion_pass_rates of one step (per criterion)",
                     timed(lambda: store.criterion_pass_rates(big.id, step=last), 20))
        ok &= report("criterion_page: run-wide counts + first 200 criteria",
                     timed(lambda: store.criterion_page(big.id, 200), 20))
        ok &= report("data_version (change check)", timed(store.data_version, 200))
        n_crit = len(store.criterion_pass_rates(big.id))
        report(f"(info) criterion_pass_rates, whole run per criterion ({n_crit:,} rows)",
               timed(lambda: store.criterion_pass_rates(big.id), 3))
        print(f"  (load average now {os.getloadavg()[0]:.1f})")
        size = sum(p.stat().st_size for p in workdir.glob("ropd.db*"))
        with store.lock:
            n_verdicts = store.connection.execute("SELECT count(*) FROM verdicts").fetchone()[0]
        print(f"\nstore size: {size / 1e6:.0f} MB for {n_verdicts:,} verdicts: {size / 1e6 / (n_verdicts / 1e6):.0f} MB"
              " per million verdicts (answer texts and judge calls included)")
        return 0 if ok else 1
    finally:
        store.close()
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
