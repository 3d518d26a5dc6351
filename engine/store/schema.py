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


def _v4_judge_call_finish_reason(conn: sqlite3.Connection) -> None:
    """Why each judge reply ended ("length": cut at max_tokens) and the output format it was asked in
    (json_schema | json_object | none, after any fallback); the judge cache keeps both for its replies."""
    for table in ("judge_calls", "judge_cache"):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN finish_reason TEXT")
        conn.execute(f"ALTER TABLE {table} ADD COLUMN response_format TEXT")


def _v5_full_text_search(conn: sqlite3.Connection) -> None:
    """Full-text search (FTS5) over criterion texts, answer texts (student and teacher) and raw judge
    replies, set up through sqlite-utils so its tools and Datasette recognise it: ``criteria_fts``,
    ``answers_fts`` and ``judge_calls_fts`` are external-content tables (the index only; the text stays
    in the base table), Porter-stemmed. The rows already in the store are indexed here, once.

    Rows written later are indexed on demand, not in the step's transaction (indexing there cost a full-size
    step write +61% in bulk, +308% with per-row triggers; bench/search.py): ``search_index_state`` says up to which id each table is indexed,
    ``engine.store.search.refresh_index`` indexes the rows above it in bulk before a search, and the
    ``<table>_ad`` / ``<table>_au`` triggers keep indexed rows right when they are deleted or edited.

    Needs sqlite-utils >= 4: older versions run scripts through ``executescript``, which COMMITs the
    migration transaction half-way."""
    import sqlite_utils

    if int(_dist_version("sqlite-utils").split(".")[0]) < 4:
        from engine.errors import StoreError

        raise StoreError("this run store needs sqlite-utils 4 or newer to add its search index",
                         hint="pip install -U 'sqlite-utils>=4'")
    db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
    conn.execute("CREATE TABLE search_index_state (source TEXT PRIMARY KEY, indexed_upto INTEGER NOT NULL)"
                 " WITHOUT ROWID")
    for table, column, key in (("criteria", "text", "id"), ("answers", "text", "id"),
                               ("judge_calls", "raw_reply", "seq")):
        db[table].enable_fts([column], tokenize="porter", create_triggers=False, replace=True)  # + existing rows
        conn.execute("INSERT INTO search_index_state(source, indexed_upto) VALUES (?, (SELECT coalesce(max(rowid), 0)"
                     f" FROM {table}))", (table,))
        indexed = f"old.{key} <= (SELECT indexed_upto FROM search_index_state WHERE source = '{table}')"
        conn.execute(f"""CREATE TRIGGER {table}_ad AFTER DELETE ON {table} WHEN {indexed} BEGIN
            INSERT INTO "{table}_fts" ("{table}_fts", rowid, "{column}") VALUES ('delete', old.{key}, old."{column}");
        END""")
        conn.execute(f"""CREATE TRIGGER {table}_au AFTER UPDATE OF "{column}" ON {table} WHEN {indexed} BEGIN
            INSERT INTO "{table}_fts" ("{table}_fts", rowid, "{column}") VALUES ('delete', old.{key}, old."{column}");
            INSERT INTO "{table}_fts" (rowid, "{column}") VALUES (new.{key}, new."{column}");
        END""")
    if not conn.in_transaction:  # pragma: no cover - guards the atomicity of the migration
        raise RuntimeError("sqlite-utils committed inside the schema migration")
    # A run's first and last groups in write order: where its rows start and end in each FTS table.
    conn.execute("CREATE INDEX idx_groups_run_seq ON groups(run_id, attempt, seq)")


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# what every SQL view starts with: its run, attempt and step, and the 1-based prompt number
_VIEW_FROM = "FROM groups g JOIN runs r ON r.id = g.run_id"
_VIEW_HEAD = ("r.name AS run, g.run_id AS run_id, g.attempt AS attempt, (g.attempt = r.attempt) AS current,"
              " g.step AS step, g.group_index + 1 AS prompt, g.group_index AS group_index")


