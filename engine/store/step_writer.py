"""Writing one training step (metrics + scored groups) inside the caller's transaction."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from typing import Iterable, Mapping

from engine.judging.cost import PER_1K_ROLLOUTS_USD, STEP_USD, TOTAL_USD, Pricing
from engine.types import GroupResult, canonical_prompt, prompt_hash
from engine.store import criterion_rollups
from engine.store.scrub import scrub_text

# Metrics derived from the groups of a step; a key the caller passes itself wins.
DERIVED_KEYS = (
    "score/student_reward_mean",
    "score/teacher_reward_mean",
    "score/student_accuracy",
    "score/groups",
    "score/group_failure_rate",
    "score/criterion_pass_rate_student",  # mean over the step's criteria of the students' pass rate
    "score/criterion_pass_rate_teacher",
)


def _json(obj) -> str | None:
    if obj is None:
        return None
    return json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _pass_rates(votes: list, k: int) -> list[float | None]:
    """Per criterion position < k: the mean of ``float(v[pos])`` over the answers' verdict lists ``votes``
    that reach that position (None when none does); as ``_mean`` per position, one pass over the lists."""
    n = len(votes)
    if n and all(len(v) == k for v in votes):
        return [sum(map(float, col)) / n for col in zip(*votes)] if k else []
    return [_mean(float(v[pos]) for v in votes if pos < len(v)) for pos in range(k)]


# An answer's verdicts in one row: the criteria of a group have consecutive ids (taken in order above), so
# verdict i is (group, answer, first criterion id + i, i-th character of the bits == '1'), for i below both
# the number of verdicts and of criteria (as zip(criterion ids, verdicts) pairs them). Binding one row per
# answer instead of per verdict halves the cost of a step's biggest insert (51,200 verdicts at 256 groups x
# 20 answers x 10 criteria); the rows stored are the same, in the same order.
_VERDICTS_SQL = ("INSERT INTO verdicts(group_id, answer_id, criterion_id, passed) SELECT ?1, ?2, ?3 + i,"
                 " substr(?4, i + 1, 1) = '1' FROM temp.verdict_pos WHERE i < min(length(?4), ?5) ORDER BY i")
_BITS = bytes.maketrans(bytes(range(256)), b"0" + b"1" * 255)


def _bits(verdicts) -> str:
    """'1' / '0' per verdict, as ``int(bool(v))`` would store it."""
    try:
        return bytes(verdicts).translate(_BITS).decode("ascii")  # bools and small ints, in C
    except (TypeError, ValueError):
        return "".join("1" if v else "0" for v in verdicts)


def _num(value) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def write_metric_rows(c: sqlite3.Connection, run_id: int, attempt: int, step: int,
                      metrics: Mapping[str, float], wall_time: float) -> None:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        v = _num(value)
        if v is None and value is not None:
            continue  # non-numeric values (strings, lists) are not metrics
        rows.append((run_id, attempt, step, str(key), v, wall_time))
    if not rows:
        return
    c.executemany(
        "INSERT INTO metrics(run_id, attempt, step, key, value, wall_time) VALUES (?,?,?,?,?,?) "
        "ON CONFLICT(run_id, attempt, key, step) DO UPDATE SET value=excluded.value, wall_time=excluded.wall_time",
        rows,
    )
    c.executemany(
        "INSERT INTO latest_metrics(run_id, key, step, value, wall_time) VALUES (?,?,?,?,?) "
        "ON CONFLICT(run_id, key) DO UPDATE SET step=excluded.step, value=excluded.value, wall_time=excluded.wall_time "
        "WHERE excluded.step >= latest_metrics.step",
        [(r[0], r[3], r[2], r[4], r[5]) for r in rows],
    )


def delete_group_rows(c: sqlite3.Connection, where: str, params: tuple) -> None:
    """Delete groups matching ``where`` (on table groups) with everything hanging off them."""
    ids = [r[0] for r in c.execute(f"SELECT seq FROM groups WHERE {where}", params).fetchall()]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        criterion_rollups.subtract(c, chunk)
        for table, col in (("verdicts", "group_id"), ("answers", "group_id"), ("criteria", "group_id"),
                           ("rubrics", "group_id"), ("judge_calls", "group_id")):
            c.execute(f"DELETE FROM {table} WHERE {col} IN ({marks})", chunk)
        c.execute(f"DELETE FROM groups WHERE seq IN ({marks})", chunk)


class _IdAllocator:
    """Row ids for AUTOINCREMENT tables, reserved inside the write transaction (which holds the
    database's write lock, so nobody else can take them): lets a step be inserted with executemany."""

    def __init__(self, c: sqlite3.Connection):
        self.c = c
        self.next: dict[str, int] = {}

    def take(self, table: str, col: str) -> int:
        if table not in self.next:
            row = self.c.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (table,)).fetchone()
            top = self.c.execute(f"SELECT max({col}) FROM {table}").fetchone()[0]
            self.next[table] = max(row[0] if row else 0, top or 0) + 1
        value = self.next[table]
        self.next[table] = value + 1
        return value


