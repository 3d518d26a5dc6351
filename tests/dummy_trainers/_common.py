"""Shared bits of the dummy training programs: argument parsing and writing steps to the store
through RunStore, exactly like a real trainer (engine.runs.worker) does."""

from __future__ import annotations

import argparse
import sys
import time

from engine.store import RunStore
from engine.types import AnswerResult, Criterion, GroupResult, JudgeCall, Rubric


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--run", required=True, type=int)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sleep", type=float, default=0.05)
    ap.add_argument("--pids-file")
    ap.add_argument("--resume", action="store_true")
    return ap.parse_args(argv)


def small_group(step: int, index: int) -> GroupResult:
    crits = [Criterion(id=f"c{j}", text=f"criterion {j}", points=j + 1, category="task") for j in range(2)]
    answers = [AnswerResult(kind="student", index=i, text=f"answer {i} at step {step}", verdicts=[True, i % 2 == 0],
                            reward=(1 + 2 * (i % 2 == 0)) / 3, correct=i % 2 == 0, pool_position=i + 1)
               for i in range(2)]
    answers.append(AnswerResult(kind="teacher", index=0, text="teacher", verdicts=[True, True], reward=1.0,
                                pool_position=3))
    return GroupResult(group_index=index, prompt=f"question {index}", question=f"question {index}",
                       rollouts_raw=[a.text for a in answers[:2]], status="ok", ground_truth="4",
                       rubric=Rubric(crits), answers=answers,
                       calls=[JudgeCall(role="rubricator", model="offline", status="ok", latency_s=0.01)])


def write_steps(store: RunStore, run_id: int, first: int, last: int, sleep: float) -> None:
    for step in range(first, last + 1):
        store.write_step(run_id, step, {"loss": 1.0 / step, "reward/mean": step / 10}, [small_group(step, 0)])
        print(f"step {step}", flush=True)
        time.sleep(sleep)


def first_step(store: RunStore, run_id: int, resume: bool) -> int:
    if not resume:
        return 1
    last = store.get_run(run_id).last_step or 0
    print(f"resuming after step {last}", flush=True)
    return last + 1


def main_steps(argv=None) -> int:
    a = parse(argv)
    store = RunStore(a.store, create=False)
    write_steps(store, a.run, first_step(store, a.run, a.resume), a.steps, a.sleep)
    print("done", flush=True)
    sys.stdout.flush()
    return 0