def _v6_sql_views(conn: sqlite3.Connection) -> None:
    """Views for people who open the store with sqlite-utils, Datasette or the sqlite3 shell: one row per
    answer, per verdict and per criterion, each with the run's name, attempt (``current``: 1 for the run's
    current attempt), step and prompt (``prompt``: 1-based as the inspector shows it; ``group_index``: the
    0-based index the exports use)."""
    where, head = _VIEW_FROM, _VIEW_HEAD
    conn.execute(f"""CREATE VIEW v_answers AS SELECT {head},
        p.question AS question, g.ground_truth AS ground_truth, g.status AS group_status,
        a.id AS answer_id, a.kind AS kind, a.idx AS answer_index, a.pool_position AS pool_position,
        a.reward AS reward, a.correct AS correct, a.truncated AS truncated, a.judge_score AS judge_score,
        a.text AS text
        {where} JOIN answers a ON a.group_id = g.seq LEFT JOIN prompts p ON p.hash = g.prompt_hash""")
    conn.execute(f"""CREATE VIEW v_criteria AS SELECT {head},
        cr.id AS criterion_id, cr.position AS position, cr.crit_key AS criterion_key, cr.text AS criterion,
        cr.points AS points, cr.category AS category, cr.teacher_pass_rate AS teacher_pass_rate,
        cr.student_pass_rate AS student_pass_rate
        {where} JOIN criteria cr ON cr.group_id = g.seq""")
    conn.execute(f"""CREATE VIEW v_verdicts AS SELECT {head},
        a.id AS answer_id, a.kind AS kind, a.idx AS answer_index, a.reward AS reward,
        cr.id AS criterion_id, cr.position AS position, cr.crit_key AS criterion_key, cr.text AS criterion,
        cr.points AS points, cr.category AS category, v.passed AS passed
        {where} JOIN verdicts v ON v.group_id = g.seq JOIN answers a ON a.id = v.answer_id
        JOIN criteria cr ON cr.id = v.criterion_id""")



def _v7_answer_checker(conn: sqlite3.Connection) -> None:
    """Which checker decided each answer's correctness (math_verify, rule, exact, python:..., +:timeout)."""
    conn.execute("ALTER TABLE answers ADD COLUMN checker TEXT")


def _v8_cached_prompt_tokens(conn: sqlite3.Connection) -> None:
    """Prompt tokens the judge server served from its prompt cache (OpenAI's
    ``usage.prompt_tokens_details.cached_tokens``), billed at the cached-input price."""
    conn.execute("ALTER TABLE judge_calls ADD COLUMN cached_prompt_tokens INTEGER")


def _v9_tracker_state(conn: sqlite3.Connection) -> None:
    """Per run attempt and tracker backend (engine.tracking): the tracker's own run id and the metrics
    cursor (``metrics.seq``) mirrored so far."""
    conn.execute("""CREATE TABLE tracker_state (
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        backend TEXT NOT NULL,
        external_id TEXT,
        cursor INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (run_id, attempt, backend)
    ) WITHOUT ROWID""")


