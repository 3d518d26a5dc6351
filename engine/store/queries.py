"""Read helpers over a connection (called by :class:`engine.store.RunStore` inside a read snapshot)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable

from engine.scoring.criterion_stats import EDGE, GAP, VERDICT_ORDER

# Tables with a monotonically increasing ``seq`` that readers can follow with a cursor.
CURSOR_TABLES = ("metrics", "events", "steps", "groups", "judge_calls")

# Where list_runs() finds the headline numbers; the first key a run has wins.
REWARD_KEYS = ("reward/mean", "reward", "critic/score/mean", "score/student_reward_mean")
ACCURACY_KEYS = ("accuracy", "acc/mean", "val/accuracy", "score/student_accuracy")


def _loads(text: str | None, default=None):
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _marks(n: int) -> str:
    return ",".join("?" * n)


def latest_metrics(c: sqlite3.Connection, run_ids: Iterable[int] | None) -> dict[int, dict[str, float]]:
    if run_ids is None:
        rows = c.execute("SELECT run_id, key, value FROM latest_metrics").fetchall()
    else:
        ids = [int(r) for r in run_ids]
        if not ids:
            return {}
        rows = c.execute(f"SELECT run_id, key, value FROM latest_metrics WHERE run_id IN ({_marks(len(ids))})",
                         ids).fetchall()
    out: dict[int, dict[str, float]] = {}
    for run_id, key, value in rows:
        out.setdefault(run_id, {})[key] = value
    return out


_PROGRESS_COLS = ("run_id", "attempt", "step", "total_steps", "phase", "done", "total", "unit", "detail",
                  "phase_started", "progress_at", "updated_at", "no_progress_after_s", "totals_json")


def progress_rows(c: sqlite3.Connection, run_ids: Iterable[int] | None) -> dict[int, dict[str, Any]]:
    """{run_id: progress row} for runs whose row belongs to their current attempt."""
    sql = (f"SELECT {', '.join('p.' + k for k in _PROGRESS_COLS)} FROM run_progress p"
           " JOIN runs r ON r.id = p.run_id AND r.attempt = p.attempt")
    params: list[int] = []
    if run_ids is not None:
        params = [int(r) for r in run_ids]
        if not params:
            return {}
        sql += f" WHERE p.run_id IN ({_marks(len(params))})"
    out: dict[int, dict[str, Any]] = {}
    for row in c.execute(sql, params).fetchall():
        d = dict(zip(_PROGRESS_COLS, row))
        d["totals"] = _loads(d.pop("totals_json"), {}) or {}
        out[d["run_id"]] = d
    return out


def headline(latest: dict[str, float], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        if latest.get(k) is not None:
            return latest[k]
    return None


def metric_series(c: sqlite3.Connection, run_id: int, attempt: int, key: str, since_step: int | None,
                  with_time: bool) -> list[tuple]:
    sql = "SELECT step, value" + (", wall_time" if with_time else "") + \
          " FROM metrics WHERE run_id=? AND attempt=? AND key=?"
    params: list[Any] = [run_id, attempt, key]
    if since_step is not None:
        sql += " AND step > ?"
        params.append(since_step)
    return [tuple(r) for r in c.execute(sql + " ORDER BY step", params).fetchall()]


CURVE_BUCKETS = 512  # a curve read holds at most this many buckets (two points each): wider than any plot


def metric_curve(c: sqlite3.Connection, run_id: int, attempt: int, key: str, buckets: int = CURVE_BUCKETS,
                 since: tuple[int, int] | None = None) -> dict[str, Any]:
    """One metric series at screen resolution, read with a bounded number of rows whatever the run's length.

    Returns ``{"level": 0, "rows": [(step, value, wall_time)]}`` (every point, non-null values, ordered by
    step) when the series spans at most ``2 * buckets`` steps, else ``{"level": l, "first": row, "last": row,
    "buckets": [(bucket, n, total, lo_step, lo_value, hi_step, hi_value)]}`` from ``metric_buckets`` (schema
    v13) at the lowest level l with at most ``buckets`` buckets between the first and the last step, and
    ``walls``: {step: wall_time} of each bucket's minimum and maximum and of the first and last points.
    ``since=(level, bucket)``: only the buckets from ``bucket`` on (the rows after step ``bucket`` at level
    0) when the level is still ``level`` (a reload after new steps)."""
    where = "FROM metrics WHERE run_id=? AND attempt=? AND key=? AND value IS NOT NULL"
    k = (run_id, attempt, key)
    first = c.execute(f"SELECT step, value, wall_time {where} ORDER BY step LIMIT 1", k).fetchone()
    if first is None:
        return {"level": 0, "rows": []}
    last = c.execute(f"SELECT step, value, wall_time {where} ORDER BY step DESC LIMIT 1", k).fetchone()
    lo, hi = first[0], last[0]
    level = 0
    if hi - lo + 1 > 2 * buckets:
        level = 1
        while (hi >> level) - (lo >> level) + 1 > buckets:
            level += 1
    if level == 0:
        after = since[1] if since is not None and since[0] == 0 else None
        rows = c.execute(f"SELECT step, value, wall_time {where}" + (" AND step > ?" if after is not None else "")
                         + " ORDER BY step", (*k, after) if after is not None else k).fetchall()
        return {"level": 0, "rows": [tuple(r) for r in rows]}
    start = since[1] if since is not None and since[0] == level else None
    rows = c.execute("SELECT bucket, n, total, lo_step, lo_value, hi_step, hi_value FROM metric_buckets"
                     " WHERE run_id=? AND attempt=? AND key=? AND level=? AND bucket >= ? ORDER BY bucket",
                     (*k, level, lo >> level if start is None else start)).fetchall()
    out = [tuple(r) for r in rows]
    steps = {s for r in out for s in (r[3], r[5])}
    walls = _values_at(c, run_id, attempt, key, sorted(steps), "wall_time")
    walls[first[0]], walls[last[0]] = first[2], last[2]
    return {"level": level, "first": tuple(first), "last": tuple(last), "buckets": out, "walls": walls}


def _values_at(c: sqlite3.Connection, run_id: int, attempt: int, key: str, steps, column: str) -> dict[int, Any]:
    out: dict[int, Any] = {}
    steps = [int(s) for s in steps]
    for i in range(0, len(steps), 900):
        chunk = steps[i:i + 900]
        out.update((r[0], r[1]) for r in c.execute(
            f"SELECT step, {column} FROM metrics WHERE run_id=? AND attempt=? AND key=?"
            f" AND step IN ({_marks(len(chunk))})", (run_id, attempt, key, *chunk)).fetchall())
    return out


def metric_values_at(c: sqlite3.Connection, run_id: int, attempt: int, key: str, steps) -> dict[int, float]:
    """{step: value} of ``key`` at ``steps`` (one index probe each; null values left out)."""
    return {s: v for s, v in _values_at(c, run_id, attempt, key, steps, "value").items() if v is not None}


def step_nav(c: sqlite3.Connection, run_id: int, attempt: int, step: int | None) -> dict[str, Any]:
    """Where ``step`` (the latest when None; the nearest existing one when it has no row) sits among the
    attempt's steps: step, first, last, prev, next (None at the ends) and its 1-based index of count.
    A few probes of idx_steps_run: nothing is read per step of the run but the two counts' index entries."""
    where = "FROM steps WHERE run_id=? AND attempt=?"
    key = (run_id, attempt)
    first, last, count = c.execute(f"SELECT min(step), max(step), count(*) {where}", key).fetchone()
    if count == 0:
        return {"step": None, "first": None, "last": None, "prev": None, "next": None, "index": 0, "count": 0}
    if step is None:
        step = last
    else:
        below = c.execute(f"SELECT max(step) {where} AND step <= ?", (*key, step)).fetchone()[0]
        above = c.execute(f"SELECT min(step) {where} AND step >= ?", (*key, step)).fetchone()[0]
        step = min((s for s in (below, above) if s is not None), key=lambda s: (abs(s - step), s))
    prev = c.execute(f"SELECT max(step) {where} AND step < ?", (*key, step)).fetchone()[0]
    nxt = c.execute(f"SELECT min(step) {where} AND step > ?", (*key, step)).fetchone()[0]
    index = c.execute(f"SELECT count(*) {where} AND step <= ?", (*key, step)).fetchone()[0]
    return {"step": step, "first": first, "last": last, "prev": prev, "next": nxt, "index": index, "count": count}


