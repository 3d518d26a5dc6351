"""``ropd-tui --headless restart RUN``: start the run from scratch as a new attempt (history kept)."""

from __future__ import annotations

import argparse

from ._output import add_json_flag, print_json
from ._runs_common import add_run_arg, open_store


def register(subparsers) -> None:
    p = subparsers.add_parser("restart", help="restart an ended run from scratch (new attempt)",
                              description="Start the run's recorded command again WITHOUT --resume, as a new attempt: "
                              "its earlier steps stay in the store under the previous attempt number and its old "
                              "checkpoints move to <run dir>/attempts/<n>/checkpoints.")
    add_run_arg(p)
    add_json_flag(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.supervisor import Supervisor

    with open_store(args) as store:
        rec = Supervisor(store).restart(args.run)
    if args.json:
        print_json({"id": rec.id, "name": rec.name, "status": rec.status, "monitor_pid": rec.monitor_pid,
                    "attempt": rec.attempt, "log": str(rec.log_path)})
    else:
        print(f"restarted run {rec.name} as attempt {rec.attempt} (monitor pid {rec.monitor_pid}); log: {rec.log_path}")
    return 0