def _v10_criterion_rollups(conn: sqlite3.Connection) -> None:
    """What the inspector's run-wide criteria tab reads, kept at ingest in the step's transaction so its
    cost does not grow with the run (engine.store.criterion_rollups writes and reads them):

    - ``criterion_order``: one row per criterion (its id) with its run, attempt, step, prompt, position,
      verdict rank (index in ``VERDICT_ORDER``) and ``neg_gap`` (-|teacher - student|); its index is the
      order the tab pages in, so a page is an index range scan of LIMIT rows.
    - ``criterion_summary``: per (run, attempt, category, verdict rank) the number of criteria and the
      count and sum of their student and teacher pass rates (verdict counts and per-category averages).

    The rows already in the store are backfilled here, once."""
    from engine.store.queries import VERDICT_RANK_SQL, VERDICT_SQL

    conn.execute("""CREATE TABLE criterion_order (
        criterion_id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        step INTEGER NOT NULL,
        group_index INTEGER NOT NULL,
        position INTEGER NOT NULL,
        rank INTEGER NOT NULL,
        neg_gap REAL NOT NULL
    )""")
    conn.execute("CREATE INDEX idx_criterion_order ON criterion_order(run_id, attempt, rank, neg_gap, step,"
                 " group_index, position)")
    conn.execute("""CREATE TABLE criterion_summary (
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        category TEXT NOT NULL,
        rank INTEGER NOT NULL,
        n INTEGER NOT NULL,
        n_student INTEGER NOT NULL,
        sum_student REAL NOT NULL,
        n_teacher INTEGER NOT NULL,
        sum_teacher REAL NOT NULL,
        PRIMARY KEY (run_id, attempt, category, rank)
    ) WITHOUT ROWID""")
    rated = ("SELECT cr.id AS id, g.run_id AS run_id, g.attempt AS attempt, g.step AS step, g.group_index AS gi,"
             " cr.position AS pos, coalesce(cr.category, '') AS cat, cr.teacher_pass_rate AS t,"
             " cr.student_pass_rate AS s FROM criteria cr JOIN groups g ON g.seq = cr.group_id")
    ranked = f"SELECT *, ({VERDICT_RANK_SQL}) AS rank FROM (SELECT *, ({VERDICT_SQL}) AS v FROM ({rated}))"
    conn.execute("INSERT INTO criterion_order(criterion_id, run_id, attempt, step, group_index, position, rank, neg_gap)"
                 f" SELECT id, run_id, attempt, step, gi, pos, rank, -abs(coalesce(t, 0) - coalesce(s, 0)) FROM ({ranked})")
    conn.execute("INSERT INTO criterion_summary(run_id, attempt, category, rank, n, n_student, sum_student, n_teacher,"
                 " sum_teacher) SELECT o.run_id, o.attempt, coalesce(cr.category, ''), o.rank, count(*),"
                 " count(cr.student_pass_rate), total(cr.student_pass_rate), count(cr.teacher_pass_rate),"
                 " total(cr.teacher_pass_rate) FROM criterion_order o JOIN criteria cr ON cr.id = o.criterion_id"
                 " GROUP BY 1, 2, 3, 4")


def _v11_run_progress(conn: sqlite3.Connection) -> None:
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


def _v12_answer_clipped(conn: sqlite3.Connection) -> None:
    """``answers.clipped``: the rollout was cut at the token limit (max_new_tokens); NULL when unknown
    (teacher answers, scored groups without token counts). ``answers.truncated`` stays the judge's
    character budget (``scorer.answer_char_budget``)."""
    conn.execute("ALTER TABLE answers ADD COLUMN clipped INTEGER")


CURVE_LEVELS = 16  # metric_buckets levels 1..16: bucket width 2 .. 65,536 steps


def _curve_bucket_recompute(level: int, who: str) -> list[str]:
    """Trigger statements that rebuild the level-``level`` bucket holding ``{who}.step`` of ``{who}.key`` from its
    (at most two) children: raw metric rows for level 1, level - 1 buckets above. Run for levels 1, 2, ... in order."""
    k = f"{who}.run_id, {who}.attempt, {who}.key"
    where = f"run_id = {who}.run_id AND attempt = {who}.attempt AND key = {who}.key"
    b = f"({who}.step >> {level})"
    if level == 1:
        children = (f"SELECT 1 AS n, value AS total, step AS lo_step, value AS lo_value, step AS hi_step,"
                    f" value AS hi_value FROM metrics WHERE {where} AND step BETWEEN {b} * 2 AND {b} * 2 + 1"
                    " AND value IS NOT NULL")
    else:
        children = (f"SELECT n, total, lo_step, lo_value, hi_step, hi_value FROM metric_buckets WHERE {where}"
                    f" AND level = {level - 1} AND bucket BETWEEN {b} * 2 AND {b} * 2 + 1")
    return [
        f"DELETE FROM metric_buckets WHERE {where} AND level = {level} AND bucket = {b};",
        f"INSERT INTO metric_buckets(run_id, attempt, key, level, bucket, n, total, lo_step, lo_value, hi_step, hi_value)"
        f" SELECT {k}, {level}, {b}, sum(n), sum(total),"
        f" (SELECT lo_step FROM ({children}) ORDER BY lo_value, lo_step LIMIT 1), min(lo_value),"
        f" (SELECT hi_step FROM ({children}) ORDER BY hi_value DESC, hi_step LIMIT 1), max(hi_value)"
        f" FROM ({children}) HAVING count(*) > 0;",
    ]