def _insert_groups(c: sqlite3.Connection, run_id: int, attempt: int, step: int, groups: list[GroupResult],
                   now: float) -> None:
    ids = _IdAllocator(c)
    rollup = criterion_rollups.CriterionRollup(run_id, attempt, step)
    prompts, group_rows, rubric_rows, crit_rows, answer_rows, verdict_rows, call_rows, tmpl = [], [], [], [], [], [], [], {}
    for g in groups:
        phash = prompt_hash(g.prompt)
        prompts.append((phash, g.question or "", canonical_prompt(g.prompt)))
        students = [a for a in g.answers if a.kind == "student"]
        teachers = [a for a in g.answers if a.kind == "teacher"]
        ok = g.status != "failed"
        gid = ids.take("groups", "seq")
        group_rows.append((
            gid, run_id, attempt, step, g.group_index, g.uid, phash, g.ground_truth, g.status, g.failure_stage,
            scrub_text(g.failure_cause) if g.failure_cause else None, g.judge_kind, g.reward_mode, _num(g.wall_s),
            len(students) or len(g.rollouts_raw), len(teachers),
            _mean(a.reward for a in students) if ok else None, _mean(a.reward for a in teachers) if ok else None,
            _mean(float(a.correct) for a in students if a.correct is not None),
            _json(g.template_versions or {}), _json(g.meta) if g.meta else None))
        rubricator_sha = (g.template_versions or {}).get("rubricator")
        crit_ids: list[int] = []
        if g.rubric is not None:
            crits = g.rubric.criteria
            rubric_rows.append((gid, g.rubric.schema_version, g.rubric.maximum_score, g.rubric.total_points,
                                len(crits), rubricator_sha))
            s_rates = _pass_rates([a.verdicts for a in students if a.verdicts], len(crits))
            t_rates = _pass_rates([a.verdicts for a in teachers if a.verdicts], len(crits))
            for pos, cr in enumerate(crits):
                cid = ids.take("criteria", "id")
                crit_ids.append(cid)
                s_pass, t_pass = s_rates[pos], t_rates[pos]
                crit_rows.append((cid, gid, pos, cr.id, cr.text, int(cr.points), cr.category, rubricator_sha,
                                  s_pass, t_pass))
                rollup.criterion(cid, g.group_index, pos, cr.category, s_pass, t_pass)
        for a in g.answers:
            raw = None
            if a.kind == "student" and 0 <= a.index < len(g.rollouts_raw) and g.rollouts_raw[a.index] != a.text:
                raw = g.rollouts_raw[a.index]
            aid = ids.take("answers", "id")
            answer_rows.append((aid, gid, a.kind, a.index, a.pool_position, a.text or "", raw, int(bool(a.truncated)),
                                _num(a.reward), _num(a.judge_score),
                                None if a.correct is None else int(bool(a.correct)), a.checker,
                                None if a.clipped is None else int(bool(a.clipped))))
            if a.verdicts and crit_ids:  # one row per answer: its verdicts as a '0'/'1' string (see _VERDICTS_SQL)
                verdict_rows.append((gid, aid, crit_ids[0], _bits(a.verdicts), len(crit_ids)))
        if not g.answers and g.rollouts_raw:  # failed before any answer was judged: keep the rollouts
            for i, text in enumerate(g.rollouts_raw):
                answer_rows.append((ids.take("answers", "id"), gid, "student", i, None, text, None, 0, None, None, None,
                                    None, None))
        call_rows.extend(_call_row(k, run_id, gid, None, now) for k in g.calls)
        for role, sha in (g.template_versions or {}).items():
            if sha:
                tmpl[sha] = role
    c.executemany("INSERT OR IGNORE INTO prompts(hash, question, prompt_json) VALUES (?,?,?)", prompts)
    c.executemany(
        "INSERT INTO groups(seq, run_id, attempt, step, group_index, uid, prompt_hash, ground_truth, status,"
        " failure_stage, failure_cause, judge_kind, reward_mode, wall_s, n_students, n_teachers, student_reward_mean,"
        " teacher_reward_mean, student_accuracy, template_versions_json, meta_json)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", group_rows)
    c.executemany("INSERT INTO rubrics(group_id, schema_version, maximum_score, total_points, n_criteria, template_sha)"
                  " VALUES (?,?,?,?,?,?)", rubric_rows)
    c.executemany("INSERT INTO criteria(id, group_id, position, crit_key, text, points, category, template_sha,"
                  " student_pass_rate, teacher_pass_rate) VALUES (?,?,?,?,?,?,?,?,?,?)", crit_rows)
    rollup.write(c)
    c.executemany("INSERT INTO answers(id, group_id, kind, idx, pool_position, text, raw_text, truncated, reward,"
                  " judge_score, correct, checker, clipped) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", answer_rows)
    if verdict_rows:
        c.execute("CREATE TEMP TABLE IF NOT EXISTS verdict_pos(i INTEGER PRIMARY KEY)")
        c.executemany("INSERT OR IGNORE INTO temp.verdict_pos(i) VALUES (?)",
                      [(i,) for i in range(max(r[4] for r in verdict_rows))])
        c.executemany(_VERDICTS_SQL, verdict_rows)
    if call_rows:
        c.executemany(_CALL_SQL, call_rows)
    for sha, role in tmpl.items():
        c.execute("INSERT OR IGNORE INTO template_versions(sha, role, text, source, first_seen, first_run_id)"
                  " VALUES (?,?,NULL,NULL,?,?)", (sha, role, now, run_id))
        # A version recorded at start-up (no step yet) gets its first step from the first step that used it.
        c.execute("INSERT INTO run_templates(run_id, sha, role, first_step, first_seen) VALUES (?,?,?,?,?)"
                  " ON CONFLICT(run_id, sha) DO UPDATE SET first_step=excluded.first_step"
                  " WHERE run_templates.first_step IS NULL", (run_id, sha, role, step, now))


