"""TUI benchmark: first paint of the main screens on a big store, live latency, peak memory.

    python bench/tui.py [--dir DIR] [--steps 500] [--repeat 3] [--rebuild]
                        [--bulk] [--groups 16] [--students 8] [--teachers 4] [--criteria 11]

1. Builds (once; reused from --dir) a store with one run of --steps steps x 16 prompts x 12 answers
   (8 student rollouts + 4 teacher answers, 400-character texts) x 11 criteria: 1,056,000 verdicts
   at 500 steps, written through RunStore.write_step like a trainer does. ``--bulk`` writes it with bulk SQL
   instead (tests/fixtures_store.build_bulk_store: minutes for 40M verdicts, e.g. --bulk --steps 2000
   --groups 128 --students 16 --teachers 4 --criteria 8); --groups/--students/--teachers/--criteria set the
   step's shape (the live measures write steps of that shape too).
2. In a fresh process each time (so imports count): time from process launch to the first paint
   with data of the Runs screen, of the Run screen and of the Rubric inspector (each opened directly,
   and also as reached from the previous screen), and of the inspector's run-wide criteria tab.
3. Time from a step's commit by another process to its appearance on the Run screen, the Runs list
   and the inspector (which follows the latest step).
4. Peak RSS of the app process.
Targets: first paint <= 1 s, new step <= 1 s, RSS <= 300 MB. Prints the numbers; exit code 1 if missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

T_PROCESS = time.time()  # as early as possible: the child measures "launch" from the parent's stamp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

GROUPS, STUDENTS, TEACHERS, CRITERIA, TEXT = 16, 8, 4, 11, 400
TARGET_PAINT_S, TARGET_STEP_S, TARGET_RSS_MB = 1.0, 1.0, 300.0
SIZE = (120, 40)


# ---------------------------------------------------------------------------------------------
# parent

def build(path: Path, steps: int, bulk: bool = False) -> None:
    from fixtures_store import build_big_store, build_bulk_store

    t = time.perf_counter()
    if bulk:
        build_bulk_store(path, steps=steps, groups=GROUPS, n_students=STUDENTS, n_teachers=TEACHERS,
                         n_criteria=CRITERIA, text_chars=TEXT,
                         progress=lambda s: print(f"  wrote {s}/{steps} steps ({time.perf_counter() - t:.0f} s)",
                                                  flush=True) if s % 100 == 0 or s == steps else None)
        return

    def progress(step: int) -> None:
        if step % 50 == 49:
            print(f"  wrote {step + 1}/{steps} steps ({time.perf_counter() - t:.0f} s)", flush=True)

    build_big_store(path, steps=steps, groups=GROUPS, n_students=STUDENTS, n_teachers=TEACHERS,
                    n_criteria=CRITERIA, text_chars=TEXT, progress=progress)


def count_verdicts(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]
    finally:
        conn.close()


def child(path: Path, mode: str) -> dict:
    t0 = time.time()
    shape = f"{GROUPS},{STUDENTS},{TEACHERS},{CRITERIA}"
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--store", str(path), "--t0", repr(t0),
                          "--shape", shape],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{out.stdout}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    global GROUPS, STUDENTS, TEACHERS, CRITERIA
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "ropd-bench-tui"))
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--bulk", action="store_true", help="build the store with bulk SQL, not the step writer")
    ap.add_argument("--groups", type=int, default=GROUPS)
    ap.add_argument("--students", type=int, default=STUDENTS)
    ap.add_argument("--teachers", type=int, default=TEACHERS)
    ap.add_argument("--criteria", type=int, default=CRITERIA)
    ap.add_argument("--child")
    ap.add_argument("--store")
    ap.add_argument("--t0", type=float)
    ap.add_argument("--shape")
    ap.add_argument("--json", help="also write the medians (ms) and peak RSS (MB) to this file")
    ap.add_argument("--compare", nargs=2, metavar=("SMALL.json", "BIG.json"),
                    help="print the ratio BIG/SMALL of each measure of two --json files (target <= 1.5) and exit")
    args = ap.parse_args()
    if args.shape:
        GROUPS, STUDENTS, TEACHERS, CRITERIA = (int(x) for x in args.shape.split(","))
    else:
        GROUPS, STUDENTS, TEACHERS, CRITERIA = args.groups, args.students, args.teachers, args.criteria
    if args.compare:
        return compare(*args.compare)
    if args.child:
        print(json.dumps(asyncio.run(run_child(Path(args.store), args.child, args.t0))))
        return 0

    default = (GROUPS, STUDENTS, TEACHERS, CRITERIA) == (16, 8, 4, 11) and not args.bulk
    path = Path(args.dir) / (f"ropd-{args.steps}.db" if default else
                             f"ropd-{args.steps}x{GROUPS}x{STUDENTS + TEACHERS}x{CRITERIA}{'-bulk' * args.bulk}.db")
    if args.rebuild and path.exists():
        import shutil

        shutil.rmtree(path.parent)
    if not path.exists():
        print(f"building {path} ({args.steps} steps x {GROUPS} x {STUDENTS + TEACHERS} x {CRITERIA}) ...", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        build(path, args.steps, args.bulk)
    n = count_verdicts(path)
    size_mb = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6
    print(f"store: {path} — {n:,} verdicts over {args.steps} steps, {size_mb:.0f} MB")

    results: dict[str, list[list[float | None]]] = {}
    rss: list[float] = []
    for i in range(args.repeat):
        for mode in ("runs", "run", "inspector", "live"):
            r = child(path, mode)
            for k, v in r.items():
                if k == "rss_mb":
                    rss.append(v)
                else:
                    results.setdefault(k, []).append(v)
    print(f"\n{'measure':<50} {'wall med':>9} {'wall max':>9} {'cpu med':>9}   target (on wall median)")
    ok = True
    for key, vals in results.items():
        target = TARGET_STEP_S if key.startswith("new step") else TARGET_PAINT_S
        walls = [v[0] for v in vals]
        cpus = [v[1] for v in vals if v[1] is not None]
        med, mx = statistics.median(walls), max(walls)
        cpu_txt = f"{statistics.median(cpus) * 1000:>7.0f}ms" if cpus else f"{'-':>9}"
        flag = "ok" if med <= target else "MISSED"
        ok &= med <= target
        print(f"{key:<50} {med * 1000:>7.0f}ms {mx * 1000:>7.0f}ms {cpu_txt}   <= {target * 1000:.0f} ms {flag}")
    peak = max(rss)
    if args.json:
        summary = {"store": str(path), "verdicts": n, "steps": args.steps, "rss_mb": peak,
                   "wall_ms": {k: statistics.median(v[0] for v in vals) * 1000 for k, vals in results.items()},
                   "cpu_ms": {k: statistics.median(x[1] for x in vals) * 1000 for k, vals in results.items()
                              if all(x[1] is not None for x in vals)}}
        Path(args.json).write_text(json.dumps(summary, indent=1))
    ok &= peak <= TARGET_RSS_MB
    print(f"{'peak RSS of the app process':<52} {peak:>7.0f}MB {'':>9}   <= {TARGET_RSS_MB:.0f} MB "
          f"{'ok' if peak <= TARGET_RSS_MB else 'MISSED'}")
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; {args.repeat} fresh processes "
          "per measure; cpu = CPU seconds of the app process (UI + reader threads; for 'process launch' since the "
          "process started, imports included): what the measure costs on an idle core)")
    return 0 if ok else 1


def compare(small: str, big: str) -> int:
    """The ratio big/small of each measure (wall and cpu medians, peak RSS): what growing the store costs."""
    a, b = (json.loads(Path(p).read_text()) for p in (small, big))
    print(f"{a['verdicts']:,} verdicts / {a['steps']} steps  ->  {b['verdicts']:,} verdicts / {b['steps']} steps")
    print(f"{'measure':<50} {'wall':>15} {'ratio':>6} {'cpu':>15} {'ratio':>6}")
    ok = True
    for key, wa in a["wall_ms"].items():
        wb = b["wall_ms"].get(key)
        if wb is None:
            continue
        ca, cb = a["cpu_ms"].get(key), b["cpu_ms"].get(key)
        r = wb / wa if wa else float("inf")
        ok &= r <= 1.5
        cpu = f"{ca:>6.0f} -> {cb:>5.0f} {cb / ca if ca else float('inf'):>6.2f}" if ca is not None and cb is not None \
            else f"{'-':>15} {'':>6}"
        print(f"{key:<50} {wa:>6.0f} -> {wb:>5.0f} {r:>6.2f} {cpu}")
    r = b["rss_mb"] / a["rss_mb"]
    ok &= r <= 1.5
    print(f"{'peak RSS (MB)':<50} {a['rss_mb']:>6.0f} -> {b['rss_mb']:>5.0f} {r:>6.2f}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# child: one app process

WRITER = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from engine.store import RunStore
from fixtures_store import write_fixture_step
store = RunStore({path!r}, create=False)
write_fixture_step(store, {run_id}, {step}, groups={groups}, n_students={students}, n_teachers={teachers},
                   n_criteria={criteria}, text_chars={text}, inject=False)
print(repr(time.time()), flush=True)
store.close()
"""


