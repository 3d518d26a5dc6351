"""``ropd-tui --headless restart RUN``: start the run from scratch as a new attempt (history kept)."""

from __future__ import annotations

import argparse

from ._output import add_json_flag
from ._runs_common import add_run_arg, open_store, report_launched


def register(subparsers) -> None:
    p = subparsers.add_parser("restart", help="restart an ended run from scratch (new attempt)",
                              description="Start the run's recorded command again WITHOUT --resume, as a new attempt: "
                              "its earlier steps stay in the store under the previous attempt number and its old "
                              "checkpoints move to <run dir>/attempts/<n>/checkpoints.")
    add_run_arg(p)
    add_json_flag(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.runs.supervisor import Supervisor

    with open_store(args) as store:
        rec = Supervisor(store).restart(args.run)
    report_launched(args, rec, f"restarted run {rec.name} as attempt {rec.attempt}")
    return 0
