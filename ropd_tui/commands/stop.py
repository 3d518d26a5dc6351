"""``ropd-tui --headless stop RUN``: SIGTERM the run's whole session, then SIGKILL after a grace period."""

from __future__ import annotations

import argparse

from ._output import add_json_flag, echo, print_json
from ._runs_common import add_run_arg, open_store


def register(subparsers) -> None:
    p = subparsers.add_parser("stop", help="stop a running run (SIGTERM, grace, SIGKILL)",
                              description="Stop a run: SIGTERM to every process of its session (trainer and workers), "
                              "wait the grace period (supervisor.stop_grace_s), then SIGKILL what is left. "
                              "Stopping a run that already ended does nothing.")
    add_run_arg(p)
    p.add_argument("--grace", type=float, help="seconds between SIGTERM and SIGKILL (default: the run's supervisor.stop_grace_s)")
    add_json_flag(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.runs.supervisor import Supervisor

    with open_store(args) as store:
        sup = Supervisor(store)
        before = sup.refresh(args.run)
        was_active = before.active
        rec = sup.stop(before, grace=args.grace) if was_active else before
    if args.json:
        print_json({"id": rec.id, "name": rec.name, "status": rec.status, "cause": rec.cause, "stopped": was_active})
    elif was_active:
        echo(f"stopped run {rec.name} ({rec.status})")
    else:
        echo(f"run {rec.name} is not running ({rec.status}); nothing to stop")
    return 0