_CALL_SQL = (
    "INSERT INTO judge_calls(run_id, group_id, replay_id, role, model, endpoint, status, latency_s, attempts,"
    " prompt_tokens, completion_tokens, error_class, error, raw_reply, template_sha, request_sha, cached, created_at,"
    " finish_reason, response_format, cached_prompt_tokens)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")


def _call_row(k, run_id, group_id, replay_id, now) -> tuple:
    return (run_id, group_id, replay_id, k.role, k.model, scrub_text(k.endpoint) if k.endpoint else None, k.status,
            _num(k.latency_s), k.attempts, k.prompt_tokens, k.completion_tokens, k.error_class,
            scrub_text(k.error) if k.error else None, k.raw_reply, k.template_sha, k.request_sha, int(bool(k.cached)),
            now, getattr(k, "finish_reason", None), getattr(k, "response_format", None),
            getattr(k, "cached_prompt_tokens", None))


def insert_calls(c: sqlite3.Connection, calls, *, run_id: int | None = None, group_id: int | None = None,
                 replay_id: int | None = None, now: float | None = None) -> None:
    now = time.time() if now is None else now
    c.executemany(_CALL_SQL, [_call_row(k, run_id, group_id, replay_id, now) for k in calls])


def _derived_metrics(c: sqlite3.Connection, run_id: int, attempt: int, step: int) -> dict[str, float]:
    row = c.execute(
        "SELECT count(*), sum(status = 'failed') FROM groups WHERE run_id=? AND attempt=? AND step=?",
        (run_id, attempt, step)).fetchone()
    n, failed = row[0] or 0, row[1] or 0
    out: dict[str, float] = {"score/groups": float(n)}
    if n:
        out["score/group_failure_rate"] = failed / n
    for kind, key in (("student", "score/student_reward_mean"), ("teacher", "score/teacher_reward_mean")):
        v = c.execute(
            "SELECT avg(a.reward) FROM answers a JOIN groups g ON a.group_id = g.seq"
            " WHERE g.run_id=? AND g.attempt=? AND g.step=? AND g.status != 'failed' AND a.kind=?",
            (run_id, attempt, step, kind)).fetchone()[0]
        if v is not None:
            out[key] = v
    v = c.execute(
        "SELECT avg(a.correct) FROM answers a JOIN groups g ON a.group_id = g.seq"
        " WHERE g.run_id=? AND g.attempt=? AND g.step=? AND a.kind='student' AND a.correct IS NOT NULL",
        (run_id, attempt, step)).fetchone()[0]
    if v is not None:
        out["score/student_accuracy"] = v
    s_pass, t_pass = c.execute(
        "SELECT avg(cr.student_pass_rate), avg(cr.teacher_pass_rate) FROM criteria cr JOIN groups g"
        " ON cr.group_id = g.seq WHERE g.run_id=? AND g.attempt=? AND g.step=? AND g.status != 'failed'",
        (run_id, attempt, step)).fetchone()
    if s_pass is not None:
        out["score/criterion_pass_rate_student"] = s_pass
    if t_pass is not None:
        out["score/criterion_pass_rate_teacher"] = t_pass
    return out


