"""``ropd-tui --headless replay RUN ...``: re-judge stored answers and compare old vs new rewards."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ._output import add_json_flag, echo, print_json, print_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="re-judge stored answers with another template/judge/rubric and compare",
        description="Re-run verification (stored rubric) or rubric induction + verification on stored answers "
        "of a run, store the result as a replay, and print old vs new rewards, verdict flips and the AUC of "
        "reward against correctness. Identical judge requests are answered from the store unless --force.")
    p.add_argument("run", nargs="?", help="run name or id")
    sel = p.add_argument_group("which answers")
    sel.add_argument("--steps", help="steps, e.g. 1-5,8 (default: all)")
    sel.add_argument("--prompts", nargs="+", metavar="P",
                     help="prompt hash prefixes (6+ hex digits) or substrings of the question")
    sel.add_argument("--failed-only", action="store_true", help="only groups whose scoring failed")
    sel.add_argument("--reward-range", metavar="A:B",
                     help="groups with a student answer whose stored reward is within A..B")
    sel.add_argument("--max-groups", type=int, help="replay at most this many groups")
    how = p.add_argument_group("how to judge")
    how.add_argument("--template", action="append", metavar="ROLE=FILE|VERSION",
                     help="template for rubricator/verifier: a file or a stored version (sha prefix); repeatable")
    how.add_argument("--judge-model", metavar="M", help="judge model (rubricator and verifier)")
    how.add_argument("--base-url", metavar="URL", help="OpenAI-compatible base URL of the judge")
    how.add_argument("--offline", action="store_true", help="use the offline (deterministic, no network) judge")
    how.add_argument("--rubric", choices=("reuse", "induce"), default="reuse",
                     help="reuse the stored rubric (default) or induce a new one")
    how.add_argument("--force", action="store_true", help="ask the judge again even for cached requests")
    how.add_argument("--concurrency", type=int, help="judge requests in flight (default: the run's judge.concurrency)")
    p.add_argument("--name", help="a name for this replay")
    p.add_argument("--list", action="store_true", help="list stored replays (of RUN, or all) and exit")
    p.add_argument("--show", type=int, metavar="ID", help="print a stored replay's results and exit")
    p.add_argument("--top", type=int, default=10, help="rows in the per-answer and per-criterion tables")
    add_json_flag(p)
    p.set_defaults(func=handler)


def _fmt(v: Any, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:+.4f}" if signed else f"{v:.4f}"
    return str(v)


def print_report(report: Any, top: int = 10, file=None) -> None:
    out = file or sys.stdout
    s = report.summary
    st = report.stats or {}
    settings = report.settings or {}
    tpl = ", ".join(f"{r}={v.get('sha256', '')[:12]}" for r, v in (settings.get("templates") or {}).items())
    echo(f"replay {report.replay_id} of run {report.run_name!r}: {report.status}"
          f"  (judge {settings.get('judge')}, rubric {settings.get('rubric_mode')}, templates {tpl})", file=out)
    outage = report.judge_unreachable  # the judge stopped answering: said once, in the error that follows
    if report.status == "failed" and report.cause and not outage:
        print(f"  {_clip(report.cause, 600)}", file=out)
    rows = [
        ("groups replayed", s.groups), ("groups failed", s.failed_groups), ("student answers compared", s.answers),
        ("mean reward old", _fmt(s.mean_reward_old)), ("mean reward new", _fmt(s.mean_reward_new)),
        ("mean reward shift", _fmt(s.mean_reward_shift, signed=True)),
        ("verdict agreement", _fmt(s.verdict_agreement)), ("verdict flips", s.verdict_flips),
        ("answers with ground truth", s.answers_with_truth),
        ("AUC reward vs correct, old", _fmt(s.auc_old)), ("AUC reward vs correct, new", _fmt(s.auc_new)),
        ("teacher mean old / new", f"{_fmt(s.teacher_mean_old)} / {_fmt(s.teacher_mean_new)}"),
        ("judge calls (cached)", f"{st.get('judge_calls', '-')} ({st.get('cached_calls', '-')})"),
        ("wall time", f"{st['wall_s']:.2f}s" if st.get("wall_s") is not None else "-"),
        ("answers/s", f"{st['answers_per_s']:.1f}" if st.get("answers_per_s") else "-"),
    ]
    print_table(["summary", "value"], rows, file=out)
    crits = report.criterion_flips(only_changed=True)[:top]
    if crits:
        echo(file=out)
        print_table(["step", "group", "criterion", "pts", "T->F", "F->T", "agree"],
                    [(g.step, g.group_index, _clip(f"{c.criterion_id}: {c.text}", 60), c.points, c.true_to_false,
                      c.false_to_true, _fmt(c.agreement)) for g, c in crits], file=out)
    moved = sorted((a for a in report.answers if a.shift), key=lambda a: -abs(a.shift))[:top]
    if moved:
        echo(file=out)
        print_table(["step", "group", "answer", "correct", "old", "new", "shift"],
                    [(a.step, a.group_index, f"{a.kind[0]}{a.index}", "-" if a.correct is None else a.correct,
                      _fmt(a.old_reward), _fmt(a.new_reward), _fmt(a.shift, signed=True)) for a in moved], file=out)
    failed = [g for g in report.groups if g.status == "failed"] if not outage else []
    for g in failed[:top]:
        echo(f"failed: step {g.step} group {g.group_index} ({g.failure_stage}): {_clip(g.failure_cause or '', 200)}",
              file=out)


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def handler(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import threading

    from engine.errors import ConfigError
    from engine.progress import JudgeProgress, tracking
    from engine.replay.runner import (ReplaySpec, list_replays, load_report, parse_reward_range, parse_steps,
                               parse_template_args, run_replay)
    from engine.store import resolve_store_path

    from ._progress import ProgressReporter

    store = resolve_store_path(args.store)
    if not store.exists():
        from engine.errors import StoreError

        raise StoreError(f"no run store at {store}", hint="pass --store PATH or set $ROPD_STORE")
    if args.list:
        rows = list_replays(store, args.run)
        if args.json:
            print_json(rows)
        else:
            print_table(["id", "run", "status", "judge", "rubric", "groups", "created"],
                        [(r["id"], r.get("run_name"), r["status"], r["settings"].get("judge"),
                          r["settings"].get("rubric_mode"), f"{r.get('n_done')}/{r.get('n_total')}",
                          time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"]))) for r in rows])
        return 0
    if args.show is not None:
        report = load_report(store, args.show)
        if args.json:
            print_json(report.to_jsonable())
        else:
            print_report(report, args.top)
        return 0
    if not args.run:
        raise ConfigError("replay needs a RUN (name or id)", hint="ropd-tui --headless runs lists them")
    if args.offline and (args.judge_model or args.base_url):
        raise ConfigError("--offline cannot be combined with --judge-model/--base-url")
    spec = ReplaySpec(
        run=args.run, steps=parse_steps(args.steps), prompts=args.prompts, failed_only=args.failed_only,
        reward_range=parse_reward_range(args.reward_range), templates=parse_template_args(args.template),
        judge_model=args.judge_model, base_url=args.base_url, offline=args.offline, rubric_mode=args.rubric,
        force=args.force, concurrency=args.concurrency, max_groups=args.max_groups, name=args.name)
    cancel = threading.Event()
    tracker = JudgeProgress("replay")
    reporter = ProgressReporter().follow(tracker)

    async def main():
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, cancel.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
            pass
        return await run_replay(store, spec, cancel=cancel)

    try:
        with tracking(tracker):
            report = asyncio.run(main())
    finally:
        tracker.finish()
        reporter.close(tracker.snapshot() if tracker.groups_total else None)
    if args.json:
        print_json(report.to_jsonable())
    else:
        print_report(report, args.top)
    if report.status == "cancelled":
        echo(f"replay {report.replay_id} cancelled; the groups done so far are stored", file=sys.stderr)
        return 130
    if report.status == "failed":
        from engine.errors import JudgeUnreachableError, ScoringFailureRateError

        error = JudgeUnreachableError if report.judge_unreachable else ScoringFailureRateError  # exit 3 / 4
        raise error(f"replay {report.replay_id} failed: {report.cause or 'see the failed groups'}",
                                      hint=f"the results are stored (ropd-tui --headless replay --show "
                                      f"{report.replay_id}); fix the judge and run the replay again")
    return 0 if report.status == "done" else 1
