"""``ropd-tui --headless status RUN``: one run's state, processes, latest metrics and recent events."""

from __future__ import annotations

import argparse

from ._output import add_json_flag, echo, print_json, print_table, term_safe
from ._runs_common import add_run_arg, fmt_age, fmt_time, open_store

HEADLINE = ("reward/mean", "teacher_score/mean", "accuracy", "loss", "score/student_reward_mean",
            "score/teacher_reward_mean", "score/student_accuracy", "judge/failure_rate", "score/group_failure_rate")


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show one run's status, processes and latest metrics",
                              description="Show a run: status and cause, pids, host, attempt, last step, latest "
                              "metrics and recent events. The status is re-checked against the run's processes.")
    add_run_arg(p)
    p.add_argument("--events", type=int, default=8, help="recent events to show (default 8)")
    add_json_flag(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.runs.heartbeat import describe, phase_times
    from engine.runs.supervisor import Supervisor, checkpoint_usage, fmt_bytes
    from engine.wording import plural

    from engine.judging.cost import cost_summary, describe_run_cost

    with open_store(args) as store:
        rec = Supervisor(store).refresh(args.run)
        latest = store.latest_metrics([rec.id]).get(rec.id, {})
        events = store.events(rec.id, limit=args.events if args.events > 0 else None) if args.events else []
        progress = store.progress([rec.id]).get(rec.id)
    cost = cost_summary(rec.config, latest)
    now = describe(progress) if rec.active else None
    disk = checkpoint_usage(rec)
    checkpoints = "none"
    if disk.count:
        checkpoints = f"{fmt_bytes(disk.bytes)} in {plural(disk.count, 'checkpoint')} under {rec.run_dir}"
        if not rec.active:
            checkpoints += f"  (free it: ropd-tui --headless delete {rec.name} --checkpoints --yes)"
    if args.json:
        d = rec.to_dict()
        d.update(log_path=str(rec.log_path), latest_metrics=latest, events=events, cost=cost, progress=progress,
                 checkpoints={"bytes": disk.bytes, "count": disk.count, "folders": [str(f) for f in disk.folders]},
                 now=None if now is None else {"text": now.text, "phase": now.phase, "no_progress": now.quiet})
        print_json(d)
        return 0
    rows = [
        ("run", f"{rec.name} (id {rec.id}, {rec.backend}, attempt {rec.attempt})"),
        ("status", rec.status + (f" - {rec.cause}" if rec.cause and rec.cause != rec.status else "")),
        ("host", rec.host or ""),
        ("pids", f"trainer {rec.pid or '-'}, monitor {rec.monitor_pid or '-'}, session {rec.sid or '-'}"),
        ("started", fmt_time(rec.started_at)),
        ("ended", fmt_time(rec.ended_at)),
        ("last step", "" if rec.last_step is None else f"{rec.last_step} ({fmt_age(rec.last_step_at)})"),
        ("now", "" if now is None else now.text),
        ("time per phase", "" if rec.active else phase_times((progress or {}).get("totals"))),
        ("exit", "" if rec.exit_code is None and rec.exit_signal is None else
         f"code {rec.exit_code}" + (f", signal {rec.exit_signal}" if rec.exit_signal else "")),
        ("judge cost", describe_run_cost(cost)),
        ("log", str(rec.log_path)),
        ("checkpoints", checkpoints),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        if v:
            echo(f"{k.ljust(width)}  {term_safe(v, multiline=False)}")
    shown = [(k, latest[k]) for k in HEADLINE if k in latest]
    if shown:
        print()
        print_table(["METRIC", "LATEST"], shown)
    if rec.stderr_tail and rec.status in ("failed", "killed", "oom"):
        print("\nlast log lines:")
        for line in rec.stderr_tail.splitlines()[-10:]:
            echo(f"  {line}")
    if events:
        print()
        print_table(["TIME", "EVENT", "STEP", "MESSAGE"],
                    [[fmt_time(e["ts"]), e["kind"], e["step"], e["message"]] for e in events])
    return 0