def _v13_metric_buckets(conn: sqlite3.Connection) -> None:
    """Curves at screen resolution whatever the run's length (engine.store.queries.metric_curve): per metric
    key a pyramid of buckets, level l holding steps [b * 2^l, (b + 1) * 2^l) with their number of points, sum,
    and the step and value of their minimum and maximum (ties: the lowest step). A curve reads the level
    with at most a few hundred buckets: O(screen width) rows, and every spike is kept.

    Kept by triggers on ``metrics`` in the writer's own transaction: an insert adds the point to its 16
    buckets (one statement); an update or delete rebuilds the point's buckets from their children (2 rows per
    level). The existing rows are backfilled here, level by level."""
    conn.execute("""CREATE TABLE metric_buckets (
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        key TEXT NOT NULL,
        level INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        n INTEGER NOT NULL,
        total REAL NOT NULL,
        lo_step INTEGER NOT NULL,
        lo_value REAL NOT NULL,
        hi_step INTEGER NOT NULL,
        hi_value REAL NOT NULL,
        PRIMARY KEY (run_id, attempt, key, level, bucket)
    ) WITHOUT ROWID""")
    conn.execute("CREATE TABLE metric_levels (level INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO metric_levels(level) VALUES (?)", [(i,) for i in range(1, CURVE_LEVELS + 1)])
    conn.execute("""CREATE TRIGGER metrics_curve_ai AFTER INSERT ON metrics WHEN new.value IS NOT NULL BEGIN
        INSERT INTO metric_buckets(run_id, attempt, key, level, bucket, n, total, lo_step, lo_value, hi_step, hi_value)
        SELECT new.run_id, new.attempt, new.key, level, new.step >> level, 1, new.value, new.step, new.value,
               new.step, new.value FROM metric_levels WHERE true
        ON CONFLICT(run_id, attempt, key, level, bucket) DO UPDATE SET n = n + 1, total = total + excluded.total,
            lo_step = CASE WHEN excluded.lo_value < lo_value OR (excluded.lo_value = lo_value
                           AND excluded.lo_step < lo_step) THEN excluded.lo_step ELSE lo_step END,
            lo_value = min(lo_value, excluded.lo_value),
            hi_step = CASE WHEN excluded.hi_value > hi_value OR (excluded.hi_value = hi_value
                           AND excluded.hi_step < hi_step) THEN excluded.hi_step ELSE hi_step END,
            hi_value = max(hi_value, excluded.hi_value);
    END""")
    # A deleted run drops its buckets first (engine.store.runstore.delete_run): its rows' triggers do nothing then.
    live = ("EXISTS (SELECT 1 FROM metric_buckets WHERE run_id = {w}.run_id AND attempt = {w}.attempt"
            " AND key = {w}.key AND level = 1)")
    body = "\n".join(s for lv in range(1, CURVE_LEVELS + 1) for s in _curve_bucket_recompute(lv, "old"))
    conn.execute(f"CREATE TRIGGER metrics_curve_ad AFTER DELETE ON metrics WHEN old.value IS NOT NULL"
                 f" AND {live.format(w='old')} BEGIN\n{body}\nEND")
    new_body = "\n".join(s for lv in range(1, CURVE_LEVELS + 1) for s in _curve_bucket_recompute(lv, "new"))
    moved = " OR ".join(f"old.{col} IS NOT new.{col}" for col in ("run_id", "attempt", "key", "step", "value"))
    conn.execute(f"CREATE TRIGGER metrics_curve_au AFTER UPDATE OF run_id, attempt, key, step, value ON metrics"
                 f" WHEN {moved} BEGIN\n{body}\n{new_body}\nEND")  # (a step's metrics upserted unchanged: nothing)
    # backfill: level 1 from the raw rows, then each level from the one below
    for level in range(1, CURVE_LEVELS + 1):
        if level == 1:
            src = ("SELECT run_id, attempt, key, step AS b, 1 AS n, value AS total, step AS lo_step, value AS lo_value,"
                   " step AS hi_step, value AS hi_value FROM metrics WHERE value IS NOT NULL")
        else:
            src = ("SELECT run_id, attempt, key, bucket AS b, n, total, lo_step, lo_value, hi_step, hi_value"
                   f" FROM metric_buckets WHERE level = {level - 1}")
        ranked = (f"SELECT *, b >> 1 AS p, row_number() OVER (PARTITION BY run_id, attempt, key, b >> 1"
                  " ORDER BY lo_value, lo_step) AS lo_rank, row_number() OVER (PARTITION BY run_id, attempt, key, b >> 1"
                  f" ORDER BY hi_value DESC, hi_step) AS hi_rank FROM ({src})")
        conn.execute(
            "INSERT INTO metric_buckets(run_id, attempt, key, level, bucket, n, total, lo_step, lo_value, hi_step,"
            f" hi_value) SELECT run_id, attempt, key, {level}, p, sum(n), sum(total),"
            " max(CASE WHEN lo_rank = 1 THEN lo_step END), min(lo_value),"
            " max(CASE WHEN hi_rank = 1 THEN hi_step END), max(hi_value)"
            f" FROM ({ranked}) GROUP BY run_id, attempt, key, p")


