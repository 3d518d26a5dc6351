"""Deterministic fixture run stores, written through the real ``RunStore.write_step`` path.

Used by the TUI tests, the TUI benchmark and anyone who needs a populated store::

    from fixtures_store import build_store
    ids = build_store(tmp_path / "ropd.db")          # a few small runs, one of each status
    store = RunStore(path); write_fixture_step(store, run_id, step=7)   # one more step

Everything (texts, verdicts, rewards, wall times) derives from a seed, so snapshots are stable.
Model output in the fixtures deliberately contains Rich/Textual markup (``[bold]``, ``[/]``,
``[link=...]``) to prove the UI shows it literally.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.store import RunStore  # noqa: E402
from engine.types import AnswerResult, Criterion, GroupResult, JudgeCall, Rubric  # noqa: E402

BASE_TIME = 1_700_000_000.0  # fixed wall clock for fixtures (2023-11-14)
STEP_SECONDS = 30.0
INJECTION = "[bold red]not bold[/] [/] [link=http://x]no link[/link] [@click=app.quit]q[/] $var ${x}"
CATEGORIES = ("task fulfilment", "observable response quality", "general reasoning quality")
CRITERIA_TEXTS = (
    "States the final answer {a} explicitly",
    "Shows the intermediate sum before multiplying",
    "Does not contradict itself between steps",
    "Uses the numbers given in the question, not rounded ones",
    "Explains why the operation order matters",
    "Keeps the answer under 120 words",
    "Checks the result with a second method",
    "Names the unit of the result",
    "Avoids hedging language in the conclusion",
    "Writes each step on its own line",
    "Identifies the trap in the wording",
    "Gives the answer as an integer",
)


@dataclass
class FixtureRun:
    name: str
    status: str
    steps: int
    backend: str = "embedded"
    cause: str | None = None
    exit_code: int | None = None
    stderr_tail: str | None = None
    resumed_at: int | None = None
    template_changed_at: int | None = None


DEFAULT_RUNS: tuple[FixtureRun, ...] = (
    FixtureRun("demo-baseline", "finished", 12, exit_code=0, resumed_at=6, template_changed_at=9),
    FixtureRun("demo-lr-high", "failed", 7, exit_code=1, cause="exit code 1: RuntimeError: CUDA error",
               stderr_tail="Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error [bold]x[/]"),
    FixtureRun("verl-k1", "running", 9, backend="verl"),
    FixtureRun("demo-stopped", "stopped", 4, cause="stopped by the user"),
)


def make_group(step: int, group_index: int, *, seed: int = 0, n_students: int = 4, n_teachers: int = 2,
               n_criteria: int | None = None, failed: bool = False, inject: bool = True,
               text_chars: int = 0, raw_replies: bool = False) -> GroupResult:
    """One judged group, deterministic in (seed, step, group_index). ``raw_replies``: the judge calls carry
    the JSON an LLM judge replies (the rubric; the verdicts of every answer), as a real run stores them."""
    rng = random.Random(f"{seed}:{step}:{group_index}")
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    truth = str(a * b)
    question = f"What is {a} * {b}? Show your work."
    if inject and group_index == 0:
        question += f" (markup test: {INJECTION})"
    k = n_criteria if n_criteria is not None else rng.randint(4, 8)
    k = max(1, min(k, len(CRITERIA_TEXTS)))
    picks = rng.sample(range(len(CRITERIA_TEXTS)), k)
    criteria = [Criterion(id=f"c{i + 1}", text=CRITERIA_TEXTS[p].format(a=truth), points=rng.randint(1, 5),
                          category=CATEGORIES[p % len(CATEGORIES)]) for i, p in enumerate(picks)]
    if inject and group_index == 0:
        criteria[-1].text += f" {INJECTION}"
    rubric = Rubric(criteria=criteria, maximum_score=sum(c.points for c in criteria))
    total = sum(c.points for c in criteria)
    skill = min(0.95, 0.35 + step * 0.02)  # students improve over steps
    answers: list[AnswerResult] = []
    rollouts: list[str] = []
    pool = list(range(1, n_students + n_teachers + 1))
    rng.shuffle(pool)
    for kind, count, p_pass in (("student", n_students, skill), ("teacher", n_teachers, 0.9)):
        for i in range(count):
            correct = rng.random() < p_pass
            verdicts = [rng.random() < (p_pass if j % 3 else (0.95 if correct else 0.05)) for j in range(k)]
            reward = sum(c.points for c, v in zip(criteria, verdicts) if v) / (total + 1e-6)
            text = (f"{'Teacher' if kind == 'teacher' else 'Student'} answer {i + 1}: {a} * {b} = "
                    f"{truth if correct else int(truth) + rng.randint(1, 9)}.")
            if inject and kind == "student" and i == 0:
                text += f" {INJECTION}"
            if text_chars > len(text):
                text += " " + ("lorem ipsum dolor sit amet " * (text_chars // 27 + 1))[: text_chars - len(text) - 1]
            if kind == "student":
                rollouts.append(text)
            answers.append(AnswerResult(kind=kind, index=i, text=text, truncated=(kind == "student" and i == 3),
                                        clipped=(i == 2) if kind == "student" else None,
                                        pool_position=pool[len(answers)], verdicts=verdicts,
                                        reward=round(reward, 4), correct=correct))
    calls = [JudgeCall(role="rubricator", model="offline", status="ok", latency_s=0.5 + 0.01 * group_index,
                       prompt_tokens=900, completion_tokens=300, endpoint="offline"),
             JudgeCall(role="verifier", model="offline", status="ok", latency_s=0.8, prompt_tokens=1500,
                       completion_tokens=200, endpoint="offline")]
    if raw_replies:
        calls[0].raw_reply = json.dumps({"schema_version": "ropd.rubric.v1", "maximum_score": total, "rubrics": [
            {"criterion": c.text, "points": c.points, "category": c.category} for c in criteria]})
        by_pool = sorted(answers, key=lambda x: x.pool_position or 0)
        calls[1].raw_reply = json.dumps({"schema_version": "ropd.batch_verifier.v2", "answers": [
            {"answer_index": i + 1, "judgement": x.verdicts,
             "final_score": sum(c.points for c, v in zip(criteria, x.verdicts) if v)} for i, x in enumerate(by_pool)]})
    g = GroupResult(group_index=group_index, prompt=question, question=question, rollouts_raw=rollouts,
                    status="ok", ground_truth=truth, uid=f"u{step}-{group_index}", rubric=rubric, answers=answers,
                    calls=calls, template_versions={"rubricator": "a" * 64, "verifier": "b" * 64},
                    wall_s=1.5)
    if failed:
        g.status = "failed"
        g.failure_stage = "verifier"
        g.failure_cause = "ReplyFormatError: answer 3 has 4 judgements, expected 5 [/]"
        for ans in g.answers:
            ans.verdicts = None
            ans.reward = None
    return g


def step_metrics(step: int, groups: Sequence[GroupResult], seed: int = 0) -> dict[str, float]:
    rng = random.Random(f"m:{seed}:{step}")
    rewards = [a.reward for g in groups for a in g.student_answers if a.reward is not None]
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    std = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5 if rewards else 0.0
    return {
        "reward/mean": mean,
        "reward/std": std,
        "judge/failure_rate": sum(g.status == "failed" for g in groups) / max(1, len(groups)),
        "judge/latency_s": 0.6 + rng.random() * 0.4,
        "judge/prompt_tokens": 2400.0 * len(groups),
        "judge/completion_tokens": 500.0 * len(groups),
        "response_length/mean": 80 + 20 * rng.random(),
        "loss": 1.0 / (step + 1),
    }


def write_fixture_step(store: RunStore, run_id: int, step: int, *, seed: int = 0, groups: int = 3,
                       n_students: int = 4, n_teachers: int = 2, n_criteria: int | None = None,
                       inject: bool = True, wall_time: float | None = None, text_chars: int = 0,
                       raw_replies: bool = False) -> None:
    gs = [make_group(step, gi, seed=seed, n_students=n_students, n_teachers=n_teachers, n_criteria=n_criteria,
                     failed=(gi == groups - 1 and step % 5 == 4), inject=inject, text_chars=text_chars,
                     raw_replies=raw_replies)
          for gi in range(groups)]
    store.write_step(run_id, step, step_metrics(step, gs, seed), gs,
                     wall_time=BASE_TIME + step * STEP_SECONDS if wall_time is None else wall_time)


def build_store(path: str | Path, runs: Sequence[FixtureRun] = DEFAULT_RUNS, *, groups: int = 3,
                seed: int = 0) -> dict[str, int]:
    """Create a store with ``runs``; returns {name: run_id}. Runs with a running status get this
    process's pid so nothing classifies them as dead during a short test."""
    import os

    store = RunStore(path)
    ids: dict[str, int] = {}
    try:
        for n, fr in enumerate(runs):
            cfg = {"run": {"name": fr.name, "backend": fr.backend},
                   "trainer": {"learning_rate": 1e-6 * (10 if "lr-high" in fr.name else 1), "rollouts": 4},
                   "scorer": {"k": 1 if "k1" in fr.name else 4}}
            rec = store.create_run(fr.name, fr.backend, cfg)
            ids[fr.name] = rec.id
            for step in range(fr.steps):
                write_fixture_step(store, rec.id, step, seed=seed + n, groups=groups)
                if fr.resumed_at == step:
                    _event(store, rec.id, "resumed", step, "resumed from checkpoint step 5")
                if fr.template_changed_at == step:
                    _event(store, rec.id, "template_changed", step, "verifier template changed to bbbbbbbb")
            fields = dict(status=fr.status, started_at=BASE_TIME - 5, cause=fr.cause, exit_code=fr.exit_code,
                          stderr_tail=fr.stderr_tail)
            if fr.status in ("running", "stalled", "starting"):
                fields["pid"] = os.getpid()
                _progress(store, rec.id, fr)
            else:
                fields["ended_at"] = BASE_TIME + fr.steps * STEP_SECONDS
            store.update_run(rec.id, **fields)
            rec = store.get_run(rec.id)
            rec.run_dir.mkdir(parents=True, exist_ok=True)
            with open(rec.log_path, "w", encoding="utf-8") as f:
                for step in range(fr.steps):
                    f.write(f"step {step} reward 0.{step:02d} [bold]markup stays literal[/] \x1b[31mred?\x1b[0m\n")
                if fr.status == "failed":
                    f.write("Traceback (most recent call last):\nRuntimeError: CUDA error\n")
    finally:
        store.close()
    return ids


