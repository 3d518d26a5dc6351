"""``ropd-tui --headless score``: score groups of rollouts with the configured judge, without training.

Input JSONL, one group per line::

    {"prompt": "..." | [chat messages], "rollouts": ["...", ...], "ground_truth": "7" (optional),
     "teacher_answers": ["...", ...] (optional; else the teacher index), "uid": ..., "data_source": ...}

Output JSONL, one line per group: the rubric, the verdict matrix (rollouts and teacher answers), the
per-rollout rewards, the teacher scores, rule-based correctness, the group status (ok | recovered |
failed with stage and cause) and the judge calls. With no LLM judge configured the offline judge is
used and every output line says so (``"judge": "offline"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEMO_INPUT = "data/demo/groups.jsonl"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="score groups of rollouts with the judge (no training)",
        description="Score each group of student rollouts (one JSONL line per group) with the ROPD pipeline: "
        "teacher answers, one shared rubric, blind verification, rewards. Uses the offline rule-based judge "
        "unless an LLM judge is configured (OPENAI_API_KEY / OPENAI_BASE_URL or judge.* in --config).")
    p.add_argument("--input", default=None, help=f"groups JSONL (default: the bundled demo, {DEMO_INPUT})")
    p.add_argument("--out", required=True, help="where to write the scored groups (JSONL)")
    p.add_argument("--config", help="config file (YAML)")
    p.add_argument("--full", action="store_true", help="also write each group's complete result (answers, calls, raw replies)")
    p.add_argument("--add-to-index", action="store_true",
                   help="store the demo teacher answers made for prompts missing from teacher.index in that index "
                   "(default: use them for this command only and leave the index unchanged)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. scorer.k=2 judge.mode=offline")
    p.set_defaults(func=handler)


# ---------------------------------------------------------------------------------------------
# input

def _input_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    local = Path(DEMO_INPUT)
    if local.exists():
        return local
    return Path(__file__).resolve().parents[2] / DEMO_INPUT


def read_groups(path: Path) -> list[tuple[Any, dict[str, Any]]]:
    """(GroupInput, raw line dict) per non-empty line; UserError naming the file and line on bad input."""
    import json

    from engine.errors import UserError
    from engine.files import check_input_file, iter_utf8_lines
    from engine.types import GroupInput

    if not path.exists():
        raise UserError(f"input file not found: {path}", hint=f"give --input a JSONL file of groups (see {DEMO_INPUT})")
    check_input_file(path, "--input", hint=f"give --input a JSONL file of groups (see {DEMO_INPUT})")
    out = []
    for lineno, line in iter_utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where} is not valid JSON ({e.msg})",
                            hint='each line must be {"prompt": ..., "rollouts": [...], "ground_truth": ...}') from None
        if not isinstance(obj, dict):
            raise UserError(f"{where} must be a JSON object")
        prompt = obj.get("prompt")
        if not isinstance(prompt, (str, list)) or not prompt:
            raise UserError(f'{where} has no "prompt" (a string or a list of chat messages)')
        if isinstance(prompt, list) and not all(isinstance(m, dict) and "content" in m for m in prompt):
            raise UserError(f'{where}: "prompt" as a list must hold chat messages {{"role": ..., "content": ...}}')
        rollouts = obj.get("rollouts")
        if not isinstance(rollouts, list) or not rollouts or not all(isinstance(r, str) for r in rollouts):
            raise UserError(f'{where}: "rollouts" must be a non-empty list of strings')
        teachers = obj.get("teacher_answers")
        if teachers is not None and (not isinstance(teachers, list) or not all(isinstance(t, str) for t in teachers)):
            raise UserError(f'{where}: "teacher_answers" must be a list of strings (or left out to use the teacher index)')
        gt = obj.get("ground_truth")
        if gt is not None and not isinstance(gt, (str, int, float)):
            raise UserError(f'{where}: "ground_truth" must be a string or a number')
        meta = {k: obj[k] for k in ("data_source",) if k in obj}
        uid = obj.get("uid")
        out.append((GroupInput(prompt=prompt, rollouts=list(rollouts), ground_truth=None if gt is None else str(gt),
                               teacher_answers=teachers, uid=None if uid is None else str(uid), meta=meta), obj))
    if not out:
        raise UserError(f"{path} holds no groups", hint="one JSON object per line")
    return out


def _is_demo_math(group: Any, raw: dict[str, Any]) -> bool:
    from engine.tasks.demo_math import DATA_SOURCE, solve_question
    from engine.types import prompt_text

    if raw.get("data_source") not in (None, DATA_SOURCE):
        return False
    return solve_question(prompt_text(group.prompt)) is not None


def prepare_teacher_index(cfg: Any, groups: list[tuple[Any, dict[str, Any]]], *,
                          add_to_index: bool = False) -> tuple[Any, list[str]]:
    """The teacher index the groups need (None when every group brings its teacher answers), and notes.

    Demo-math groups missing from the index get deterministic demo teacher answers when
    ``teacher.build_if_missing`` is on: for this command only (the index file is not touched), or
    appended to the index with ``add_to_index``.
    """
    from engine.errors import TeacherIndexError
    from engine.tasks.demo_math import TEACHER_SETTINGS, ensure_teacher_index, teacher_answers
    from engine.teacher.index import TeacherIndex, make_row

    notes: list[str] = []
    need = [(g, raw) for g, raw in groups if g.teacher_answers is None]
    if cfg.scorer.k <= 0 or not need:
        return None, notes
    path = cfg.teacher.index
    if not path:
        raise TeacherIndexError(f"{len(need)} group(s) have no teacher_answers and no teacher index is configured",
                                hint="set teacher.index=PATH (build one with ropd-tui --headless index build ...), "
                                "or give teacher_answers in the input")
    demo = [g for g, raw in need if _is_demo_math(g, raw)]
    if demo and cfg.teacher.build_if_missing:
        before = TeacherIndex.load(path) if Path(path).exists() else None
        missing = [g for g in demo if before is None or len(before.answers_for(g.prompt) or []) < cfg.scorer.k]
        problems = [{"prompt": g.prompt, "ground_truth": g.ground_truth} for g in missing]
        if missing and add_to_index:
            ensure_teacher_index(path, problems, cfg.scorer.k)
            notes.append(f"added deterministic demo teacher answers for {len(missing)} prompt(s) to {path}")
        elif missing:
            index = before if before is not None else TeacherIndex(path, {})
            for p in problems:
                row = make_row(p["prompt"], teacher_answers(p, max(cfg.scorer.k, 1)), TEACHER_SETTINGS)
                index.rows[row["key"]] = row
            notes.append(f"{len(missing)} prompt(s) are not in the teacher index {path}: scored with deterministic "
                         f"demo teacher answers made for this command only (the index is unchanged; "
                         f"--add-to-index stores them there)")
            return index, notes
        elif before is not None:
            return before, notes  # every demo prompt is in it: no second read
    return TeacherIndex.load(path), notes


# ---------------------------------------------------------------------------------------------
# output

def group_record(res: Any, *, full: bool = False) -> dict[str, Any]:
    from engine.types import to_jsonable

    students = res.student_answers
    teachers = res.teacher_answers
    rec: dict[str, Any] = {
        "group": res.group_index,
        "uid": res.uid,
        "prompt": res.prompt,
        "ground_truth": res.ground_truth,
        "status": res.status,
        "failure_stage": res.failure_stage,
        "failure_cause": res.failure_cause,
        "judge": res.judge_kind,
        "reward_mode": res.reward_mode,
        "teacher_source": res.meta.get("teacher_source"),
        "rubric": None if res.rubric is None else {
            "criteria": [{"id": c.id, "text": c.text, "points": c.points, "category": c.category}
                         for c in res.rubric.criteria],
            "total_points": res.rubric.total_points},
        "verdicts": {"rollouts": [a.verdicts for a in students], "teachers": [a.verdicts for a in teachers]},
        "rewards": res.student_rewards,
        "teacher_scores": res.teacher_scores if res.status != "failed" else [None] * len(teachers),
        "correct": [a.correct for a in students],
        "teacher_correct": [a.correct for a in teachers],
        "checker": [a.checker for a in students],  # which checker decided each "correct" (None: no ground truth)
        "judge_scores": {"rollouts": [a.judge_score for a in students], "teachers": [a.judge_score for a in teachers]},
        "truncated": [a.truncated for a in students],
        "calls": [{"role": c.role, "model": c.model, "status": c.status, "latency_s": round(c.latency_s, 4),
                   "attempts": c.attempts, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                   "finish_reason": c.finish_reason, "response_format": c.response_format,
                   "error_class": c.error_class, "error": c.error} for c in res.calls],
        "template_versions": res.template_versions,
        "wall_s": round(res.wall_s, 4),
    }
    if full:
        rec["result"] = to_jsonable(res)
    return rec


def write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    """One JSON line per record, written to a temporary file and renamed over ``path`` (never a half file)."""
    from engine.templates.editing import save_atomically

    from ._output import json_text

    save_atomically(path, "".join(json_text(r) + "\n" for r in records))


def save_results(out: Path, records: list[dict[str, Any]], store_flag: str | None) -> Path | None:
    """Write the records to ``out``; when that fails after judging, to a fallback file (next to the run
    store, else the temp folder). Returns the fallback path used, None when ``out`` was written.
    Raises UserError only when neither could be written (the message names both causes)."""
    from engine.errors import UserError
    from engine.files import fallback_path, os_error_hint
    from engine.store import resolve_store_path

    from ._output import warn

    try:
        write_jsonl_atomic(out, records)
        return None
    except OSError as err:
        first = err
    spare = fallback_path(f"scores-{out.stem or 'out'}", near=resolve_store_path(store_flag).parent)
    try:
        write_jsonl_atomic(spare, records)
    except OSError as err:
        raise UserError(f"could not write the scored groups to {out} ({first}) nor to {spare} ({err}); "
                        "the results are lost", hint=os_error_hint(first, out.parent)) from None
    hint = os_error_hint(first, out.parent)
    warn(f"error: could not write {out}: {first}" + (f"\n  hint: {hint}" if hint else ""))
    warn(f"the {len(records)} scored group(s) are kept in {spare} (move it where you want it)")
    return spare


def _fmt_rewards(values: list[Any]) -> str:
    return " ".join("-" if v is None else f"{v:.2f}" for v in values)


def summary_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    from engine.teacher.index import shorten
    from engine.types import prompt_text

    rows = []
    for r in records:
        t = [s for s in r["teacher_scores"] if s is not None]
        correct = [c for c in r["correct"] if c is not None]
        rows.append([r["group"], r["status"], shorten(prompt_text(r["prompt"]), 40),
                     len(r["rubric"]["criteria"]) if r["rubric"] else "-", _fmt_rewards(r["rewards"]),
                     f"{sum(t) / len(t):.2f}" if t else "-",
                     f"{sum(correct)}/{len(correct)}" if correct else "-"])
    return rows


# ---------------------------------------------------------------------------------------------

#: Judge failure kinds that mean the judge is unreachable or misconfigured (exit 3), not a bad reply.
#: "unreachable": the endpoint's circuit breaker opened (it stopped answering after the preflight).
UNREACHABLE_KINDS = ("connection", "timeout", "auth", "not_found", "config", "unreachable")


def failure_kind(record: dict[str, Any]) -> str | None:
    """The judge error kind of a failed group's last failed call ("connection", ...), if any."""
    for call in reversed(record.get("calls") or []):
        err = call.get("error_class") or ""
        if call.get("status") == "error" and err.startswith("JudgeError:"):
            return err.split(":", 1)[1]
    return None