async def run_child(path: Path, mode: str, t0: float) -> dict:
    import resource

    from tui_pilot import wait_for, wait_screen

    from engine.store import RunStore
    from ropd_tui.app import RopdApp
    from ropd_tui.screens.inspector import InspectorScreen
    from ropd_tui.screens.run import RunScreen
    from ropd_tui.screens.runs import RunsScreen

    with RunStore(path, create=False) as s:
        run = s.get_run("bench")
        run_id, last = run.id, run.last_step
    start = None
    if mode in ("run", "inspector"):
        start = (mode, {"run_id": run_id, "name": "bench"})
    app = RopdApp(path, supervise=False, start=start)
    out: dict[str, Any] = {}

    def cpu() -> float:
        """CPU seconds of this process so far (all threads: UI loop and the store reader)."""
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    class Clock:
        def __init__(self, wall: float | None = None, cpu_s: float | None = None):
            self.wall = time.time() if wall is None else wall
            self.cpu = cpu() if cpu_s is None else cpu_s

        def done(self, key: str) -> None:
            out[key] = [time.time() - self.wall, cpu() - self.cpu]

    async def painted(pilot, cls):
        screen = await wait_screen(pilot, cls, timeout=60)
        await pilot.pause()  # the refresh that follows the load
        return screen

    async with app.run_test(size=SIZE) as pilot:
        if mode == "runs":
            runs = await painted(pilot, RunsScreen)
            Clock(t0, 0.0).done("first paint: Runs (process launch)")
            c = Clock()
            await pilot.press("enter")
            await painted(pilot, RunScreen)
            c.done("first paint: Run (enter on Runs)")
            c = Clock()
            await pilot.press("i")
            insp = await painted(pilot, InspectorScreen)
            c.done("first paint: Rubric inspector (i on Run)")
            c = Clock()
            await pilot.press("w")
            await wait_for(pilot, lambda: insp.run_wide is not None, timeout=60)
            await pilot.pause()
            c.done("first paint: inspector run-wide criteria tab")
            c = Clock()
            await pilot.press("left_square_bracket")
            await wait_for(pilot, lambda: insp.data.step == last - 1, timeout=60)
            await pilot.pause()
            c.done("inspector: previous step")
            assert runs.rows
        elif mode == "run":
            await painted(pilot, RunScreen)
            Clock(t0, 0.0).done("first paint: Run (process launch)")
        elif mode == "inspector":
            await painted(pilot, InspectorScreen)
            Clock(t0, 0.0).done("first paint: Rubric inspector (process launch)")
        elif mode == "live":
            runs = await painted(pilot, RunsScreen)
            await pilot.press("enter")
            run_screen = await painted(pilot, RunScreen)
            step = (last or 0) + 1
            committed = await write_in_other_process(path, run_id, step)
            await wait_for(pilot, lambda: run_screen.data.series[0][0].steps[-1] == step, timeout=60)
            out["new step: commit -> Run screen curves"] = [time.time() - committed, None]
            await pilot.press("i")
            insp = await painted(pilot, InspectorScreen)
            step += 1
            committed = await write_in_other_process(path, run_id, step)
            await wait_for(pilot, lambda: insp.data.step == step, timeout=60)
            await pilot.pause()
            out["new step: commit -> inspector (following latest)"] = [time.time() - committed, None]
            await pilot.press("escape", "escape")
            await painted(pilot, RunsScreen)
            step += 1
            committed = await write_in_other_process(path, run_id, step)
            await wait_for(pilot, lambda: next(r for r in runs.rows if r.id == run_id).step == step, timeout=60)
            await pilot.pause()
            out["new step: commit -> Runs list"] = [time.time() - committed, None]
            with RunStore(path) as s:  # leave the store as it was (steps > last removed)
                with s.write_transaction() as c:
                    from engine.store.step_writer import delete_group_rows

                    delete_group_rows(c, "run_id=? AND step>?", (run_id, last))
                    for table in ("metrics", "steps"):
                        c.execute(f"DELETE FROM {table} WHERE run_id=? AND step>?", (run_id, last))
                    c.execute("UPDATE runs SET last_step=? WHERE id=?", (last, run_id))
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


async def write_in_other_process(path: Path, run_id: int, step: int) -> float:
    """Write one full-size step from a subprocess while the app keeps running; returns the commit time."""
    code = WRITER.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(path), run_id=run_id, step=step,
                         groups=GROUPS, students=STUDENTS, teachers=TEACHERS, criteria=CRITERIA, text=TEXT)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError("the writer process failed")
    return float(stdout.decode().strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