def _progress(store: RunStore, run_id: int, fr: FixtureRun) -> None:
    """The trainer's heartbeat of a live fixture run (relative to the tests' frozen clock, 400 s after
    BASE_TIME): a running run is scoring its next step, 2 of 3 groups done 12 s ago; a stalled one
    has been updating with no progress for 10 minutes."""
    now = BASE_TIME + 400
    if fr.status == "stalled":
        store.write_progress(run_id, phase="update", step=fr.steps, phase_started=now - 600, progress_at=now - 600)
    else:
        store.write_progress(run_id, phase="score", step=fr.steps, done=2, total=3, unit="groups",
                             phase_started=now - 30, progress_at=now - 12)


def _event(store: RunStore, run_id: int, kind: str, step: int, message: str) -> None:
    """An event at the fixture's wall clock (so curve markers line up in wall-time mode)."""
    seq = store.add_event(run_id, kind, message, step=step)
    with store.write_transaction() as c:
        c.execute("UPDATE events SET ts=? WHERE seq=?", (BASE_TIME + step * STEP_SECONDS, seq))


def build_big_store(path: str | Path, *, steps: int = 500, groups: int = 16, n_students: int = 8,
                    n_teachers: int = 4, n_criteria: int = 11, text_chars: int = 400, progress=None,
                    raw_replies: bool = False) -> int:
    """A single-run store for the benchmark: steps x groups x (students + teachers) x criteria verdicts
    (defaults: 500 x 16 x 12 x 11 = 1,056,000). ``progress(step)`` after each step may return True to
    stop early. Returns the run id."""
    store = RunStore(path)
    try:
        rec = store.create_run("bench", "embedded", {"run": {"name": "bench"}})
        for step in range(steps):
            write_fixture_step(store, rec.id, step, groups=groups, n_students=n_students, n_teachers=n_teachers,
                               n_criteria=n_criteria, inject=(step % 50 == 0), text_chars=text_chars,
                               raw_replies=raw_replies)
            if progress and progress(step):
                break
        store.update_run(rec.id, status="finished", started_at=BASE_TIME, ended_at=BASE_TIME + steps * STEP_SECONDS,
                         exit_code=0)
        return rec.id
    finally:
        store.close()