def cost_metrics(c: sqlite3.Connection, run_id: int, attempt: int, step: int, pricing: Pricing) -> dict[str, float]:
    """The judge cost of a step's calls (all its groups, so a step scored in several batches adds up),
    the attempt's running total and the total per 1,000 student rollouts; {} when the step's calls
    reported no token usage (offline judge, a dead server)."""
    usage = c.execute(
        "SELECT jc.role, sum(jc.prompt_tokens), sum(jc.cached_prompt_tokens), sum(jc.completion_tokens),"
        " count(jc.prompt_tokens) + count(jc.completion_tokens) FROM judge_calls jc JOIN groups g ON jc.group_id = g.seq"
        " WHERE g.run_id=? AND g.attempt=? AND g.step=? AND jc.cached=0 GROUP BY jc.role",
        (run_id, attempt, step)).fetchall()
    if not any(r[4] for r in usage):
        return {}
    step_usd = pricing.usd((r[0], r[1], r[2], r[3]) for r in usage)
    before = c.execute("SELECT coalesce(sum(value), 0) FROM metrics WHERE run_id=? AND attempt=? AND key=? AND step<?",
                       (run_id, attempt, STEP_USD, step)).fetchone()[0]
    total = before + step_usd
    out = {STEP_USD: step_usd, TOTAL_USD: total}
    rollouts = c.execute("SELECT coalesce(sum(n_students), 0) FROM groups WHERE run_id=? AND attempt=? AND step<=?",
                         (run_id, attempt, step)).fetchone()[0]
    if rollouts:
        out[PER_1K_ROLLOUTS_USD] = total / rollouts * 1000.0
    return out


def write_step_rows(c: sqlite3.Connection, run_id: int, attempt: int, step: int, metrics: Mapping[str, float],
                    groups: list[GroupResult], wall_time: float, *, append: bool,
                    pricing: Pricing | None = None) -> dict[str, float]:
    """Insert a step's rows; returns the derived metrics that were written (``score/*``, and ``cost/*``
    when ``pricing`` has a price above 0)."""
    now = time.time()
    if groups and not append:
        delete_group_rows(c, "run_id=? AND attempt=? AND step=?", (run_id, attempt, step))
    if groups:
        _insert_groups(c, run_id, attempt, step, groups, now)
    derived: dict[str, float] = {}
    if groups:
        found = _derived_metrics(c, run_id, attempt, step)
        if pricing is not None and pricing.positive:
            found.update(cost_metrics(c, run_id, attempt, step, pricing))
        derived = {k: v for k, v in found.items() if k not in metrics}
    all_metrics = {**derived, **dict(metrics)}
    write_metric_rows(c, run_id, attempt, step, all_metrics, wall_time)
    n, failed = c.execute("SELECT count(*), coalesce(sum(status = 'failed'), 0) FROM groups"
                          " WHERE run_id=? AND attempt=? AND step=?", (run_id, attempt, step)).fetchone()
    # delete + insert (not upsert) so a rewritten step gets a new seq and incremental readers see it
    c.execute("DELETE FROM steps WHERE run_id=? AND attempt=? AND step=?", (run_id, attempt, step))
    c.execute("INSERT INTO steps(run_id, attempt, step, wall_time, n_groups, n_failed) VALUES (?,?,?,?,?,?)",
              (run_id, attempt, step, wall_time, n, failed))
    return derived
