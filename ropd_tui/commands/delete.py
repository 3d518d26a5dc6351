"""``ropd-tui --headless delete RUN --yes``: remove a run's rows and folder (refused while it runs);
``--checkpoints``: remove only its checkpoints (the disk hog), keeping its steps, verdicts and log."""

from __future__ import annotations

import argparse

from ._output import add_json_flag, echo, print_json
from ._runs_common import add_run_arg, open_store


def register(subparsers) -> None:
    p = subparsers.add_parser("delete", help="delete a run (its data, log and checkpoints)",
                              description="Delete a run from the store together with its folder (log, config "
                              "snapshot, checkpoints). Refused while the run is active: stop it first. "
                              "Needs --yes (there is no undo). With --checkpoints only the checkpoints go "
                              "(a model copy plus optimizer state each, e.g. ~1.6 GB for the demo); the run's "
                              "steps, verdicts and log stay, and a later resume starts from step 1.")
    add_run_arg(p)
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    p.add_argument("--checkpoints", action="store_true",
                   help="delete only the run's checkpoints (current and older attempts), keep everything else")
    add_json_flag(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.errors import UserError
    from engine.runs.supervisor import Supervisor, checkpoint_usage, fmt_bytes

    with open_store(args) as store:
        rec = store.get_run(args.run)
        if args.checkpoints:
            if not args.yes:
                usage = checkpoint_usage(rec)
                raise UserError(f"refusing to delete the checkpoints of run {rec.name!r} without confirmation",
                                hint=f"this frees {fmt_bytes(usage.bytes)} ({usage.count} checkpoint(s)); a later "
                                     "resume starts from step 1. Run again with --yes")
            freed = Supervisor(store).delete_checkpoints(rec)
            if args.json:
                print_json({"id": rec.id, "name": rec.name, "checkpoints_deleted": freed.count,
                            "bytes_freed": freed.bytes})
            else:
                print(f"deleted {freed.count} checkpoint(s) of run {rec.name} ({fmt_bytes(freed.bytes)} freed); "
                      "its steps, verdicts and log are kept")
            return 0
        if not args.yes:
            raise UserError(f"refusing to delete run {rec.name!r} without confirmation",
                            hint=f"this removes its data and {rec.run_dir}; run again with --yes")
        Supervisor(store).delete(rec)
    if args.json:
        print_json({"id": rec.id, "name": rec.name, "deleted": True})
    else:
        echo(f"deleted run {rec.name} and {rec.run_dir}")
    return 0
