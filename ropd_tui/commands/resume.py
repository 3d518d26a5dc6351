"""``ropd-tui --headless resume RUN [--budget-usd USD]``: start the run's recorded command again with ``--resume``."""

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
    p.add_argument("--budget-usd", type=float, metavar="USD",
                   help="set the run's judge.budget_usd first (e.g. after it stopped at its budget, exit code 5)")
    add_json_flag(p)
    p.set_defaults(func=handler)


def set_budget(store, rec, budget: float) -> None:
    """Record a new judge.budget_usd in the run's config snapshot (the worker reads it from there)."""
    import copy

    from engine.errors import ConfigError
    from engine.judging.cost import format_usd

    if not budget > 0:
        raise ConfigError(f"--budget-usd must be > 0, got {budget:g}")
    config = copy.deepcopy(rec.config)
    old = (config.setdefault("judge", {}) or {}).get("budget_usd")
    config["judge"]["budget_usd"] = float(budget)
    store.update_run(rec.id, config=config)
    store.add_event(rec.id, "config_changed", f"judge.budget_usd: {format_usd(old)} -> {format_usd(budget)}",
                    data={"key": "judge.budget_usd", "old": old, "new": float(budget)})


def handler(args: argparse.Namespace) -> int:
    from engine.runs.supervisor import Supervisor

    with open_store(args) as store:
        sup = Supervisor(store)
        if args.budget_usd is not None:
            rec = sup.refresh(args.run)
            if not rec.active:  # the supervisor refuses active runs itself, with its own message
                set_budget(store, rec, args.budget_usd)
        rec = sup.resume(args.run)
    report_launched(args, rec, f"resumed run {rec.name}")
    return 0
