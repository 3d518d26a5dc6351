"""``ropd-tui --headless delete RUN --yes``: remove a run's rows and folder (refused while it runs)."""

from __future__ import annotations

import argparse

from ._output import add_json_flag, echo, print_json
from ._runs_common import add_run_arg, open_store


def register(subparsers) -> None:
    p = subparsers.add_parser("delete", help="delete a run (its data, log and checkpoints)",
                              description="Delete a run from the store together with its folder (log, config "
                              "snapshot, checkpoints). Refused while the run is active: stop it first. "
                              "Needs --yes (there is no undo).")
    add_run_arg(p)
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    add_json_flag(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.errors import UserError
    from engine.runs.supervisor import Supervisor

    with open_store(args) as store:
        rec = store.get_run(args.run)
        if not args.yes:
            raise UserError(f"refusing to delete run {rec.name!r} without confirmation",
                            hint=f"this removes its data and {rec.run_dir}; run again with --yes")
        Supervisor(store).delete(rec)
    if args.json:
        print_json({"id": rec.id, "name": rec.name, "deleted": True})
    else:
        echo(f"deleted run {rec.name} and {rec.run_dir}")
    return 0
