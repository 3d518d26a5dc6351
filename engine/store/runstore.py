"""RunStore: the one SQLite store every front end and trainer reads and writes.

Layout: ``<dir>/ropd.db`` plus one folder per run, ``<dir>/<run name>/`` holding ``run.log``,
``config.yaml`` (the scrubbed config snapshot) and ``checkpoints/``.

Concurrency: any number of processes may open the same store. Each :class:`RunStore` holds one
connection (thread-safe). Writes are short IMMEDIATE transactions retried while another process
holds the lock; reads never block the writer (WAL). Poll :meth:`RunStore.data_version` (cheap) and
re-query only when it changes.

Attempts: a restart from scratch starts a new *attempt* of the same run. Step data (metrics, groups,
...) carries the attempt; readers default to the run's current attempt, older attempts stay queryable
(``attempt=``). Writing a step that already exists in the current attempt (after a resume from an
older checkpoint) replaces that step's groups and overwrites its metrics key by key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from engine.judging.cost import cost_summary, pricing_from_config
from engine.scoring.criterion_stats import VERDICT_ORDER, RunWide
from engine.errors import StoreError
from engine.types import GroupResult, to_jsonable
from engine.store import criterion_rollups
from engine.store import queries as q
from engine.store import search as search_q
from engine.store.search import SearchPage
from engine.store.db import Connection
from engine.store.scrub import scrub, scrub_env, scrub_text
from engine.store.step_writer import delete_group_rows, insert_calls, write_metric_rows, write_step_rows

# Run lifecycle. "stalled" is still alive (the supervisor flags it; a new step clears it).
ACTIVE_STATUSES = ("starting", "running", "stalled")
TERMINAL_STATUSES = ("finished", "failed", "killed", "oom", "stopped")
STATUSES = ("created",) + ACTIVE_STATUSES + TERMINAL_STATUSES

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")

_RUN_FIELDS = {
    "backend", "status", "cause", "attempt", "config", "argv", "env", "cwd", "host", "pid", "proc_start",
    "monitor_pid", "monitor_start", "sid", "stop_requested", "exit_code", "exit_signal", "stderr_tail",
    "last_step", "last_step_at", "started_at", "ended_at",
}
_REPLAY_FIELDS = {"name", "status", "cause", "settings", "summary", "n_total", "n_done", "pid", "proc_start", "host",
                  "started_at", "ended_at"}


@dataclass
class RunRecord:
    id: int
    name: str
    backend: str
    status: str
    run_dir: Path
    attempt: int = 1
    cause: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    argv: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    host: str | None = None
    pid: int | None = None
    proc_start: int | None = None
    monitor_pid: int | None = None
    monitor_start: int | None = None
    sid: int | None = None
    stop_requested: bool = False
    exit_code: int | None = None
    exit_signal: int | None = None
    stderr_tail: str | None = None
    last_step: int | None = None
    last_step_at: float | None = None
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    updated_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def log_path(self) -> Path:
        return self.run_dir / "run.log"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def check_run_name(name: str, what: str = "run name") -> str:
    """``name`` when it can name a run (its folder, its CLI argument); StoreError saying what is allowed."""
    if not _NAME_RE.match(name or ""):
        raise StoreError(f"invalid {what} {name!r}",
                         hint="use letters, digits, '.', '_' or '-' (at most 100 characters), starting with a letter or digit")
    return name


class RunStore:
    """Open (creating and migrating if needed) the store at ``path``.

    ``create=False`` raises :class:`StoreError` when the file does not exist (read-only front ends).
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path).expanduser().absolute()
        self.root = self.path.parent
        self._db = Connection(self.path, create=create)

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def connection(self):
        """The underlying sqlite3 connection (for ad-hoc reads; hold ``lock`` while using it)."""
        return self._db.conn

    @property
    def db(self):
        """A ``sqlite_utils.Database`` on the same connection, for introspection and ad-hoc reads
        (``store.db["runs"].rows_where(...)``, ``store.db.table_names()``). Do not write through it:
        sqlite-utils commits on its own, outside the store's transactions. Hold ``store.lock`` when
        other threads share this store."""
        import sqlite_utils  # imported lazily: it pulls in click, not needed on the hot paths

        return sqlite_utils.Database(self._db.conn)

    @property
    def lock(self):
        return self._db.lock

    def write_transaction(self):
        """Context manager: an IMMEDIATE transaction on the store (for extensions such as replay)."""
        return self._db.write()

    def read_snapshot(self):
        """Context manager: a consistent read snapshot, ended on exit."""
        return self._db.read()

    def data_version(self) -> int:
        """Changes whenever anything (this or another process) committed; cheap to poll."""
        return self._db.data_version()

    # -- runs -------------------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        return self.root / name

    def _record(self, row) -> RunRecord:
        return RunRecord(
            id=row["id"], name=row["name"], backend=row["backend"], status=row["status"], cause=row["cause"],
            attempt=row["attempt"], run_dir=self.run_dir(row["name"]),
            config=q._loads(row["config_json"], {}), argv=q._loads(row["argv_json"]),
            env=q._loads(row["env_json"], {}) or {}, cwd=row["cwd"], host=row["host"], pid=row["pid"],
            proc_start=row["proc_start"], monitor_pid=row["monitor_pid"], monitor_start=row["monitor_start"],
            sid=row["sid"], stop_requested=bool(row["stop_requested"]), exit_code=row["exit_code"],
            exit_signal=row["exit_signal"], stderr_tail=row["stderr_tail"], last_step=row["last_step"],
            last_step_at=row["last_step_at"], created_at=row["created_at"], started_at=row["started_at"],
            ended_at=row["ended_at"], updated_at=row["updated_at"])

    def create_run(self, name: str, backend: str, config: Mapping[str, Any], argv: Sequence[str] | None = None,
                   *, cwd: str | None = None, env: Mapping[str, str] | None = None) -> RunRecord:
        """Register a new run (status ``created``) and write its folder and config snapshot."""
        check_run_name(name)
        safe_config = scrub(to_jsonable(dict(config)))
        now = time.time()
        with self._db.write() as c:
            if c.execute("SELECT 1 FROM runs WHERE name=?", (name,)).fetchone():
                raise StoreError(f"a run named {name!r} already exists in {self.path}",
                                 hint="pick another name (run.name=...), or delete the old run: ropd-tui --headless delete "
                                      f"{name} --yes")
            cur = c.execute(
                "INSERT INTO runs(name, backend, status, config_json, argv_json, env_json, cwd, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (name, backend, "created", json.dumps(safe_config, default=str),
                 json.dumps(list(argv)) if argv is not None else None, json.dumps(scrub_env(dict(env or {}))),
                 cwd, now, now))
            run_id = cur.lastrowid
            c.execute("INSERT INTO events(run_id, ts, kind, message) VALUES (?,?,?,?)",
                      (run_id, now, "created", f"run {name} created ({backend})"))
        run_dir = self.run_dir(name)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._write_config_snapshot(run_dir, safe_config)
        return self.get_run(run_id)

    @staticmethod
    def _write_config_snapshot(run_dir: Path, config: dict[str, Any]) -> None:
        import yaml

        tmp = run_dir / "config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        os.replace(tmp, run_dir / "config.yaml")

    def get_run(self, name_or_id: str | int) -> RunRecord:
        """A run by name (preferred) or numeric id; StoreError naming the store if there is none."""
        key = str(name_or_id)
        rows = self._db.query("SELECT * FROM runs WHERE name=?", (key,))
        if not rows and key.isdigit():
            rows = self._db.query("SELECT * FROM runs WHERE id=?", (int(key),))
        if not rows:
            raise StoreError(f"no run {key!r} in {self.path}", hint="list runs with: ropd-tui --headless runs")
        return self._record(rows[0])

    def find_run(self, name_or_id: str | int) -> RunRecord | None:
        try:
            return self.get_run(name_or_id)
        except StoreError:
            return None

    def runs(self) -> list[RunRecord]:
        return [self._record(r) for r in self._db.query("SELECT * FROM runs ORDER BY id")]

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run with status, latest step, headline numbers (reward, accuracy), its judge ``cost``
        (:func:`engine.judging.cost.cost_summary`) and all latest metrics."""
        with self._db.read() as c:
            rows = c.execute("SELECT id, name, backend, status, cause, attempt, host, pid, exit_code, exit_signal,"
                             " last_step, last_step_at, created_at, started_at, ended_at, config_json FROM runs"
                             " ORDER BY id").fetchall()
            latest = q.latest_metrics(c, None)
            progress = q.progress_rows(c, None)
        out = []
        for r in rows:
            d = dict(r)
            config = q._loads(d.pop("config_json"), {})
            d["progress"] = progress.get(r["id"])
            lm = latest.get(r["id"], {})
            d["reward"] = q.headline(lm, q.REWARD_KEYS)
            d["accuracy"] = q.headline(lm, q.ACCURACY_KEYS)
            d["cost"] = cost_summary(config, lm)
            d["metrics"] = lm
            out.append(d)
        return out

    def update_run(self, run_id: int, **fields: Any) -> None:
        unknown = set(fields) - _RUN_FIELDS
        if unknown:
            raise ValueError(f"update_run: unknown field(s) {sorted(unknown)}")
        cols, vals = [], []
        for k, v in fields.items():
            if k == "config":
                k, v = "config_json", json.dumps(scrub(to_jsonable(v)), default=str)
            elif k == "argv":
                k, v = "argv_json", None if v is None else json.dumps(list(v))
            elif k == "env":
                k, v = "env_json", json.dumps(scrub_env(dict(v or {})))
            elif k in ("cause", "stderr_tail") and v is not None:
                v = scrub_text(str(v))
            elif k == "stop_requested":
                v = int(bool(v))
            cols.append(f"{k}=?")
            vals.append(v)
        cols.append("updated_at=?")
        vals.append(time.time())
        with self._db.write() as c:
            c.execute(f"UPDATE runs SET {', '.join(cols)} WHERE id=?", (*vals, int(run_id)))
        if "config" in fields:
            rec = self.get_run(run_id)
            rec.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config_snapshot(rec.run_dir, rec.config)

    def transition(self, run_id: int, expect: Iterable[str], **fields: Any) -> bool:
        """Update the run only if its status is one of ``expect`` (atomic compare-and-set)."""
        expect = tuple(expect)
        with self._db.write() as c:
            row = c.execute("SELECT status FROM runs WHERE id=?", (int(run_id),)).fetchone()
            if row is None or row[0] not in expect:
                return False
            self.update_run(run_id, **fields)  # joins this transaction
            return True

    def start_attempt(self, run_id: int, message: str = "") -> int:
        """Begin a new attempt (restart from scratch): old steps stay under the previous attempt number."""
        with self._db.write() as c:
            row = c.execute("SELECT attempt, last_step FROM runs WHERE id=?", (int(run_id),)).fetchone()
            if row is None:
                raise StoreError(f"no run with id {run_id} in {self.path}")
            attempt = row[0] + 1
            now = time.time()
            c.execute("UPDATE runs SET attempt=?, last_step=NULL, last_step_at=NULL, exit_code=NULL, exit_signal=NULL,"
                      " stderr_tail=NULL, cause=NULL, updated_at=? WHERE id=?", (attempt, now, int(run_id)))
            c.execute("DELETE FROM latest_metrics WHERE run_id=?", (int(run_id),))
            c.execute("DELETE FROM run_progress WHERE run_id=?", (int(run_id),))
            c.execute("INSERT INTO events(run_id, ts, kind, step, message, data_json) VALUES (?,?,?,?,?,?)",
                      (int(run_id), now, "restarted", None,
                       message or f"restarted from scratch as attempt {attempt} (attempt {row[0]} kept, last step {row[1]})",
                       json.dumps({"attempt": attempt, "previous_attempt": row[0], "previous_last_step": row[1]})))
        return attempt

    def delete_run(self, run_id: int) -> None:
        """Remove the run's rows (all attempts, replays) and its folder."""
        rec = self.get_run(run_id)
        rid = rec.id
        with self._db.write() as c:
            delete_group_rows(c, "run_id=?", (rid,))
            rep = [r[0] for r in c.execute("SELECT id FROM replays WHERE run_id=?", (rid,)).fetchall()]
            for replay_id in rep:
                self._delete_replay_rows(c, replay_id)
            for table in ("judge_calls", "metric_buckets", "metrics", "latest_metrics", "steps", "events", "run_templates", "tracker_state",
                          "run_progress"):
                c.execute(f"DELETE FROM {table} WHERE run_id=?", (rid,))
            c.execute("DELETE FROM runs WHERE id=?", (rid,))
        if rec.run_dir.exists() and rec.run_dir.resolve().parent == self.root.resolve():
            shutil.rmtree(rec.run_dir, ignore_errors=True)

    # -- events -----------------------------------------------------------------------------------
    def add_event(self, run_id: int, kind: str, message: str, step: int | None = None,
                  data: Mapping[str, Any] | None = None) -> int:
        with self._db.write() as c:
            cur = c.execute("INSERT INTO events(run_id, ts, kind, step, message, data_json) VALUES (?,?,?,?,?,?)",
                            (int(run_id), time.time(), kind, step, scrub_text(str(message)),
                             json.dumps(scrub(to_jsonable(dict(data))), default=str) if data else None))
            return cur.lastrowid

    def events(self, run_id: int, after_seq: int = 0, kinds: Iterable[str] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """The run's events after ``after_seq`` (of ``kinds``), oldest first; ``limit``: only the newest ``limit``."""
        sql = "SELECT seq, run_id, ts, kind, step, message, data_json FROM events WHERE run_id=? AND seq>?"
        params: list[Any] = [int(run_id), after_seq]
        if kinds:
            kinds = list(kinds)
            sql += f" AND kind IN ({q._marks(len(kinds))})"
            params += kinds
        if limit is not None:
            rows = self._db.query(sql + " ORDER BY seq DESC LIMIT ?", (*params, int(limit)))[::-1]
        else:
            rows = self._db.query(sql + " ORDER BY seq", params)
        return [{**{k: r[k] for k in ("seq", "run_id", "ts", "kind", "step", "message")},
                 "data": q._loads(r["data_json"])} for r in rows]

    # -- progress inside a step (the trainer's heartbeat, engine.runs.heartbeat) ------------------------
    def write_progress(self, run_id: int, *, phase: str, phase_started: float, progress_at: float,
                       step: int | None = None, total_steps: int | None = None, done: int | None = None,
                       total: int | None = None, unit: str | None = None, detail: str | None = None,
                       no_progress_after_s: float | None = None, totals: Mapping[str, float] | None = None) -> None:
        """Overwrite the run's progress row in one short transaction of its own."""
        now = time.time()
        with self._db.write() as c:
            row = c.execute("SELECT attempt FROM runs WHERE id=?", (int(run_id),)).fetchone()
            if row is None:
                return  # the run was deleted: nobody is left to read its progress
            c.execute("INSERT OR REPLACE INTO run_progress(run_id, attempt, step, total_steps, phase, done, total,"
                      " unit, detail, phase_started, progress_at, updated_at, no_progress_after_s, totals_json)"
                      " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (int(run_id), row[0], step, total_steps, phase, done, total, unit,
                       None if detail is None else scrub_text(str(detail)), float(phase_started),
                       float(progress_at), now, no_progress_after_s, json.dumps(dict(totals)) if totals else None))

    def progress(self, run_ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """{run_id: progress row} of the current attempt (the phase, k of n, since when, seconds per phase)."""
        with self._db.read() as c:
            return q.progress_rows(c, run_ids)

    # -- steps (the trainer's write path) ------------------------------------------------------------
    def write_step(self, run_id: int, step: int, metrics: Mapping[str, float] | None = None,
                   groups: Sequence[GroupResult] = (), wall_time: float | None = None, *,
                   append: bool = False) -> None:
        """Write one training step in ONE transaction: metrics, groups, answers, rubrics, criteria,
        verdicts, judge calls and template versions. Either all of it is visible or none of it.

        Derived ``score/*`` metrics (student/teacher reward means, accuracy, failure rate) are added
        from the groups unless ``metrics`` has them; so are the ``cost/*`` metrics (step, running total,
        per 1,000 rollouts) when the run's config prices the judge (:mod:`engine.judging.cost`). ``append=True`` adds groups to a step instead of
        replacing the step's groups (for backends that score a step's groups in several batches).
        """
        wall_time = time.time() if wall_time is None else float(wall_time)
        metrics = dict(metrics or {})
        groups = list(groups)
        with self._db.write() as c:
            row = c.execute("SELECT attempt, status, last_step, config_json FROM runs WHERE id=?",
                            (int(run_id),)).fetchone()
            if row is None:
                raise StoreError(f"no run with id {run_id} in {self.path}",
                                 hint="the run was deleted while it was training; stop the trainer")
            attempt = row[0]
            pricing = pricing_from_config(q._loads(row[3], {})) if groups else None
            write_step_rows(c, int(run_id), attempt, int(step), metrics, groups, wall_time, append=append,
                            pricing=pricing)
            self._after_step(c, int(run_id), int(step), row)

    def write_metrics(self, run_id: int, step: int, metrics: Mapping[str, float], wall_time: float | None = None) -> None:
        """Upsert metrics of a step (key by key) without touching its groups."""
        wall_time = time.time() if wall_time is None else float(wall_time)
        with self._db.write() as c:
            row = c.execute("SELECT attempt, status, last_step FROM runs WHERE id=?", (int(run_id),)).fetchone()
            if row is None:
                raise StoreError(f"no run with id {run_id} in {self.path}")
            write_metric_rows(c, int(run_id), row[0], int(step), metrics, wall_time)
            if not c.execute("SELECT 1 FROM steps WHERE run_id=? AND attempt=? AND step=?",
                             (int(run_id), row[0], int(step))).fetchone():
                c.execute("INSERT INTO steps(run_id, attempt, step, wall_time) VALUES (?,?,?,?)",
                          (int(run_id), row[0], int(step), wall_time))
            self._after_step(c, int(run_id), int(step), row)

    @staticmethod
    def _after_step(c, run_id: int, step: int, row) -> None:
        now = time.time()
        last = step if row[2] is None else max(row[2], step)
        c.execute("UPDATE runs SET last_step=?, last_step_at=?, updated_at=? WHERE id=?", (last, now, now, run_id))
        if row[1] == "stalled":
            c.execute("UPDATE runs SET status='running', cause=NULL WHERE id=?", (run_id,))
            c.execute("INSERT INTO events(run_id, ts, kind, step, message) VALUES (?,?,?,?,?)",
                      (run_id, now, "recovered", step, f"step {step} arrived; no longer stalled"))

    # -- templates ----------------------------------------------------------------------------------
    def record_template(self, role: str, sha: str, text: str | None, source: str | None = None, *,
                        run_id: int | None = None, step: int | None = None) -> None:
        """Remember a template version (text by sha256); with ``run_id``, note that the run used it."""
        now = time.time()
        with self._db.write() as c:
            c.execute("INSERT INTO template_versions(sha, role, text, source, first_seen, first_run_id)"
                      " VALUES (?,?,?,?,?,?) ON CONFLICT(sha) DO UPDATE SET"
                      " text=coalesce(template_versions.text, excluded.text),"
                      " source=coalesce(template_versions.source, excluded.source)",
                      (sha, role, text, source, now, run_id))
            if run_id is not None:
                c.execute("INSERT INTO run_templates(run_id, sha, role, first_step, first_seen) VALUES (?,?,?,?,?)"
                          " ON CONFLICT(run_id, sha) DO UPDATE SET first_step=excluded.first_step"
                          " WHERE run_templates.first_step IS NULL AND excluded.first_step IS NOT NULL",
                          (int(run_id), sha, role, step, now))

    def template(self, sha: str) -> dict[str, Any] | None:
        rows = self._db.query("SELECT * FROM template_versions WHERE sha=?", (sha,))
        return dict(rows[0]) if rows else None

    def templates(self, run_id: int | None = None, role: str | None = None) -> list[dict[str, Any]]:
        """Template versions (all, or those a run used, in first-use order), newest last."""
        if run_id is None:
            sql, params = "SELECT * FROM template_versions", []
            if role:
                sql += " WHERE role=?"
                params.append(role)
            return [dict(r) for r in self._db.query(sql + " ORDER BY first_seen", params)]
        sql = ("SELECT t.sha, t.role, t.text, t.source, t.first_seen, rt.first_step, rt.first_seen AS used_since"
               " FROM run_templates rt JOIN template_versions t ON t.sha = rt.sha WHERE rt.run_id=?")
        params = [int(run_id)]
        if role:
            sql += " AND rt.role=?"
            params.append(role)
        return [dict(r) for r in self._db.query(sql + " ORDER BY rt.first_seen", params)]

    # -- readers ------------------------------------------------------------------------------------
    def _attempt(self, c, run_id: int, attempt: int | None) -> int:
        if attempt is not None:
            return int(attempt)
        row = c.execute("SELECT attempt FROM runs WHERE id=?", (int(run_id),)).fetchone()
        if row is None:
            raise StoreError(f"no run with id {run_id} in {self.path}", hint="list runs with: ropd-tui --headless runs")
        return row[0]

    def metric_keys(self, run_id: int, *, attempt: int | None = None) -> list[str]:
        """The metric keys the run logged, sorted (``attempt``: those of that attempt only)."""
        if attempt is None:
            return [r[0] for r in self._db.query("SELECT key FROM latest_metrics WHERE run_id=? ORDER BY key",
                                                 (int(run_id),))]
        return [r[0] for r in self._db.query("SELECT DISTINCT key FROM metrics WHERE run_id=? AND attempt=?"
                                             " ORDER BY key", (int(run_id), int(attempt)))]

    def latest_metrics(self, run_ids: Iterable[int] | None = None) -> dict[int, dict[str, float]]:
        """{run_id: {key: value at the latest step that logged it}} for the given runs (all when None)."""
        with self._db.read() as c:
            return q.latest_metrics(c, run_ids)

    def metric_series(self, run_id: int, key: str, *, attempt: int | None = None, since_step: int | None = None,
                      with_time: bool = False) -> list[tuple]:
        """[(step, value)] ordered by step (``with_time``: (step, value, wall_time)); ``since_step`` for increments."""
        with self._db.read() as c:
            return q.metric_series(c, int(run_id), self._attempt(c, run_id, attempt), key, since_step, with_time)

    def metric_curve(self, run_id: int, key: str, *, attempt: int | None = None, buckets: int = q.CURVE_BUCKETS,
                     since: tuple[int, int] | None = None) -> dict[str, Any]:
        """One metric at screen resolution (see :func:`engine.store.queries.metric_curve`): at most about
        ``2 * buckets`` points whatever the run's length, with every bucket's minimum and maximum."""
        with self._db.read() as c:
            return q.metric_curve(c, int(run_id), self._attempt(c, run_id, attempt), key, buckets, since)

    def metric_values_at(self, run_id: int, key: str, steps: Sequence[float], *, attempt: int | None = None
                         ) -> dict[int, float]:
        """{step: value} of one metric at these steps (index probes; steps without a value are left out)."""
        with self._db.read() as c:
            return q.metric_values_at(c, int(run_id), self._attempt(c, run_id, attempt), key, steps)

    def steps(self, run_id: int, *, attempt: int | None = None) -> list[dict[str, Any]]:
        with self._db.read() as c:
            a = self._attempt(c, run_id, attempt)
            rows = c.execute("SELECT seq, step, wall_time, n_groups, n_failed FROM steps WHERE run_id=? AND attempt=?"
                             " ORDER BY step", (int(run_id), a)).fetchall()
        return [dict(r) for r in rows]

    def step_nav(self, run_id: int, step: int | None = None, *, attempt: int | None = None) -> dict[str, Any]:
        """Bounded navigation around one step (see :func:`engine.store.queries.step_nav`): the step itself
        (the latest for None, else the nearest that exists), first, last, prev, next, index and count."""
        with self._db.read() as c:
            a = self._attempt(c, run_id, attempt)
            return q.step_nav(c, int(run_id), a, None if step is None else int(step))

    def attempts(self, run_id: int) -> list[int]:
        return [r[0] for r in self._db.query("SELECT DISTINCT attempt FROM steps WHERE run_id=? ORDER BY attempt",
                                             (int(run_id),))]

    def step_groups(self, run_id: int, step: int, *, attempt: int | None = None, include_calls: bool = True
                    ) -> list[dict[str, Any]]:
        """One step's groups, each with question, rubric (criteria with pass rates), answers (with
        ``verdicts`` per answer), the verdict matrix (answers x criteria) and judge calls."""
        with self._db.read() as c:
            a = self._attempt(c, run_id, attempt)
            rows = c.execute("SELECT * FROM groups WHERE run_id=? AND attempt=? AND step=? ORDER BY group_index, seq",
                             (int(run_id), a, int(step))).fetchall()
            return q.load_groups(c, rows, include_calls=include_calls)

    def step_group_summaries(self, run_id: int, step: int, *, attempt: int | None = None) -> list[dict[str, Any]]:
        """One step's groups without their texts, in :meth:`step_groups` order: ``id`` (the group's seq, for
        :meth:`group`), step, group_index and status. One probe of idx_groups_step; a group's rows never change
        after it is written (a rewritten step gets new groups, new ids), so an id names its content."""
        with self._db.read() as c:
            a = self._attempt(c, run_id, attempt)
            rows = c.execute("SELECT seq, step, group_index, status FROM groups WHERE run_id=? AND attempt=? AND step=?"
                             " ORDER BY group_index, seq", (int(run_id), a, int(step))).fetchall()
        return [{"id": r[0], "step": r[1], "group_index": r[2], "status": r[3]} for r in rows]

    def group(self, group_id: int, *, include_calls: bool = True) -> dict[str, Any]:
        with self._db.read() as c:
            rows = c.execute("SELECT * FROM groups WHERE seq=?", (int(group_id),)).fetchall()
            if not rows:
                raise StoreError(f"no group {group_id} in {self.path}")
            return q.load_groups(c, rows, include_calls=include_calls)[0]

    def criterion_pass_rates(self, run_id: int, *, by: str = "criterion", step: int | None = None,
                             attempt: int | None = None) -> list[dict[str, Any]]:
        """Teacher vs student pass rates. ``by="criterion"``: one row per criterion of every rubric;
        ``by="step"|"category"|"points"``: averages over the criteria of each step/category/points value."""
        with self._db.read() as c:
            a = self._attempt(c, run_id, attempt)
            if by == "criterion":
                return q.criterion_rows(c, int(run_id), a, step)
            if by not in ("step", "category", "points"):
                raise ValueError(f"criterion_pass_rates: by must be criterion, step, category or points, not {by!r}")
            return q.pass_rates_grouped(c, int(run_id), a, by)

    def criterion_page(self, run_id: int, limit: int = 200, *, verdict: str | None = None, after: tuple | None = None,
                       with_counts: bool = True, attempt: int | None = None) -> RunWide:
        """Run-wide criterion statistics (see :mod:`engine.scoring.criterion_stats`): one keyset page of the
        run's criteria, most telling first (verdict rank, then the teacher-student gap), optionally of
        one ``verdict`` only; the next page starts ``after`` the returned ``cursor`` (None: no more).
        ``with_counts``: also the number of criteria per verdict and the per-category pass rates.

        Read from rollups kept at ingest (:mod:`engine.store.criterion_rollups`): a long run has millions of
        criteria; the counts are a few summary rows and a page is an index range scan of ``limit`` rows."""
        if verdict is not None and verdict not in VERDICT_ORDER:
            raise ValueError(f"criterion_page: verdict must be one of {', '.join(VERDICT_ORDER)}, not {verdict!r}")
        with self._db.read() as c:
            a = self._attempt(c, run_id, attempt)
            counts = criterion_rollups.verdict_counts(c, int(run_id), a) if with_counts else {}
            categories = criterion_rollups.category_rates(c, int(run_id), a) if with_counts else []
            top, cursor = criterion_rollups.page(c, int(run_id), a, int(limit), verdict, after)
        return RunWide(counts=counts, n_total=sum(counts.values()), top=top, categories=categories,
                       verdict=verdict, cursor=cursor)

    def answers(self, run_id: int, steps: Iterable[int] | None = None, *, kind: str | None = None,
                attempt: int | None = None, include_verdicts: bool = False) -> list[dict[str, Any]]:
        """Answers with their group context (question, ground truth, step), for export and replay."""
        with self._db.read() as c:
            a = self._attempt(c, run_id, attempt)
            return q.answer_rows(c, int(run_id), a, None if steps is None else list(steps), kind, include_verdicts)

    def verdicts(self, run_id: int, step: int, *, attempt: int | None = None) -> list[dict[str, Any]]:
        """One row per (answer, criterion) of a step, with criterion text and the verdict."""
        with self._db.read() as c:
            return q.verdict_rows(c, int(run_id), self._attempt(c, run_id, attempt), int(step))

    def search(self, run_id: int, query: str, *, kinds: Iterable[str] | str | None = None, limit: int = 50,
               after: dict[str, int] | None = None, literal: bool = False, attempt: int | None = None,
               progress=None) -> SearchPage:
        """Full-text search of the run's criterion texts, student and teacher answers and raw judge replies
        (``kinds``: some of criterion, student, teacher, reply; all by default). The first ``limit``
        matches by step, prompt and kind, each with a snippet; the next page starts ``after`` the returned
        ``cursor``. FTS5 syntax unless ``literal``; a bad query raises SearchQueryError. Indexes what was
        written since the last search first (``progress(done, total)``; see :mod:`engine.store.search`)."""
        search_q.prepare_query(query, literal)  # a bad query or kind fails before any indexing
        kinds = search_q.normalize_kinds(kinds)
        self.refresh_search_index(progress=progress)
        with self._db.read() as c:
            return search_q.search(c, int(run_id), self._attempt(c, run_id, attempt), query, kinds, limit=limit,
                                   after=after, literal=literal)

    def refresh_search_index(self, progress=None) -> int:
        """Bring the full-text index up to date (rows written since the last search); returns how many rows
        it indexed. Short write transactions: a training run writing meanwhile waits tens of ms at most."""
        return search_q.refresh_index(self._db, progress=progress)

    def search_backlog(self) -> int:
        """How many texts the next search will index first."""
        with self._db.read() as c:
            return search_q.pending(c)

    def judge_usage(self, run_id: int, *, attempt: int | None = None) -> list[dict[str, Any]]:
        """Judge token usage per step, role and model, with its cost in ``usd`` by the run's prices
        (None where the run is not priced); replay-cache hits are counted but cost nothing."""
        from engine.judging.cost import pricing_from_config

        with self._db.read() as c:
            a = self._attempt(c, run_id, attempt)
            rows = q.judge_usage(c, int(run_id), a)
            config = q._loads(c.execute("SELECT config_json FROM runs WHERE id=?", (int(run_id),)).fetchone()[0], {})
        pricing = pricing_from_config(config)
        for r in rows:
            price = pricing.for_call(r["role"])
            r["usd"] = (price.usd(r["prompt_tokens"], r["completion_tokens"], r["cached_prompt_tokens"])
                        if price.known and r["reported_usage"] else None)
        return rows

    def judge_calls(self, run_id: int, *, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._db.query("SELECT * FROM judge_calls WHERE run_id=? AND seq>? ORDER BY seq LIMIT ?",
                              (int(run_id), after_seq, limit))
        return [q.call_dict(r) for r in rows]

    def last_seq(self, table: str, run_id: int) -> int:
        """The newest ``seq`` of a run's rows in an append-only table (0: none): a cheap "did anything
        of this run change" check for readers that poll."""
        if table not in q.CURSOR_TABLES:
            raise ValueError(f"last_seq: table must be one of {q.CURSOR_TABLES}, not {table!r}")
        rows = self._db.query(f"SELECT MAX(seq) FROM {table} WHERE run_id=?", (int(run_id),))
        return int(rows[0][0] or 0)

    def rows_newer(self, table: str, cursor: int, *, run_id: int | None = None, limit: int = 10_000
                   ) -> tuple[list[dict[str, Any]], int]:
        """Rows of an append-only table with ``seq > cursor`` (oldest first) and the new cursor."""
        if table not in q.CURSOR_TABLES:
            raise ValueError(f"rows_newer: table must be one of {q.CURSOR_TABLES}, not {table!r}")
        sql, params = f"SELECT * FROM {table} WHERE seq>?", [int(cursor)]
        if run_id is not None:
            sql += " AND run_id=?"
            params.append(int(run_id))
        rows = [dict(r) for r in self._db.query(sql + " ORDER BY seq LIMIT ?", (*params, int(limit)))]
        return rows, (rows[-1]["seq"] if rows else int(cursor))

    def metric_rows_after(self, run_id: int, attempt: int, cursor: int, *, limit: int = 10_000
                          ) -> tuple[list[dict[str, Any]], int]:
        """Metric rows of one attempt with ``seq > cursor`` in write order ({seq, step, key, value,
        wall_time}), and the new cursor. A value rewritten in place keeps its seq (not returned again)."""
        rows = [dict(r) for r in self._db.query(
            "SELECT seq, step, key, value, wall_time FROM metrics WHERE run_id=? AND attempt=? AND seq>?"
            " ORDER BY seq LIMIT ?", (int(run_id), int(attempt), int(cursor), int(limit)))]
        return rows, (rows[-1]["seq"] if rows else int(cursor))

    # -- experiment trackers (engine.tracking: what was mirrored where) ---------------------------------
    def tracker_state(self, run_id: int, attempt: int, backend: str) -> dict[str, Any] | None:
        rows = self._db.query("SELECT external_id, cursor FROM tracker_state WHERE run_id=? AND attempt=? AND backend=?",
                              (int(run_id), int(attempt), backend))
        return dict(rows[0]) if rows else None

    def save_tracker_state(self, run_id: int, attempt: int, backend: str, *, external_id: str | None = None,
                           cursor: int | None = None) -> None:
        with self._db.write() as c:
            c.execute("INSERT INTO tracker_state(run_id, attempt, backend, external_id, cursor, updated_at)"
                      " VALUES (?,?,?,?,?,?) ON CONFLICT(run_id, attempt, backend) DO UPDATE SET"
                      " external_id=coalesce(excluded.external_id, tracker_state.external_id),"
                      " cursor=CASE WHEN ? IS NULL THEN tracker_state.cursor ELSE excluded.cursor END,"
                      " updated_at=excluded.updated_at",
                      (int(run_id), int(attempt), backend, external_id, int(cursor or 0), time.time(), cursor))

    # -- replays (results of re-judging stored answers with other settings) -----------------------------
    def create_replay(self, run_id: int, settings: Mapping[str, Any], *, name: str | None = None,
                      n_total: int | None = None) -> int:
        with self._db.write() as c:
            cur = c.execute("INSERT INTO replays(run_id, name, status, settings_json, n_total, created_at)"
                            " VALUES (?,?,?,?,?,?)",
                            (int(run_id), name, "created", json.dumps(scrub(to_jsonable(dict(settings))), default=str),
                             n_total, time.time()))
            return cur.lastrowid

    def update_replay(self, replay_id: int, **fields: Any) -> None:
        unknown = set(fields) - _REPLAY_FIELDS
        if unknown:
            raise ValueError(f"update_replay: unknown field(s) {sorted(unknown)}")
        cols, vals = [], []
        for k, v in fields.items():
            if k in ("settings", "summary"):
                k, v = f"{k}_json", json.dumps(scrub(to_jsonable(v)), default=str)
            elif k == "cause" and v is not None:
                v = scrub_text(str(v))
            cols.append(f"{k}=?")
            vals.append(v)
        if not cols:
            return
        with self._db.write() as c:
            c.execute(f"UPDATE replays SET {', '.join(cols)} WHERE id=?", (*vals, int(replay_id)))

    def write_replay_group(self, replay_id: int, group_id: int, result: GroupResult,
                           answer_ids: Sequence[int | None]) -> int:
        """Store one re-judged group: its status, rubric, and per original answer (``answer_ids[i]`` is the
        stored answer id of ``result.answers[i]``) the new reward and verdicts. One transaction."""
        now = time.time()
        with self._db.write() as c:
            cur = c.execute(
                "INSERT INTO replay_groups(replay_id, group_id, status, failure_stage, failure_cause, rubric_json,"
                " template_versions_json, wall_s, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (int(replay_id), int(group_id), result.status, result.failure_stage,
                 scrub_text(result.failure_cause) if result.failure_cause else None,
                 json.dumps(to_jsonable(result.rubric)) if result.rubric else None,
                 json.dumps(result.template_versions or {}), result.wall_s, now))
            rgid = cur.lastrowid
            for a, aid in zip(result.answers, answer_ids):
                if aid is None:
                    continue
                cur = c.execute("INSERT INTO replay_answers(replay_id, replay_group_id, answer_id, reward, judge_score,"
                                " correct) VALUES (?,?,?,?,?,?)",
                                (int(replay_id), rgid, int(aid), a.reward, a.judge_score,
                                 None if a.correct is None else int(bool(a.correct))))
                if a.verdicts:
                    c.executemany("INSERT INTO replay_verdicts(replay_answer_id, criterion_pos, passed) VALUES (?,?,?)",
                                  [(cur.lastrowid, i, int(bool(v))) for i, v in enumerate(a.verdicts)])
            if result.calls:
                insert_calls(c, result.calls, run_id=None, group_id=None, replay_id=int(replay_id), now=now)
            for role, sha in (result.template_versions or {}).items():
                if sha:
                    c.execute("INSERT OR IGNORE INTO template_versions(sha, role, first_seen) VALUES (?,?,?)",
                              (sha, role, now))
            c.execute("UPDATE replays SET n_done = n_done + 1 WHERE id=?", (int(replay_id),))
            return rgid

    def replays(self, run_id: int | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM replays", []
        if run_id is not None:
            sql += " WHERE run_id=?"
            params.append(int(run_id))
        out = []
        for r in self._db.query(sql + " ORDER BY id", params):
            d = dict(r)
            d["settings"] = q._loads(d.pop("settings_json"), {})
            d["summary"] = q._loads(d.pop("summary_json"))
            out.append(d)
        return out

    def replay_results(self, replay_id: int) -> list[dict[str, Any]]:
        """Per re-judged group: status, rubric, and answers {answer_id, reward, judge_score, correct, verdicts}."""
        with self._db.read() as c:
            groups = c.execute("SELECT * FROM replay_groups WHERE replay_id=? ORDER BY id", (int(replay_id),)).fetchall()
            answers = c.execute("SELECT * FROM replay_answers WHERE replay_id=? ORDER BY id", (int(replay_id),)).fetchall()
            verdicts: dict[int, list[tuple[int, bool]]] = {}
            for ra, pos, passed in c.execute(
                    "SELECT v.replay_answer_id, v.criterion_pos, v.passed FROM replay_verdicts v"
                    " JOIN replay_answers a ON a.id = v.replay_answer_id WHERE a.replay_id=?", (int(replay_id),)):
                verdicts.setdefault(ra, []).append((pos, bool(passed)))
        by_group: dict[int, list[dict]] = {}
        for a in answers:
            vs = sorted(verdicts.get(a["id"], []))
            by_group.setdefault(a["replay_group_id"], []).append({
                "answer_id": a["answer_id"], "reward": a["reward"], "judge_score": a["judge_score"],
                "correct": None if a["correct"] is None else bool(a["correct"]),
                "verdicts": [v for _, v in vs] or None})
        return [{"id": g["id"], "group_id": g["group_id"], "status": g["status"], "failure_stage": g["failure_stage"],
                 "failure_cause": g["failure_cause"], "rubric": q._loads(g["rubric_json"]),
                 "template_versions": q._loads(g["template_versions_json"], {}), "wall_s": g["wall_s"],
                 "answers": by_group.get(g["id"], [])} for g in groups]

    @staticmethod
    def _delete_replay_rows(c, replay_id: int) -> None:
        c.execute("DELETE FROM replay_verdicts WHERE replay_answer_id IN"
                  " (SELECT id FROM replay_answers WHERE replay_id=?)", (replay_id,))
        for table in ("replay_answers", "replay_groups"):
            c.execute(f"DELETE FROM {table} WHERE replay_id=?", (replay_id,))
        c.execute("DELETE FROM judge_calls WHERE replay_id=?", (replay_id,))
        c.execute("DELETE FROM replays WHERE id=?", (replay_id,))

    def delete_replay(self, replay_id: int) -> None:
        with self._db.write() as c:
            self._delete_replay_rows(c, int(replay_id))