def load_groups(c: sqlite3.Connection, group_rows: list[sqlite3.Row], *, include_calls: bool,
                include_raw: bool = True) -> list[dict[str, Any]]:
    """Groups with their prompt, rubric (criteria), answers, verdict matrix and judge calls."""
    if not group_rows:
        return []
    ids = [r["seq"] for r in group_rows]
    marks = _marks(len(ids))
    hashes = sorted({r["prompt_hash"] for r in group_rows})
    prompts = {r[0]: (r[1], r[2]) for r in c.execute(
        f"SELECT hash, question, prompt_json FROM prompts WHERE hash IN ({_marks(len(hashes))})", hashes)}
    rubrics = {r["group_id"]: r for r in c.execute(f"SELECT * FROM rubrics WHERE group_id IN ({marks})", ids)}
    criteria: dict[int, list[dict]] = {}
    for r in c.execute(f"SELECT id, group_id, position, crit_key, text, points, category, template_sha,"
                       f" student_pass_rate, teacher_pass_rate FROM criteria WHERE group_id IN ({marks})"
                       f" ORDER BY group_id, position", ids):
        criteria.setdefault(r[1], []).append({
            "id": r[0], "position": r[2], "key": r[3], "text": r[4], "points": r[5], "category": r[6],
            "template_sha": r[7], "student_pass_rate": r[8], "teacher_pass_rate": r[9]})
    answers: dict[int, list[dict]] = {}
    for r in c.execute(f"SELECT id, group_id, kind, idx, pool_position, text, raw_text, truncated, reward,"
                       f" judge_score, correct, checker, clipped FROM answers WHERE group_id IN ({marks})"
                       f" ORDER BY group_id, id", ids):
        answers.setdefault(r[1], []).append({
            "id": r[0], "kind": r[2], "index": r[3], "pool_position": r[4], "text": r[5],
            "raw_text": r[6] if include_raw else None, "truncated": bool(r[7]), "reward": r[8],
            "judge_score": r[9], "correct": None if r[10] is None else bool(r[10]), "checker": r[11],
            "clipped": None if r[12] is None else bool(r[12])})
    verdicts: dict[int, dict[tuple[int, int], bool]] = {}
    for gid, aid, cid, passed in c.execute(
            f"SELECT group_id, answer_id, criterion_id, passed FROM verdicts WHERE group_id IN ({marks})", ids):
        verdicts.setdefault(gid, {})[(aid, cid)] = bool(passed)
    calls: dict[int, list[dict]] = {}
    if include_calls:
        for r in c.execute(f"SELECT * FROM judge_calls WHERE group_id IN ({marks}) ORDER BY seq", ids):
            calls.setdefault(r["group_id"], []).append(call_dict(r))
    out = []
    for g in group_rows:
        gid = g["seq"]
        question, prompt_json = prompts.get(g["prompt_hash"], ("", "null"))
        crits = criteria.get(gid, [])
        ans = answers.get(gid, [])
        vmap = verdicts.get(gid, {})
        matrix = [[vmap.get((a["id"], cr["id"])) for cr in crits] for a in ans]
        for a, row in zip(ans, matrix):
            a["verdicts"] = row if crits and any(v is not None for v in row) else None
        rub = rubrics.get(gid)
        out.append({
            "id": gid, "run_id": g["run_id"], "attempt": g["attempt"], "step": g["step"],
            "group_index": g["group_index"], "uid": g["uid"], "prompt_hash": g["prompt_hash"],
            "question": question, "prompt": _loads(prompt_json), "ground_truth": g["ground_truth"],
            "status": g["status"], "failure_stage": g["failure_stage"], "failure_cause": g["failure_cause"],
            "judge_kind": g["judge_kind"], "reward_mode": g["reward_mode"], "wall_s": g["wall_s"],
            "n_students": g["n_students"], "n_teachers": g["n_teachers"],
            "student_reward_mean": g["student_reward_mean"], "teacher_reward_mean": g["teacher_reward_mean"],
            "student_accuracy": g["student_accuracy"],
            "template_versions": _loads(g["template_versions_json"], {}), "meta": _loads(g["meta_json"], {}),
            "rubric": None if rub is None else {
                "schema_version": rub["schema_version"], "maximum_score": rub["maximum_score"],
                "total_points": rub["total_points"], "template_sha": rub["template_sha"], "criteria": crits},
            "answers": ans,
            "verdicts": matrix,
            "calls": calls.get(gid, []) if include_calls else None,
        })
    return out


