"""The run store's schema and its migrations.

The schema version lives in ``PRAGMA user_version``. :data:`MIGRATIONS` is an ordered list; entry i
brings the schema from version i to version i + 1. To change the schema, APPEND a function (never
edit a released one): it receives the open ``sqlite3.Connection`` inside the migration transaction
(``BEGIN IMMEDIATE``; do not commit), and may wrap it in ``sqlite_utils.Database(conn)`` for
introspection (``table_names()``, ``db[t].columns_dict``). Prefer ``conn.execute`` for DDL:
sqlite-utils helpers commit on their own. Example::

    def _v2_replay_notes(conn):
        conn.execute("ALTER TABLE replays ADD COLUMN notes TEXT")

    MIGRATIONS.append(_v2_replay_notes)

Conventions: append-only tables have ``seq INTEGER PRIMARY KEY AUTOINCREMENT`` so readers can ask for
"rows newer than a cursor"; every row that belongs to a training step carries ``(run_id, attempt, step)``;
long texts (prompts) are de-duplicated in their own table.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

Migration = Callable[[sqlite3.Connection], None]

_V1 = [
    # -- runs and their lifecycle -------------------------------------------------------------------
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        backend TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'created',
        cause TEXT,
        attempt INTEGER NOT NULL DEFAULT 1,
        config_json TEXT NOT NULL DEFAULT '{}',
        argv_json TEXT,
        env_json TEXT,
        cwd TEXT,
        host TEXT,
        pid INTEGER,
        proc_start INTEGER,
        monitor_pid INTEGER,
        monitor_start INTEGER,
        sid INTEGER,
        stop_requested INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        exit_signal INTEGER,
        stderr_tail TEXT,
        last_step INTEGER,
        last_step_at REAL,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        updated_at REAL
    )""",
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        step INTEGER,
        message TEXT NOT NULL DEFAULT '',
        data_json TEXT
    )""",
    "CREATE INDEX idx_events_run ON events(run_id, seq)",
    # -- per-step data ---------------------------------------------------------------------------------
    """CREATE TABLE steps (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        step INTEGER NOT NULL,
        wall_time REAL NOT NULL,
        n_groups INTEGER NOT NULL DEFAULT 0,
        n_failed INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE UNIQUE INDEX idx_steps_run ON steps(run_id, attempt, step)",
    """CREATE TABLE metrics (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        step INTEGER NOT NULL,
        key TEXT NOT NULL,
        value REAL,
        wall_time REAL NOT NULL
    )""",
    "CREATE UNIQUE INDEX idx_metrics_series ON metrics(run_id, attempt, key, step)",
    """CREATE TABLE latest_metrics (
        run_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        step INTEGER NOT NULL,
        value REAL,
        wall_time REAL NOT NULL,
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE prompts (
        hash TEXT PRIMARY KEY,
        question TEXT NOT NULL,
        prompt_json TEXT NOT NULL
    )""",
    """CREATE TABLE groups (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        step INTEGER NOT NULL,
        group_index INTEGER NOT NULL,
        uid TEXT,
        prompt_hash TEXT NOT NULL,
        ground_truth TEXT,
        status TEXT NOT NULL,
        failure_stage TEXT,
        failure_cause TEXT,
        judge_kind TEXT,
        reward_mode TEXT,
        wall_s REAL,
        n_students INTEGER NOT NULL DEFAULT 0,
        n_teachers INTEGER NOT NULL DEFAULT 0,
        student_reward_mean REAL,
        teacher_reward_mean REAL,
        student_accuracy REAL,
        template_versions_json TEXT,
        meta_json TEXT
    )""",
    "CREATE INDEX idx_groups_step ON groups(run_id, attempt, step, group_index)",
    """CREATE TABLE rubrics (
        group_id INTEGER PRIMARY KEY,
        schema_version TEXT,
        maximum_score INTEGER,
        total_points INTEGER NOT NULL,
        n_criteria INTEGER NOT NULL,
        template_sha TEXT
    )""",
    """CREATE TABLE criteria (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        group_id INTEGER NOT NULL,
        position INTEGER NOT NULL,
        crit_key TEXT,
        text TEXT NOT NULL,
        points INTEGER NOT NULL,
        category TEXT,
        template_sha TEXT,
        student_pass_rate REAL,
        teacher_pass_rate REAL
    )""",
    "CREATE INDEX idx_criteria_group ON criteria(group_id, position)",
    """CREATE TABLE answers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        group_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        idx INTEGER NOT NULL,
        pool_position INTEGER,
        text TEXT NOT NULL,
        raw_text TEXT,
        truncated INTEGER NOT NULL DEFAULT 0,
        reward REAL,
        judge_score REAL,
        correct INTEGER
    )""",
    "CREATE INDEX idx_answers_group ON answers(group_id)",
    """CREATE TABLE verdicts (
        group_id INTEGER NOT NULL,
        answer_id INTEGER NOT NULL,
        criterion_id INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        PRIMARY KEY (group_id, answer_id, criterion_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE judge_calls (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER,
        group_id INTEGER,
        replay_id INTEGER,
        role TEXT NOT NULL,
        model TEXT,
        endpoint TEXT,
        status TEXT NOT NULL,
        latency_s REAL,
        attempts INTEGER,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        error_class TEXT,
        error TEXT,
        raw_reply TEXT,
        template_sha TEXT,
        request_sha TEXT,
        cached INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX idx_calls_group ON judge_calls(group_id)",
    "CREATE INDEX idx_calls_run ON judge_calls(run_id, seq)",
    "CREATE INDEX idx_calls_replay ON judge_calls(replay_id)",
    "CREATE INDEX idx_calls_request ON judge_calls(request_sha)",
    # -- templates ---------------------------------------------------------------------------------------
    """CREATE TABLE template_versions (
        sha TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        text TEXT,
        source TEXT,
        first_seen REAL NOT NULL,
        first_run_id INTEGER
    )""",
    """CREATE TABLE run_templates (
        run_id INTEGER NOT NULL,
        sha TEXT NOT NULL,
        role TEXT NOT NULL,
        first_step INTEGER,
        first_seen REAL NOT NULL,
        PRIMARY KEY (run_id, sha)
    ) WITHOUT ROWID""",
    # -- replays (filled by engine.replay.runner) ---------------------------------------------------------------
    """CREATE TABLE replays (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL,
        name TEXT,
        status TEXT NOT NULL DEFAULT 'created',
        cause TEXT,
        settings_json TEXT NOT NULL DEFAULT '{}',
        summary_json TEXT,
        n_total INTEGER,
        n_done INTEGER NOT NULL DEFAULT 0,
        pid INTEGER,
        proc_start INTEGER,
        host TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL
    )""",
    "CREATE INDEX idx_replays_run ON replays(run_id)",
    """CREATE TABLE replay_groups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        replay_id INTEGER NOT NULL,
        group_id INTEGER NOT NULL,
        status TEXT NOT NULL,
        failure_stage TEXT,
        failure_cause TEXT,
        rubric_json TEXT,
        template_versions_json TEXT,
        wall_s REAL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX idx_replay_groups ON replay_groups(replay_id, group_id)",
    """CREATE TABLE replay_answers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        replay_id INTEGER NOT NULL,
        replay_group_id INTEGER NOT NULL,
        answer_id INTEGER NOT NULL,
        reward REAL,
        judge_score REAL,
        correct INTEGER
    )""",
    "CREATE INDEX idx_replay_answers_group ON replay_answers(replay_group_id)",
    "CREATE INDEX idx_replay_answers_answer ON replay_answers(answer_id)",
    """CREATE TABLE replay_verdicts (
        replay_answer_id INTEGER NOT NULL,
        criterion_pos INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        PRIMARY KEY (replay_answer_id, criterion_pos)
    ) WITHOUT ROWID""",
]


