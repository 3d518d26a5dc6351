"""``ropd-tui --headless export RUN --format csv|jsonl --what metrics|answers|verdicts|cost [--out FILE]``.

JSONL is exact (terminal control characters in texts are JSON-escaped, which decodes to the same
string). CSV written to a file or a pipe is exact; CSV shown on a terminal has its control characters
replaced by visible escapes (``\x1b``), so model output cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Any, Iterator

METRIC_FIELDS = ["step", "key", "value", "wall_time"]
ANSWER_FIELDS = ["step", "group_index", "uid", "group_status", "answer_id", "kind", "index", "pool_position",
                 "reward", "correct", "checker", "clipped", "judge_truncated", "judge_score", "verdicts",
                 "question", "ground_truth", "text"]
COST_FIELDS = ["step", "role", "model", "calls", "cache_hits", "prompt_tokens", "cached_prompt_tokens",
               "completion_tokens", "usd"]
VERDICT_FIELDS = ["step", "group_index", "answer_id", "kind", "index", "pool_position", "criterion_position",
                  "points", "category", "passed", "criterion"]


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a run's metrics, answers or verdicts as CSV or JSONL",
                              description="Export one run (current attempt unless --attempt) to CSV or JSONL: "
                              "metrics (one row per step and key, including the cost/* metrics), answers (student "
                              "rollouts and teacher answers with reward, correctness, verdicts, `clipped` = cut at "
                              "the token limit and `judge_truncated` = cut to the judge's character budget), verdicts "
                              "(one row per answer x criterion) or cost (judge tokens and USD per step, role and "
                              "model, by the run's judge.<role>.price_* settings; usd is empty where a role has no "
                              "price).")
    p.add_argument("run", metavar="RUN", help="run name or numeric id")
    p.add_argument("--format", choices=("csv", "jsonl"), default="jsonl", help="output format (default jsonl)")
    p.add_argument("--what", choices=("metrics", "answers", "verdicts", "cost"), default="metrics",
                   help="what to export (default metrics)")
    p.add_argument("--out", help="output file (default: standard output)")
    p.add_argument("--attempt", type=int, help="attempt number (default: the current one)")
    p.set_defaults(func=handler)


def _metric_rows(store, run_id: int, attempt: int | None) -> Iterator[dict[str, Any]]:
    for key in store.metric_keys(run_id, attempt=attempt):
        for step, value, wall in store.metric_series(run_id, key, attempt=attempt, with_time=True):
            yield {"step": step, "key": key, "value": value, "wall_time": wall}


def _answer_rows(store, run_id: int, attempt: int | None, fmt: str) -> Iterator[dict[str, Any]]:
    for s in store.steps(run_id, attempt=attempt):  # one step at a time: short read snapshots
        for a in store.answers(run_id, [s["step"]], attempt=attempt, include_verdicts=True):
            a.pop("prompt", None)
            a.pop("group_id", None)
            # clipped: the rollout hit max_new_tokens (None: not known, e.g. teacher answers);
            # judge_truncated: the judge saw it cut to scorer.answer_char_budget characters
            a["judge_truncated"] = a.pop("truncated", None)
            if fmt == "csv":
                a["verdicts"] = "" if a["verdicts"] is None else "".join("1" if v else "0" for v in a["verdicts"])
            yield {k: a.get(k) for k in ANSWER_FIELDS} if fmt == "csv" else a


def _verdict_rows(store, run_id: int, attempt: int | None) -> Iterator[dict[str, Any]]:
    for s in store.steps(run_id, attempt=attempt):
        yield from store.verdicts(run_id, s["step"], attempt=attempt)


def handler(args: argparse.Namespace) -> int:
    from ._runs_common import open_store

    with open_store(args) as store:
        rec = store.get_run(args.run)
        if args.what == "metrics":
            rows, fields = _metric_rows(store, rec.id, args.attempt), METRIC_FIELDS
        elif args.what == "answers":
            rows, fields = _answer_rows(store, rec.id, args.attempt, args.format), ANSWER_FIELDS
        elif args.what == "cost":
            rows, fields = ({k: r[k] for k in COST_FIELDS} for r in store.judge_usage(rec.id, attempt=args.attempt)), COST_FIELDS
        else:
            rows, fields = _verdict_rows(store, rec.id, args.attempt), VERDICT_FIELDS
        if args.out:
            from engine.errors import UserError
            from engine.files import check_output_file, os_error_hint

            out_path = check_output_file(args.out, "--out")
            tmp = out_path.with_name(out_path.name + ".part")
            try:
                with open(tmp, "w", encoding="utf-8", newline="") as f:
                    n = _write(rows, fields, args.format, f)
                os.replace(tmp, out_path)
            except OSError as err:
                try:
                    tmp.unlink()
                except OSError:
                    pass
                raise UserError(f"could not write {out_path}: {err.strerror or err}",
                                hint=os_error_hint(err, out_path.parent)) from None
            from ._output import warn

            warn(f"exported {n} {args.what} rows of run {rec.name} to {out_path}")
        else:
            _write(rows, fields, args.format, sys.stdout, on_terminal=_isatty(sys.stdout))
    return 0


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _write(rows, fields, fmt: str, f, *, on_terminal: bool = False) -> int:
    from ._output import json_text, term_safe

    n = 0
    if fmt == "csv":
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", **({"lineterminator": "\n"} if on_terminal else {}))
        w.writeheader()
        for r in rows:
            row = {k: ("" if v is None else v) for k, v in r.items()}
            if on_terminal:
                row = {k: term_safe(v) if isinstance(v, str) else v for k, v in row.items()}
            w.writerow(row)
            n += 1
    else:
        for r in rows:
            f.write(json_text(r) + "\n")
            n += 1
    return n
