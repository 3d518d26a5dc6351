"""``ropd-tui --headless runs``: every run in the store with status, latest step, reward, accuracy."""

from __future__ import annotations

import argparse

from ._output import add_json_flag, echo, print_json, print_table
from ._runs_common import fmt_age, one_line, open_store, store_exists


def register(subparsers) -> None:
    p = subparsers.add_parser("runs", help="list runs with status and latest metrics",
                              description="List every run of the store: status (re-checked against its processes), "
                              "latest step, reward, accuracy and judge cost (\"-\" when the judge is not priced).")
    add_json_flag(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.runs.supervisor import Supervisor

    if not store_exists(args):
        if args.json:
            print_json([])
        else:
            echo("no runs yet (no run store here); start one with: ropd-tui --headless train --config configs/demo.yaml")
        return 0
    with open_store(args) as store:
        checked = {r.id: r for r in Supervisor(store).refresh_all()}
        runs = store.list_runs()
    for r in runs:  # what the re-check found, also when the store could not record it (read-only, full disk)
        rec = checked.get(r["id"])
        if rec is not None and rec.status != r["status"]:
            r.update(status=rec.status, cause=rec.cause, ended_at=rec.ended_at)
    if args.json:
        print_json(runs)
        return 0
    if not runs:
        echo("no runs yet")
        return 0
    print_table(["ID", "NAME", "BACKEND", "STATUS", "STEP", "REWARD", "ACC", "JUDGE COST", "UPDATED", "CAUSE"],
                [[r["id"], r["name"], r["backend"], r["status"], r["last_step"], r["reward"], r["accuracy"],
                  r["cost"]["text"],
                  fmt_age(r["last_step_at"] or r["ended_at"] or r["started_at"] or r["created_at"]),
                  one_line(r["cause"], 50) if r["status"] not in ("finished", "running") else ""]
                 for r in runs])
    return 0