def _v1_initial(conn: sqlite3.Connection) -> None:
    for statement in _V1:
        conn.execute(statement)


def _v2_judge_cache(conn: sqlite3.Connection) -> None:
    """Judge replies keyed by the sha256 of the request (engine.judging.cache; added by the replay work)."""
    conn.execute("""CREATE TABLE judge_cache (
        request_sha TEXT PRIMARY KEY,
        model TEXT,
        role TEXT,
        reply TEXT NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_s REAL,
        created_at REAL NOT NULL
    )""")


def _v3_criteria_rates_index(conn: sqlite3.Connection) -> None:
    """Pass-rate aggregates over a whole run (by step/category) read only this covering index."""
    conn.execute("CREATE INDEX idx_criteria_rates ON criteria(group_id, category, points, student_pass_rate,"
                 " teacher_pass_rate)")


def _v4_run_progress(conn: sqlite3.Connection) -> None:
    """What a run's trainer is doing right now (engine.runs.heartbeat): one row per run, overwritten in
    its own short transaction a few times a second at most; seconds per phase so far in ``totals_json``."""
    conn.execute("""CREATE TABLE run_progress (
        run_id INTEGER PRIMARY KEY,
        attempt INTEGER NOT NULL,
        step INTEGER,
        total_steps INTEGER,
        phase TEXT NOT NULL,
        done INTEGER,
        total INTEGER,
        unit TEXT,
        detail TEXT,
        phase_started REAL NOT NULL,
        progress_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        no_progress_after_s REAL,
        totals_json TEXT
    )""")


def _v5_answer_clipped(conn: sqlite3.Connection) -> None:
    """``answers.clipped``: the rollout was cut at the token limit (max_new_tokens); NULL when unknown
    (teacher answers, scored groups without token counts). ``answers.truncated`` stays the judge's
    character budget (``scorer.answer_char_budget``)."""
    conn.execute("ALTER TABLE answers ADD COLUMN clipped INTEGER")


MIGRATIONS: list[Migration] = [_v1_initial, _v2_judge_cache, _v3_criteria_rates_index, _v4_run_progress,
                               _v5_answer_clipped]


def schema_version() -> int:
    """The schema version this code writes (number of migrations)."""
    return len(MIGRATIONS)
