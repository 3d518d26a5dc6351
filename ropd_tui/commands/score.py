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
import sys
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
    from engine.types import GroupInput

    if not path.exists():
        raise UserError(f"input file not found: {path}", hint=f"give --input a JSONL file of groups (see {DEMO_INPUT})")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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
        "judge_scores": {"rollouts": [a.judge_score for a in students], "teachers": [a.judge_score for a in teachers]},
        "truncated": [a.truncated for a in students],
        "calls": [{"role": c.role, "model": c.model, "status": c.status, "latency_s": round(c.latency_s, 4),
                   "attempts": c.attempts, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                   "error": c.error} for c in res.calls],
        "template_versions": res.template_versions,
        "wall_s": round(res.wall_s, 4),
    }
    if full:
        rec["result"] = to_jsonable(res)
    return rec


def write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    import json
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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

def handler(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.errors import ScoringFailureRateError, UserError
    from engine.judging.factory import make_judge
    from engine.scoring.scorer import Scorer

    from ._output import print_json, print_table

    inp = _input_path(args.input)
    out = Path(args.out)
    if out.resolve() == inp.resolve():
        raise UserError(f"--out {out} is the input file", hint="write the scores to another file")
    cfg = load_config(args.config, list(args.overrides))
    groups = read_groups(inp)
    judge = make_judge(cfg)
    is_llm = getattr(judge, "kind", "offline") == "llm"
    if is_llm:
        ep = cfg.judge.rubricator
        judge_line = (f"judge: LLM (rubricator {cfg.judge.rubricator.model or '?'}, verifier "
                      f"{cfg.judge.verifier.model or '?'} at {ep.base_url or 'OPENAI_BASE_URL / api.openai.com'})")
    else:
        judge_line = ("judge: offline (rule-based stand-in for an LLM judge; set OPENAI_API_KEY or OPENAI_BASE_URL, "
                      "or judge.* in a config, to use an LLM judge)")
    print(judge_line, file=sys.stderr)
    index, notes = prepare_teacher_index(cfg, groups, add_to_index=args.add_to_index)
    for n in notes:
        print(n, file=sys.stderr)
    scorer = Scorer(cfg, judge=judge, teacher_index=index)
    print(f"scoring {len(groups)} group(s) from {inp} (reward mode {cfg.scorer.reward_mode}, k={cfg.scorer.k})",
          file=sys.stderr)
    batch = scorer.score_batch_sync([g for g, _ in groups])
    records = [group_record(g, full=args.full) for g in batch.groups]
    write_jsonl_atomic(out, records)
    if index is not None:
        for w in index.warnings:
            print(f"warning: {w}", file=sys.stderr)

    if args.json:
        print_json({"judge": "llm" if is_llm else "offline", "out": str(out), "groups": len(records),
                    "failed": sum(r["status"] == "failed" for r in records), "wall_s": round(batch.wall_s, 3),
                    "summary": [dict(zip(("group", "status", "prompt", "criteria", "rewards", "teacher_mean",
                                          "correct"), row)) for row in summary_rows(records)]})
    else:
        print(judge_line if is_llm else "judge: offline (rule-based stand-in for an LLM judge)")
        print_table(["group", "status", "prompt", "criteria", "rollout rewards", "teacher", "correct"],
                    summary_rows(records))
        for r in records:
            if r["status"] == "failed":
                print(f"group {r['group']} failed at {r['failure_stage']}: {r['failure_cause']}")
        print(f"wrote {len(records)} scored group(s) to {out} in {batch.wall_s:.2f}s")
    try:
        scorer.check_failure_rate(batch)
    except ScoringFailureRateError:
        print(f"(the scored groups were written to {out})", file=sys.stderr)
        raise
    return 0