if __name__ == "__main__":  # python tests/fixtures_store.py PATH  -> a store to look at in the UI
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fixture.db")
    target.parent.mkdir(parents=True, exist_ok=True)
    print(build_store(target))


LOREM = ("lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
         "et dolore magna aliqua. ") * 40


def build_bulk_store(path: str | Path, *, steps: int, groups: int, n_students: int, n_teachers: int,
                     n_criteria: int, text_chars: int = 400, chunk_steps: int = 20, progress=None,
                     name: str = "bench") -> int:
    """A single-run store of steps x groups x (students + teachers) x criteria verdicts written with bulk SQL
    (INSERT ... SELECT over the groups of a few steps at a time), not the step writer: fixture data for the
    40M-verdict benchmarks, built in minutes. Same tables and columns as ``write_step`` writes (groups, rubrics,
    criteria with pass rates that match the verdicts, answers, verdicts, judge calls, the run-wide criterion
    rollups, metrics, latest metrics, steps); values are deterministic functions of the row ids. The full-text
    index is left empty (``refresh_index`` would index the rows on the first search). Returns the run id."""
    import sqlite3

    from engine.store.queries import VERDICT_RANK_SQL, VERDICT_SQL

    store = RunStore(path)
    try:
        rec = store.create_run(name, "embedded", {"run": {"name": name}})
        run_id, attempt = rec.id, rec.attempt
    finally:
        store.close()
    n_answers = n_students + n_teachers
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-400000")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("CREATE TEMP TABLE nums(i INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO temp.nums(i) VALUES (?)", [(i,) for i in range(max(n_answers, n_criteria))])
        sha_r, sha_v = "a" * 64, "b" * 64
        conn.execute("BEGIN")
        for sha, role in ((sha_r, "rubricator"), (sha_v, "verifier")):
            conn.execute("INSERT OR IGNORE INTO template_versions(sha, role, text, source, first_seen, first_run_id)"
                         " VALUES (?,?,NULL,NULL,?,?)", (sha, role, BASE_TIME, run_id))
            conn.execute("INSERT OR IGNORE INTO run_templates(run_id, sha, role, first_step, first_seen)"
                         " VALUES (?,?,?,0,?)", (run_id, sha, role, BASE_TIME))
        conn.executemany("INSERT OR IGNORE INTO prompts(hash, question, prompt_json) VALUES (?,?,?)",
                         [(f"bulk{gi:05d}", f"What is {gi + 2} * {gi + 3}? Show your work.",
                           json.dumps(f"What is {gi + 2} * {gi + 3}? Show your work.")) for gi in range(groups)])
        conn.execute("COMMIT")
        tv = json.dumps({"rubricator": sha_r, "verifier": sha_v}, separators=(",", ":"))
        lorem = LOREM[: max(0, text_chars - 30)]
        # verdict of answer a on criterion c: a deterministic hash of the two ids; students pass more often
        # as the run goes on (like the write_step fixtures)
        passed = ("(((a.id * 2654435761 + cr.id * 40503) % 1000) < CASE WHEN a.kind = 'teacher' THEN 900"
                  " ELSE min(950, 350 + g.step * 600 / :steps) END)")
        for s0 in range(0, steps, chunk_steps):
            s1 = min(steps, s0 + chunk_steps)
            conn.execute("BEGIN")
            first = (conn.execute("SELECT coalesce(max(seq), 0) FROM groups").fetchone()[0]) + 1
            rows = []
            for step in range(s0, s1):
                for gi in range(groups):
                    rows.append((run_id, attempt, step, gi, f"u{step}-{gi}", f"bulk{gi:05d}", str((gi + 2) * (gi + 3)),
                                 "ok", "offline", "rubric", 1.5, n_students, n_teachers, tv))
            conn.executemany(
                "INSERT INTO groups(run_id, attempt, step, group_index, uid, prompt_hash, ground_truth, status,"
                " judge_kind, reward_mode, wall_s, n_students, n_teachers, template_versions_json)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            last = first + len(rows) - 1
            span = {"lo": first, "hi": last, "ns": n_students, "na": n_answers, "nc": n_criteria,
                    "steps": max(1, steps), "lorem": lorem, "sha": sha_r}
            conn.execute(
                "INSERT INTO rubrics(group_id, schema_version, maximum_score, total_points, n_criteria, template_sha)"
                " SELECT seq, 'ropd.rubric.v1', 3 * :nc, 3 * :nc, :nc, :sha FROM groups WHERE seq BETWEEN :lo AND :hi",
                span)
            conn.execute(
                "INSERT INTO criteria(group_id, position, crit_key, text, points, category, template_sha)"
                " SELECT g.seq, n.i, 'c' || (n.i + 1), 'Criterion ' || (n.i + 1) || ' of prompt ' || (g.group_index + 1)"
                " || ': states the answer ' || g.ground_truth || ' and shows each step', 1 + (g.seq + n.i) % 5,"
                " CASE n.i % 3 WHEN 0 THEN 'task fulfilment' WHEN 1 THEN 'observable response quality'"
                " ELSE 'general reasoning quality' END, :sha"
                " FROM groups g JOIN temp.nums n ON n.i < :nc WHERE g.seq BETWEEN :lo AND :hi ORDER BY g.seq, n.i", span)
            conn.execute(
                "INSERT INTO answers(group_id, kind, idx, pool_position, text, raw_text, truncated, reward,"
                " judge_score, correct, checker, clipped)"
                " SELECT g.seq, CASE WHEN n.i < :ns THEN 'student' ELSE 'teacher' END,"
                " CASE WHEN n.i < :ns THEN n.i ELSE n.i - :ns END, 1 + (n.i * 7 + g.seq) % :na,"
                " CASE WHEN n.i < :ns THEN 'Student' ELSE 'Teacher' END || ' answer ' || (n.i + 1) || ': '"
                " || g.ground_truth || '. ' || :lorem, NULL, (n.i = 3), NULL, NULL,"
                " ((g.seq * 31 + n.i * 17) % 10 < 6), 'math_verify', CASE WHEN n.i < :ns THEN (n.i = 2) END"
                " FROM groups g JOIN temp.nums n ON n.i < :na WHERE g.seq BETWEEN :lo AND :hi ORDER BY g.seq, n.i",
                span)
            conn.execute(
                "INSERT INTO verdicts(group_id, answer_id, criterion_id, passed)"
                f" SELECT g.seq, a.id, cr.id, {passed} FROM groups g JOIN answers a ON a.group_id = g.seq"
                " JOIN criteria cr ON cr.group_id = g.seq WHERE g.seq BETWEEN :lo AND :hi"
                " ORDER BY g.seq, a.id, cr.id", span)
            # pass rates and rewards from the verdicts, as the step writer derives them
            conn.execute(
                "UPDATE criteria SET student_pass_rate = r.s, teacher_pass_rate = r.t FROM (SELECT v.criterion_id AS id,"
                " avg(CASE WHEN a.kind = 'student' THEN v.passed END) AS s,"
                " avg(CASE WHEN a.kind = 'teacher' THEN v.passed END) AS t"
                " FROM verdicts v JOIN answers a ON a.id = v.answer_id WHERE v.group_id BETWEEN :lo AND :hi"
                " GROUP BY v.criterion_id) AS r WHERE criteria.id = r.id", span)
            conn.execute(
                "UPDATE answers SET reward = r.w, judge_score = r.p FROM (SELECT v.answer_id AS id,"
                " round(total(v.passed * cr.points) / (total(cr.points) + 1e-6), 4) AS w, total(v.passed * cr.points) AS p"
                " FROM verdicts v JOIN criteria cr ON cr.id = v.criterion_id WHERE v.group_id BETWEEN :lo AND :hi"
                " GROUP BY v.answer_id) AS r WHERE answers.id = r.id", span)
            conn.execute(
                "UPDATE groups SET student_reward_mean = r.s, teacher_reward_mean = r.t, student_accuracy = r.acc"
                " FROM (SELECT group_id AS id, avg(CASE WHEN kind = 'student' THEN reward END) AS s,"
                " avg(CASE WHEN kind = 'teacher' THEN reward END) AS t,"
                " avg(CASE WHEN kind = 'student' THEN correct END) AS acc FROM answers"
                " WHERE group_id BETWEEN :lo AND :hi GROUP BY group_id) AS r WHERE groups.seq = r.id", span)
            conn.execute(
                "INSERT INTO judge_calls(run_id, group_id, role, model, endpoint, status, latency_s, attempts,"
                " prompt_tokens, completion_tokens, template_sha, cached, created_at)"
                " SELECT g.run_id, g.seq, CASE n.i WHEN 0 THEN 'rubricator' ELSE 'verifier' END, 'offline', 'offline',"
                " 'ok', 0.5 + n.i * 0.3, 1, 900 + n.i * 600, 300 - n.i * 100, :sha, 0, :t"
                " FROM groups g JOIN temp.nums n ON n.i < 2 WHERE g.seq BETWEEN :lo AND :hi ORDER BY g.seq, n.i",
                {**span, "t": BASE_TIME})
            rated = ("SELECT cr.id AS id, g.run_id AS run_id, g.attempt AS attempt, g.step AS step, g.group_index AS gi,"
                     " cr.position AS pos, coalesce(cr.category, '') AS cat, cr.teacher_pass_rate AS t,"
                     " cr.student_pass_rate AS s FROM criteria cr JOIN groups g ON g.seq = cr.group_id"
                     " WHERE cr.group_id BETWEEN :lo AND :hi")
            ranked = f"SELECT *, ({VERDICT_RANK_SQL}) AS rank FROM (SELECT *, ({VERDICT_SQL}) AS v FROM ({rated}))"
            conn.execute("INSERT INTO criterion_order(criterion_id, run_id, attempt, step, group_index, position, rank,"
                         f" neg_gap) SELECT id, run_id, attempt, step, gi, pos, rank,"
                         f" -abs(coalesce(t, 0) - coalesce(s, 0)) FROM ({ranked})", span)
            # metrics: the step writer's derived score/* keys and the trainer's own
            per_step = conn.execute(
                "SELECT g.step, avg(g.student_reward_mean), avg(g.teacher_reward_mean), avg(g.student_accuracy),"
                " count(*) FROM groups g WHERE g.seq BETWEEN ? AND ? GROUP BY g.step", (first, last)).fetchall()
            crit = dict(conn.execute(
                "SELECT g.step, avg(cr.student_pass_rate) FROM criteria cr JOIN groups g ON g.seq = cr.group_id"
                " WHERE cr.group_id BETWEEN ? AND ? GROUP BY g.step", (first, last)).fetchall())
            metric_rows, step_rows = [], []
            for step, s_mean, t_mean, acc, n in per_step:
                rng = random.Random(f"bulk:{step}")
                wall = BASE_TIME + step * STEP_SECONDS
                values = {"reward/mean": s_mean, "reward/std": 0.1 + 0.05 * rng.random(),
                          "score/student_reward_mean": s_mean, "score/teacher_reward_mean": t_mean,
                          "score/student_accuracy": acc, "score/groups": float(n), "score/group_failure_rate": 0.0,
                          "score/criterion_pass_rate_student": crit.get(step),
                          "judge/failure_rate": 0.5 if step % 397 == 201 else 0.0,  # rare one-step spikes
                          "judge/latency_s": 0.6 + rng.random() * 0.4,
                          "judge/prompt_tokens": 2400.0 * n, "judge/completion_tokens": 500.0 * n,
                          "response_length/mean": 80 + 20 * rng.random(), "loss": 1.0 / (step + 1)}
                metric_rows += [(run_id, attempt, step, k, v, wall) for k, v in values.items()]
                step_rows.append((run_id, attempt, step, wall, n, 0))
            conn.executemany("INSERT INTO metrics(run_id, attempt, step, key, value, wall_time) VALUES (?,?,?,?,?,?)",
                             metric_rows)
            conn.executemany("INSERT INTO steps(run_id, attempt, step, wall_time, n_groups, n_failed)"
                             " VALUES (?,?,?,?,?,?)", step_rows)
            conn.execute("COMMIT")
            if progress:
                progress(s1)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO latest_metrics(run_id, key, step, value, wall_time) SELECT run_id, key, step, value,"
                     " wall_time FROM metrics m WHERE run_id = ? AND step = (SELECT max(step) FROM metrics"
                     " WHERE run_id = m.run_id AND attempt = m.attempt AND key = m.key)", (run_id,))
        conn.execute("INSERT INTO criterion_summary(run_id, attempt, category, rank, n, n_student, sum_student, n_teacher,"
                     " sum_teacher) SELECT o.run_id, o.attempt, coalesce(cr.category, ''), o.rank, count(*),"
                     " count(cr.student_pass_rate), total(cr.student_pass_rate), count(cr.teacher_pass_rate),"
                     " total(cr.teacher_pass_rate) FROM criterion_order o JOIN criteria cr ON cr.id = o.criterion_id"
                     " WHERE o.run_id = ? GROUP BY 1, 2, 3, 4", (run_id,))
        conn.execute("UPDATE runs SET status='finished', started_at=?, ended_at=?, exit_code=0, last_step=?,"
                     " last_step_at=? WHERE id=?", (BASE_TIME, BASE_TIME + steps * STEP_SECONDS, steps - 1,
                                                    BASE_TIME + steps * STEP_SECONDS, run_id))
        conn.execute("INSERT INTO events(run_id, ts, kind, step, message) VALUES (?,?,?,?,?)",
                     (run_id, BASE_TIME, "started", 0, "bulk fixture"))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return run_id