def _v14_run_seq_indexes(conn: sqlite3.Connection) -> None:
    """Indexes for the Run screen's first read, so it costs the same at step 10 and at step 10,000:

    - ``idx_metrics_run_seq`` (metrics(run_id, seq)): ``RunStore.last_seq('metrics', run)`` (the screen's
      "did the curves move" check) was a scan of every metric row of the run (idx_metrics_series starts with
      attempt and key); now one index probe. ``rows_newer('metrics', run_id=...)`` reads it in order too.
    - ``idx_events_kind`` (events(run_id, kind, seq)): the curve markers (resumes, template changes), the
      judge named at start-up and the template rejections the screen reads by kind, newest first, with a
      LIMIT; idx_events_run would read every event of the run to find them."""
    conn.execute("CREATE INDEX idx_metrics_run_seq ON metrics(run_id, seq)")
    conn.execute("CREATE INDEX idx_events_kind ON events(run_id, kind, seq)")


def _v15_answers_view_checker_clipped(conn: sqlite3.Connection) -> None:
    """``v_answers`` gains the columns added after it: ``checker`` (v7: which checker decided ``correct``)
    and ``clipped`` (v12: the rollout hit max_new_tokens; ``truncated`` is the judge's character budget)."""
    where, head = _VIEW_FROM, _VIEW_HEAD
    conn.execute("DROP VIEW v_answers")
    conn.execute(f"""CREATE VIEW v_answers AS SELECT {head},
        p.question AS question, g.ground_truth AS ground_truth, g.status AS group_status,
        a.id AS answer_id, a.kind AS kind, a.idx AS answer_index, a.pool_position AS pool_position,
        a.reward AS reward, a.correct AS correct, a.checker AS checker, a.truncated AS truncated,
        a.clipped AS clipped, a.judge_score AS judge_score, a.text AS text
        {where} JOIN answers a ON a.group_id = g.seq LEFT JOIN prompts p ON p.hash = g.prompt_hash""")


MIGRATIONS: list[Migration] = [_v1_initial, _v2_judge_cache, _v3_criteria_rates_index, _v4_judge_call_finish_reason,
                               _v5_full_text_search, _v6_sql_views, _v7_answer_checker,
                               _v8_cached_prompt_tokens, _v9_tracker_state, _v10_criterion_rollups,
                               _v11_run_progress, _v12_answer_clipped, _v13_metric_buckets,
                               _v14_run_seq_indexes, _v15_answers_view_checker_clipped]


def schema_version() -> int:
    """The schema version this code writes (number of migrations)."""
    return len(MIGRATIONS)