def failure_lines(records: list[dict[str, Any]], limit: int = 5) -> list[str]:
    """Failed groups grouped by cause: one line per distinct (stage, cause), with the group numbers."""
    from collections import OrderedDict

    by_cause: "OrderedDict[tuple[str, str], list[int]]" = OrderedDict()
    for r in records:
        if r["status"] == "failed":
            cause = " ".join(str(r["failure_cause"] or "unknown").split())
            by_cause.setdefault((str(r["failure_stage"]), cause), []).append(r["group"])
    lines = []
    for (stage, cause), idx in list(by_cause.items())[:limit]:
        shown = ", ".join(map(str, idx[:8])) + (f" and {len(idx) - 8} more" if len(idx) > 8 else "")
        what = f"group {shown}" if len(idx) == 1 else f"{len(idx)} groups ({shown})"
        lines.append(f"{what} failed at {stage}: {cause if len(cause) <= 600 else cause[:599] + '…'}")
    if len(by_cause) > limit:
        lines.append(f"... and {len(by_cause) - limit} other cause(s); see failure_cause in the output file")
    return lines


def _quiet_engine_logs() -> None:
    """The scorer logs each failed group; the summary below says it once (no second copy on stderr)."""
    import logging

    logger = logging.getLogger("ropd")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def handler(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.errors import JudgeError, ScoringFailureRateError, UserError
    from engine.files import check_output_file
    from engine.judging.factory import make_judge
    from engine.progress import JudgeProgress, tracking
    from engine.scoring.scorer import Scorer
    from engine.trainers.preflight import check_templates

    from ._output import echo, print_json, print_table, warn
    from ._progress import ProgressReporter

    _quiet_engine_logs()
    inp = _input_path(args.input)
    out = Path(args.out)
    if out.exists() and inp.exists() and out.resolve() == inp.resolve():
        raise UserError(f"--out {out} is the input file", hint="write the scores to another file")
    cfg = load_config(args.config, list(args.overrides))
    groups = read_groups(inp)
    check_output_file(out, "--out")  # before judging: a read-only or full disk is reported now, not after
    judge = make_judge(cfg)
    is_llm = getattr(judge, "kind", "offline") == "llm"
    if is_llm:
        check_templates(cfg)  # every template the judge will use, before the first request (exit 2)
        ep = cfg.judge.rubricator
        judge_line = (f"judge: LLM (rubricator {cfg.judge.rubricator.model or '?'}, verifier "
                      f"{cfg.judge.verifier.model or '?'} at {ep.base_url or 'OPENAI_BASE_URL / api.openai.com'})")
    else:
        judge_line = ("judge: offline (rule-based stand-in for an LLM judge; set OPENAI_API_KEY or OPENAI_BASE_URL, "
                      "or judge.* in a config, to use an LLM judge)")
    warn(judge_line)
    index, notes = prepare_teacher_index(cfg, groups, add_to_index=args.add_to_index)
    for n in notes:
        warn(n)
    scorer = Scorer(cfg, judge=judge, teacher_index=index)
    if is_llm:
        checked = scorer.preflight_sync()  # a dead, hung or misconfigured judge: JudgeError (exit 3) in seconds
        warn("judge reachable: " + ", ".join(f"{c.get('model')} @ {c.get('url')}" for c in checked))
    warn(f"scoring {len(groups)} group(s) from {inp} (reward mode {cfg.scorer.reward_mode}, k={cfg.scorer.k})")
    prog = JudgeProgress("scoring", len(groups))
    reporter = ProgressReporter(enabled=is_llm).follow(prog)
    try:
        with tracking(prog):
            batch = scorer.score_batch_sync([g for g, _ in groups])
    finally:
        prog.finish()
        reporter.close(prog.snapshot())
    records = [group_record(g, full=args.full) for g in batch.groups]
    spare = save_results(out, records, getattr(args, "store", None))
    written = spare or out
    if index is not None:
        for w in index.warnings:
            warn(f"warning: {w}")

    failed = [r for r in records if r["status"] == "failed"]
    unreachable = [r for r in failed if failure_kind(r) in UNREACHABLE_KINDS]
    outage = bool(unreachable) and len(failed) / len(records) > cfg.scorer.failure_threshold
    # A judge outage is said once, in the error below; other failures get one line per distinct cause.
    failures = failure_lines([r for r in records if not (outage and r in unreachable)])
    if args.json:
        print_json({"judge": "llm" if is_llm else "offline", "out": str(written), "groups": len(records),
                    "failed": len(failed), "wall_s": round(batch.wall_s, 3),
                    "summary": [dict(zip(("group", "status", "prompt", "criteria", "rewards", "teacher_mean",
                                          "correct"), row)) for row in summary_rows(records)]})
    else:
        echo(judge_line if is_llm else "judge: offline (rule-based stand-in for an LLM judge)")
        print_table(["group", "status", "prompt", "criteria", "rollout rewards", "teacher", "correct"],
                    summary_rows(records))
        for line in failures:
            echo(line)
        echo(f"wrote {len(records)} scored group(s) to {written} in {batch.wall_s:.2f}s")
    if outage:
        # the circuit breaker's cause says most (how many requests failed, the last failure, what to do)
        first = next((r for r in unreachable if failure_kind(r) == "unreachable"), unreachable[0])
        cause, _, hint = str(first["failure_cause"]).partition("\n  hint: ")
        raise JudgeError(f"the judge became unreachable while scoring ({len(failed)} of {len(records)} groups "
                         f"failed): {' '.join(cause.split())[:600]}",
                         hint=(f"{hint.strip()}; " if hint.strip() else "") +
                         f"then score again (the {len(records) - len(failed)} scored group(s) are in {written})")
    try:
        scorer.check_failure_rate(batch)
    except ScoringFailureRateError:
        warn(f"(the scored groups were written to {written})")
        raise
    return 1 if spare else 0
