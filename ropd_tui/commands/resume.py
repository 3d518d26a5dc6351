"""``ropd-tui --headless resume RUN``: start the run's recorded command again with ``--resume``."""

from __future__ import annotations

import argparse

from ._output import add_json_flag
from ._runs_common import add_run_arg, open_store, report_launched


def register(subparsers) -> None:
    p = subparsers.add_parser("resume", help="resume an ended run from its latest checkpoint",
                              description="Start the run's recorded training command again with --resume, in the "
                              "background; the trainer continues from the latest checkpoint in the run folder. "
                              "Follow it with: ropd-tui --headless logs RUN -f")
    add_run_arg(p)
    add_json_flag(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.runs.supervisor import Supervisor

    with open_store(args) as store:
        rec = Supervisor(store).resume(args.run)
    report_launched(args, rec, f"resumed run {rec.name}")
    return 0