def call_dict(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["cached"] = bool(d.get("cached"))
    return d


def criterion_rows(c: sqlite3.Connection, run_id: int, attempt: int, step: int | None) -> list[dict[str, Any]]:
    sql = ("SELECT g.step, g.group_index, g.seq AS group_id, cr.id, cr.position, cr.crit_key, cr.text, cr.points,"
           " cr.category, cr.template_sha, cr.student_pass_rate, cr.teacher_pass_rate"
           " FROM groups g JOIN criteria cr ON cr.group_id = g.seq WHERE g.run_id=? AND g.attempt=?")
    params: list[Any] = [run_id, attempt]
    if step is not None:
        sql += " AND g.step=?"
        params.append(step)
    rows = c.execute(sql + " ORDER BY g.step, g.group_index, cr.position", params).fetchall()
    return [{"step": r[0], "group_index": r[1], "group_id": r[2], "criterion_id": r[3], "position": r[4],
             "key": r[5], "text": r[6], "points": r[7], "category": r[8], "template_sha": r[9],
             "student_pass_rate": r[10], "teacher_pass_rate": r[11]} for r in rows]


def pass_rates_grouped(c: sqlite3.Connection, run_id: int, attempt: int, by: str) -> list[dict[str, Any]]:
    col = {"step": "g.step", "category": "coalesce(cr.category, '')", "points": "cr.points"}[by]
    rows = c.execute(
        f"SELECT {col} AS k, count(*), avg(cr.student_pass_rate), avg(cr.teacher_pass_rate)"
        f" FROM groups g JOIN criteria cr ON cr.group_id = g.seq WHERE g.run_id=? AND g.attempt=?"
        f" GROUP BY k ORDER BY k", (run_id, attempt)).fetchall()
    return [{by: r[0], "n_criteria": r[1], "student_pass_rate": r[2], "teacher_pass_rate": r[3]} for r in rows]


# Criterion verdicts in SQL: the same rules as engine.scoring.criterion_stats.classify (over t = teacher and
# s = student pass rate); the criterion rollups migration backfills existing stores with them.
VERDICT_SQL = f"""CASE
    WHEN s IS NULL THEN 'no data'
    WHEN s >= {1 - EDGE} AND (t IS NULL OR t >= {1 - EDGE}) THEN 'always passes'
    WHEN s <= {EDGE} AND (t IS NULL OR t <= {EDGE}) THEN 'never passes'
    WHEN t IS NOT NULL AND t - s >= {GAP} THEN 'discriminates'
    WHEN t IS NOT NULL AND s - t >= {GAP} THEN 'students ahead'
    ELSE 'weak' END"""
VERDICT_RANK_SQL = "CASE v " + " ".join(f"WHEN '{v}' THEN {i}" for i, v in enumerate(VERDICT_ORDER)) + " END"


def answer_rows(c: sqlite3.Connection, run_id: int, attempt: int, steps: list[int] | None, kind: str | None,
                include_verdicts: bool) -> list[dict[str, Any]]:
    sql = ("SELECT g.step, g.group_index, g.seq, g.uid, p.question, g.ground_truth, g.status, a.id, a.kind, a.idx,"
           " a.pool_position, a.text, a.raw_text, a.truncated, a.reward, a.judge_score, a.correct, p.prompt_json,"
           " a.checker, a.clipped"
           " FROM groups g JOIN answers a ON a.group_id = g.seq JOIN prompts p ON p.hash = g.prompt_hash"
           " WHERE g.run_id=? AND g.attempt=?")
    params: list[Any] = [run_id, attempt]
    if steps is not None:
        steps = [int(s) for s in steps]
        if not steps:
            return []
        sql += f" AND g.step IN ({_marks(len(steps))})"
        params += steps
    if kind is not None:
        sql += " AND a.kind=?"
        params.append(kind)
    rows = c.execute(sql + " ORDER BY g.step, g.group_index, a.id", params).fetchall()
    out = [{"step": r[0], "group_index": r[1], "group_id": r[2], "uid": r[3], "question": r[4],
            "ground_truth": r[5], "group_status": r[6], "answer_id": r[7], "kind": r[8], "index": r[9],
            "pool_position": r[10], "text": r[11], "raw_text": r[12], "truncated": bool(r[13]), "reward": r[14],
            "judge_score": r[15], "correct": None if r[16] is None else bool(r[16]), "checker": r[18],
            "prompt": _loads(r[17]), "clipped": None if r[19] is None else bool(r[19])}
           for r in rows]
    if include_verdicts and out:
        gids = sorted({a["group_id"] for a in out})
        crit_order: dict[int, list[int]] = {}
        vmap: dict[tuple[int, int], bool] = {}
        for start in range(0, len(gids), 500):
            chunk = gids[start:start + 500]
            for gid, cid in c.execute(f"SELECT group_id, id FROM criteria WHERE group_id IN ({_marks(len(chunk))})"
                                      f" ORDER BY group_id, position", chunk):
                crit_order.setdefault(gid, []).append(cid)
            for aid, cid, passed in c.execute(f"SELECT answer_id, criterion_id, passed FROM verdicts"
                                              f" WHERE group_id IN ({_marks(len(chunk))})", chunk):
                vmap[(aid, cid)] = bool(passed)
        for a in out:
            cids = crit_order.get(a["group_id"], [])
            row = [vmap.get((a["answer_id"], cid)) for cid in cids]
            a["verdicts"] = row if any(v is not None for v in row) else None
    return out


def verdict_rows(c: sqlite3.Connection, run_id: int, attempt: int, step: int) -> list[dict[str, Any]]:
    rows = c.execute(
        "SELECT g.step, g.group_index, a.id, a.kind, a.idx, a.pool_position, cr.position, cr.text, cr.points,"
        " cr.category, v.passed FROM groups g JOIN verdicts v ON v.group_id = g.seq"
        " JOIN answers a ON a.id = v.answer_id JOIN criteria cr ON cr.id = v.criterion_id"
        " WHERE g.run_id=? AND g.attempt=? AND g.step=? ORDER BY g.group_index, a.id, cr.position",
        (run_id, attempt, step)).fetchall()
    return [{"step": r[0], "group_index": r[1], "answer_id": r[2], "kind": r[3], "index": r[4],
             "pool_position": r[5], "criterion_position": r[6], "criterion": r[7], "points": r[8],
             "category": r[9], "passed": bool(r[10])} for r in rows]


def judge_usage(c: sqlite3.Connection, run_id: int, attempt: int) -> list[dict[str, Any]]:
    """Token usage of the attempt's judge calls per step, role and model; the token sums leave out
    replay-cache hits (``cache_hits``: they were not sent)."""
    rows = c.execute(
        "SELECT g.step, jc.role, jc.model, count(*), coalesce(sum(jc.cached), 0),"
        " sum(CASE WHEN jc.cached = 0 THEN jc.prompt_tokens END), sum(CASE WHEN jc.cached = 0 THEN jc.cached_prompt_tokens END),"
        " sum(CASE WHEN jc.cached = 0 THEN jc.completion_tokens END), count(jc.prompt_tokens) + count(jc.completion_tokens)"
        " FROM judge_calls jc JOIN groups g ON jc.group_id = g.seq WHERE g.run_id=? AND g.attempt=?"
        " GROUP BY g.step, jc.role, jc.model ORDER BY g.step, jc.role, jc.model", (run_id, attempt)).fetchall()
    return [{"step": r[0], "role": r[1], "model": r[2], "calls": r[3], "cache_hits": r[4], "prompt_tokens": r[5],
             "cached_prompt_tokens": r[6], "completion_tokens": r[7], "reported_usage": bool(r[8])} for r in rows]
