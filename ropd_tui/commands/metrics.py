"""``ropd-tui --headless metrics RUN``: a run's metrics per step (chosen keys), or the list of keys."""

from __future__ import annotations

import argparse

from ._output import add_json_flag, echo, print_json, print_table
from ._runs_common import add_run_arg, open_store

DEFAULT_KEYS = ("reward/mean", "teacher_score/mean", "accuracy", "val/accuracy", "loss", "score/student_reward_mean",
                "score/teacher_reward_mean", "score/student_accuracy", "judge/failure_rate")


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
            keys = [k for k in DEFAULT_KEYS if k in latest] or sorted(latest)[:6]
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
    print_table(["STEP", *keys], [[r["step"], *[r[k] for k in keys]] for r in rows])
    return 0
