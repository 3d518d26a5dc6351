"""``ropd-tui --headless metrics RUN``: a run's metrics per step (chosen keys), or the list of keys."""

from __future__ import annotations

import argparse
import shutil

from ._output import add_json_flag, echo, print_json, print_table
from ._runs_common import add_run_arg, open_store

# The default columns: one key per concept (the first one the run has), most important first; the
# table keeps as many as fit the terminal.
DEFAULT_CONCEPTS = (
    ("reward/mean", "score/student_reward_mean", "critic/score/mean"),
    ("accuracy", "score/student_accuracy"),
    ("val/accuracy",),
    ("teacher_score/mean", "score/teacher_reward_mean"),
    ("loss",),
    ("judge/failure_rate", "score/group_failure_rate"),
    ("time/step", "timing_s/step"),
)


def default_keys(latest) -> list[str]:
    keys = [next(k for k in concept if k in latest) for concept in DEFAULT_CONCEPTS if any(k in latest for k in concept)]
    return keys or sorted(latest)[:6]


def fitting(headers: list[str], rows: list[list], width: int, keep: int = 2) -> int:
    """How many leading columns of the table fit in ``width`` characters (at least ``keep``)."""
    from ._output import format_table

    n = len(headers)
    while n > keep and max(len(line) for line in format_table(headers[:n], [r[:n] for r in rows]).splitlines()) > width:
        n -= 1
    return n


def register(subparsers) -> None:
    p = subparsers.add_parser("metrics", help="print a run's metrics per step",
                              description="Print metrics per step (rows) for the chosen keys (columns). Without "
                              "--keys, shows the headline keys the run has (reward, teacher score, accuracy, loss).")
    add_run_arg(p)
    p.add_argument("--keys", help="comma-separated metric keys (see --list-keys)")
    p.add_argument("--list-keys", action="store_true", help="list the run's metric keys with their latest value")
    p.add_argument("--last", type=int, help="only the last N steps")
    p.add_argument("--attempt", type=int, help="attempt number (default: the current one)")
    add_json_flag(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.errors import UserError

    with open_store(args) as store:
        rec = store.get_run(args.run)
        latest = store.latest_metrics([rec.id]).get(rec.id, {})
        if args.list_keys:
            if args.json:
                print_json(latest)
            else:
                print_table(["KEY", "LATEST"], sorted(latest.items()))
            return 0
        if args.keys:
            keys = [k.strip() for k in args.keys.split(",") if k.strip()]
            have = set(latest) if args.attempt is None else None
            missing = [k for k in keys if have is not None and k not in have]
            if missing:
                raise UserError(f"run {rec.name!r} has no metric {', '.join(map(repr, missing))}",
                                hint=f"list its keys with: ropd-tui --headless metrics {rec.name} --list-keys")
        else:
            keys = default_keys(latest)
        series = {k: store.metric_series(rec.id, k, attempt=args.attempt) for k in keys}
    steps = sorted({s for pts in series.values() for s, _ in pts})
    if args.last is not None:
        steps = steps[-args.last:] if args.last > 0 else []
    values = {k: dict(pts) for k, pts in series.items()}
    rows = [{"step": s, **{k: values[k].get(s) for k in keys}} for s in steps]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        echo(f"run {rec.name} has no metrics yet")
        return 0
    headers = ["STEP", *keys]
    table = [[r["step"], *[r[k] for k in keys]] for r in rows]
    n = len(headers) if args.keys else fitting(headers, table, shutil.get_terminal_size().columns)
    print_table(headers[:n], [r[:n] for r in table])
    if n < len(headers):
        print(f"({len(headers) - n} more column(s) did not fit: {', '.join(headers[n:])}; choose with --keys, "
              f"see all with --list-keys)")
    return 0
