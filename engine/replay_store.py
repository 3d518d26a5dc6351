"""Reading stored groups for a replay, and writing replays and the judge cache, in the run store.

Uses the run store's schema (``engine.store.schema``): a replay is a ``replays`` row linked to its
run; each replayed group a ``replay_groups`` row linked to the original ``groups`` row; each
re-judged answer a ``replay_answers`` row linked to the original ``answers`` row, with its verdicts in
``replay_verdicts``; the replay's judge calls go to ``judge_calls`` with ``replay_id`` set (and no
run/group, so they never count toward the run's own cost). The judge cache is the ``judge_cache``
table: replies keyed by the sha256 of the request.

One write transaction per replayed group, through the store's connection wrapper (WAL, retries on a
busy database), so a replay can run next to a training run and the UI.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import StoreError
from .store.db import Connection
from .types import Criterion, JudgeCall, Rubric


def store_file(store: Any) -> Path:
    """The SQLite file of a RunStore (or a path)."""
    if isinstance(store, (str, os.PathLike)):
        return Path(store)
    for attr in ("path", "db_path"):
        value = getattr(store, attr, None)
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
    db = getattr(store, "db", None) or getattr(store, "conn", None)
    if db is not None and isinstance(getattr(db, "path", None), (str, os.PathLike)):
        return Path(db.path)
    raise TypeError(f"cannot find the SQLite file of {store!r}")


@dataclass
class StoredAnswer:
    id: int
    kind: str
    index: int
    text: str
    pool_position: int | None
    reward: float | None
    correct: bool | None
    verdicts: list[bool] | None  # in rubric order; None when not judged


@dataclass
class StoredGroup:
    id: int
    run_id: int
    attempt: int
    step: int
    group_index: int
    question: str
    prompt: Any
    prompt_hash: str
    ground_truth: str | None
    status: str
    failure_stage: str | None
    failure_cause: str | None
    template_versions: dict[str, str]
    rubric: Rubric | None
    answers: list[StoredAnswer] = field(default_factory=list)

    @property
    def students(self) -> list[StoredAnswer]:
        return sorted((a for a in self.answers if a.kind == "student"), key=lambda a: a.index)

    @property
    def teachers(self) -> list[StoredAnswer]:
        return sorted((a for a in self.answers if a.kind == "teacher"), key=lambda a: a.index)


class ReplayStore:
    """Replay reads and writes on the run store's SQLite file (own connection; thread-safe)."""

    def __init__(self, store: Any):
        self.path = store_file(store)
        self.db = Connection(self.path, create=False)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ runs and templates
    def resolve_run(self, name_or_id: str | int) -> dict[str, Any]:
        key = str(name_or_id)
        rows = self.db.query("SELECT * FROM runs WHERE name = ?", (key,))
        if not rows and key.isdigit():
            rows = self.db.query("SELECT * FROM runs WHERE id = ?", (int(key),))
        if not rows:
            names = [r["name"] for r in self.db.query("SELECT name FROM runs ORDER BY id DESC LIMIT 10")]
            raise StoreError(f"no run named {key!r} in {self.path}",
                             hint=("runs here: " + ", ".join(names)) if names else "the store has no runs yet")
        row = dict(rows[0])
        row["config"] = json.loads(row.get("config_json") or "{}")
        return row

    def template_versions(self, role: str | None = None) -> list[dict[str, Any]]:
        """Stored template versions (newest first), with the runs that used each."""
        sql = ("SELECT tv.sha, tv.role, tv.text, tv.source, tv.first_seen, tv.first_run_id,"
               " (SELECT group_concat(r.name, ', ') FROM run_templates rt JOIN runs r ON r.id = rt.run_id"
               "  WHERE rt.sha = tv.sha) AS runs FROM template_versions tv")
        params: tuple = ()
        if role:
            sql += " WHERE tv.role = ?"
            params = (role,)
        return [dict(r) for r in self.db.query(sql + " ORDER BY tv.first_seen DESC", params)]

    def find_template(self, sha_prefix: str, role: str | None = None) -> dict[str, Any]:
        """The one stored version whose sha starts with ``sha_prefix`` (StoreError when none or several)."""
        prefix = sha_prefix.strip().lower()
        if len(prefix) < 4 or any(ch not in "0123456789abcdef" for ch in prefix):
            raise StoreError(f"{sha_prefix!r} is not a template version (give at least 4 hex digits of its sha256)",
                             hint="list versions with: ropd-tui --headless templates list")
        sql = "SELECT * FROM template_versions WHERE sha LIKE ?"
        params: list[Any] = [prefix + "%"]
        if role:
            sql += " AND role = ?"
            params.append(role)
        rows = self.db.query(sql, tuple(params))
        if not rows:
            raise StoreError(f"no stored {role or ''} template version starts with {prefix!r}".replace("  ", " "),
                             hint="list versions with: ropd-tui --headless templates list")
        if len(rows) > 1:
            raise StoreError(f"template version {prefix!r} is ambiguous ({len(rows)} versions match)",
                             hint="give more digits of the sha256")
        return dict(rows[0])

    def run_template_changes(self, run_id: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.query(
            "SELECT * FROM run_templates WHERE run_id = ? ORDER BY first_seen", (run_id,))]

    # ------------------------------------------------------------------ stored groups
    def load_groups(self, run_id: int, *, steps: Iterable[int] | None = None, group_ids: Iterable[int] | None = None
                    ) -> list[StoredGroup]:
        """The run's groups (latest attempt of each step) with rubric, answers and verdict matrices."""
        sql = ("SELECT g.*, p.question, p.prompt_json FROM groups g JOIN prompts p ON p.hash = g.prompt_hash"
               " WHERE g.run_id = ? AND g.attempt = (SELECT MAX(g2.attempt) FROM groups g2"
               "  WHERE g2.run_id = g.run_id AND g2.step = g.step)")
        params: list[Any] = [run_id]
        if steps is not None:
            steps = sorted(set(int(s) for s in steps))
            if not steps:
                return []
            sql += f" AND g.step IN ({','.join('?' * len(steps))})"
            params += steps
        if group_ids is not None:
            ids = sorted(set(int(i) for i in group_ids))
            if not ids:
                return []
            sql += f" AND g.id IN ({','.join('?' * len(ids))})"
            params += ids
        sql += " ORDER BY g.step, g.group_index"
        with self.db.read() as c:
            grows = c.execute(sql, params).fetchall()
            groups = [self._group_from_row(c, r) for r in grows]
        return groups

    @staticmethod
    def _group_from_row(c, r) -> StoredGroup:
        gid = r["seq"]
        crows = c.execute("SELECT * FROM criteria WHERE group_id = ? ORDER BY position", (gid,)).fetchall()
        rubric = None
        if crows:
            rub = c.execute("SELECT * FROM rubrics WHERE group_id = ?", (gid,)).fetchone()
            rubric = Rubric(criteria=[Criterion(id=cr["crit_key"] or f"c{i + 1}", text=cr["text"],
                                                points=int(cr["points"]), category=cr["category"] or "")
                                      for i, cr in enumerate(crows)],
                            schema_version=(rub["schema_version"] if rub else None) or "ropd.rubric.v1",
                            maximum_score=rub["maximum_score"] if rub else None)
        pos = {cr["id"]: i for i, cr in enumerate(crows)}
        verdicts: dict[int, list[bool | None]] = {}
        for v in c.execute("SELECT answer_id, criterion_id, passed FROM verdicts WHERE group_id = ?", (gid,)):
            row = verdicts.setdefault(v["answer_id"], [None] * len(crows))
            if v["criterion_id"] in pos:
                row[pos[v["criterion_id"]]] = bool(v["passed"])
        answers = []
        for a in c.execute("SELECT * FROM answers WHERE group_id = ? ORDER BY kind DESC, idx", (gid,)):
            vs = verdicts.get(a["id"])
            answers.append(StoredAnswer(
                id=a["id"], kind=a["kind"], index=a["idx"], text=a["text"], pool_position=a["pool_position"],
                reward=a["reward"], correct=None if a["correct"] is None else bool(a["correct"]),
                verdicts=None if vs is None or any(x is None for x in vs) else [bool(x) for x in vs]))
        try:
            prompt = json.loads(r["prompt_json"])
        except (TypeError, ValueError):
            prompt = r["question"]
        return StoredGroup(
            id=gid, run_id=r["run_id"], attempt=r["attempt"], step=r["step"], group_index=r["group_index"],
            question=r["question"], prompt=prompt, prompt_hash=r["prompt_hash"], ground_truth=r["ground_truth"],
            status=r["status"], failure_stage=r["failure_stage"], failure_cause=r["failure_cause"],
            template_versions=json.loads(r["template_versions_json"] or "{}"), rubric=rubric, answers=answers)

    # ------------------------------------------------------------------ replays
    def create_replay(self, run_id: int, name: str | None, settings: dict[str, Any], n_total: int) -> int:
        now = time.time()
        with self.db.write() as c:
            cur = c.execute(
                "INSERT INTO replays (run_id, name, status, settings_json, n_total, n_done, pid, host,"
                " created_at, started_at) VALUES (?, ?, 'running', ?, ?, 0, ?, ?, ?, ?)",
                (run_id, name, json.dumps(settings, default=str), n_total, os.getpid(), socket.gethostname(),
                 now, now))
            return int(cur.lastrowid)

    def write_group(self, replay_id: int, group: StoredGroup, *, status: str, failure_stage: str | None,
                    failure_cause: str | None, rubric: Rubric | None, rubric_source: str,
                    template_versions: dict[str, str], wall_s: float,
                    answers: list[tuple[StoredAnswer, float | None, list[bool] | None]],
                    calls: list[JudgeCall]) -> None:
        """One replayed group in one transaction: its row, its answers with verdicts, its judge calls."""
        now = time.time()
        rubric_json = None
        if rubric is not None:
            rubric_json = json.dumps({"source": rubric_source, "schema_version": rubric.schema_version,
                                      "criteria": [{"id": c.id, "text": c.text, "points": c.points,
                                                    "category": c.category} for c in rubric.criteria]})
        with self.db.write() as c:
            cur = c.execute(
                "INSERT INTO replay_groups (replay_id, group_id, status, failure_stage, failure_cause, rubric_json,"
                " template_versions_json, wall_s, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (replay_id, group.id, status, failure_stage, failure_cause, rubric_json,
                 json.dumps(template_versions), wall_s, now))
            rg_id = cur.lastrowid
            for answer, reward, verdicts in answers:
                cur = c.execute(
                    "INSERT INTO replay_answers (replay_id, replay_group_id, answer_id, reward, correct)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (replay_id, rg_id, answer.id, reward, None if answer.correct is None else int(answer.correct)))
                if verdicts is not None:
                    c.executemany("INSERT INTO replay_verdicts (replay_answer_id, criterion_pos, passed) VALUES (?, ?, ?)",
                                  [(cur.lastrowid, i, int(v)) for i, v in enumerate(verdicts)])
            c.executemany(
                "INSERT INTO judge_calls (run_id, group_id, replay_id, role, model, endpoint, status, latency_s,"
                " attempts, prompt_tokens, completion_tokens, error_class, error, raw_reply, template_sha,"
                " request_sha, cached, created_at) VALUES (NULL, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(replay_id, k.role, k.model, k.endpoint, k.status, k.latency_s, k.attempts, k.prompt_tokens,
                  k.completion_tokens, k.error_class, k.error, k.raw_reply, k.template_sha, k.request_sha,
                  int(bool(k.cached)), now) for k in calls])
            c.execute("UPDATE replays SET n_done = n_done + ? WHERE id = ?",
                      (sum(1 for a in answers if a[0].kind == "student"), replay_id))

    def finish_replay(self, replay_id: int, status: str, summary: dict[str, Any] | None,
                      cause: str | None = None) -> None:
        with self.db.write() as c:
            c.execute("UPDATE replays SET status = ?, ended_at = ?, summary_json = ?, cause = ? WHERE id = ?",
                      (status, time.time(), json.dumps(summary, default=str) if summary is not None else None,
                       cause, replay_id))

    def delete_replay(self, replay_id: int) -> None:
        with self.db.write() as c:
            c.execute("DELETE FROM replay_verdicts WHERE replay_answer_id IN"
                      " (SELECT id FROM replay_answers WHERE replay_id = ?)", (replay_id,))
            c.execute("DELETE FROM replay_answers WHERE replay_id = ?", (replay_id,))
            c.execute("DELETE FROM replay_groups WHERE replay_id = ?", (replay_id,))
            c.execute("DELETE FROM judge_calls WHERE replay_id = ?", (replay_id,))
            c.execute("DELETE FROM replays WHERE id = ?", (replay_id,))

    def get_replay(self, replay_id: int) -> dict[str, Any]:
        rows = self.db.query("SELECT r.*, runs.name AS run_name FROM replays r LEFT JOIN runs ON runs.id = r.run_id"
                             " WHERE r.id = ?", (int(replay_id),))
        if not rows:
            raise StoreError(f"no replay with id {replay_id} in {self.path}",
                             hint="list replays with: ropd-tui --headless replay RUN --list")
        return _replay_row(rows[0])

    def list_replays(self, run_id: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT r.*, runs.name AS run_name FROM replays r LEFT JOIN runs ON runs.id = r.run_id"
        if run_id is None:
            rows = self.db.query(sql + " ORDER BY r.id DESC")
        else:
            rows = self.db.query(sql + " WHERE r.run_id = ? ORDER BY r.id DESC", (run_id,))
        return [_replay_row(r) for r in rows]

    def replay_rows(self, replay_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(groups, answers) of a replay: replay_groups rows, and replay_answers with their verdicts."""
        with self.db.read() as c:
            groups = [dict(r) for r in c.execute(
                "SELECT * FROM replay_groups WHERE replay_id = ? ORDER BY id", (replay_id,))]
            answers = [dict(r) for r in c.execute(
                "SELECT * FROM replay_answers WHERE replay_id = ? ORDER BY id", (replay_id,))]
            verdicts: dict[int, dict[int, bool]] = {}
            for v in c.execute("SELECT v.* FROM replay_verdicts v JOIN replay_answers a ON a.id = v.replay_answer_id"
                               " WHERE a.replay_id = ?", (replay_id,)):
                verdicts.setdefault(v["replay_answer_id"], {})[v["criterion_pos"]] = bool(v["passed"])
        for a in answers:
            vs = verdicts.get(a["id"])
            a["verdicts"] = [vs[i] for i in sorted(vs)] if vs else None
        for g in groups:
            g["rubric"] = json.loads(g["rubric_json"]) if g.get("rubric_json") else None
            g["template_versions"] = json.loads(g.get("template_versions_json") or "{}")
        return groups, answers

    # ------------------------------------------------------------------ judge cache
    def cache_get(self, request_sha: str) -> dict[str, Any] | None:
        rows = self.db.query("SELECT * FROM judge_cache WHERE request_sha = ?", (request_sha,))
        return dict(rows[0]) if rows else None

    def cache_put(self, request_sha: str, *, model: str | None, role: str | None, reply: str,
                  prompt_tokens: int | None, completion_tokens: int | None, latency_s: float | None) -> None:
        with self.db.write() as c:
            c.execute(
                "INSERT OR REPLACE INTO judge_cache (request_sha, model, role, reply, prompt_tokens,"
                " completion_tokens, latency_s, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (request_sha, model, role, reply, prompt_tokens, completion_tokens, latency_s, time.time()))

    def cache_size(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM judge_cache")[0][0])


def _replay_row(row) -> dict[str, Any]:
    d = dict(row)
    d["settings"] = json.loads(d.get("settings_json") or "{}")
    d["summary"] = json.loads(d["summary_json"]) if d.get("summary_json") else None
    return d
