"""Reading stored groups for a replay, and writing replays and the judge cache, in the run store.

Uses the run store's schema (``engine.store.schema``): a replay is a ``replays`` row linked to its
run; each replayed group a ``replay_groups`` row linked to the original ``groups`` row; each
re-judged answer a ``replay_answers`` row linked to the original ``answers`` row, with its verdicts in
``replay_verdicts``; the replay's judge calls go to ``judge_calls`` with ``replay_id`` set (and no
run/group, so they never count toward the run's own cost). The judge cache is the ``judge_cache``
table: replies keyed by the sha256 of the request.

Writes go through the run store's own replay API (one transaction per replayed group; WAL, retries
on a busy database), so a replay can run next to a training run and the UI.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine.errors import StoreError
from engine.types import Criterion, Rubric


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
    """Replay reads and writes through a :class:`engine.store.RunStore` (opened here from a path)."""

    def __init__(self, store: Any):
        from engine.store import RunStore

        if isinstance(store, RunStore):
            self.store, self._owned = store, False
        else:
            self.store, self._owned = RunStore(store_file(store), create=False), True
        self.path = self.store.path

    def close(self) -> None:
        if self._owned:
            self.store.close()

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with self.store.read_snapshot() as c:
            return c.execute(sql, tuple(params)).fetchall()

    # ------------------------------------------------------------------ runs and templates
    def resolve_run(self, name_or_id: str | int) -> dict[str, Any]:
        rec = self.store.get_run(name_or_id)  # StoreError naming the run when missing
        return {"id": rec.id, "name": rec.name, "attempt": rec.attempt, "config": rec.config or {},
                "status": rec.status}

    def template_versions(self, role: str | None = None) -> list[dict[str, Any]]:
        """Stored template versions (newest first), with the runs that used each."""
        sql = ("SELECT tv.sha, tv.role, tv.text, tv.source, tv.first_seen, tv.first_run_id,"
               " (SELECT group_concat(r.name, ', ') FROM run_templates rt JOIN runs r ON r.id = rt.run_id"
               "  WHERE rt.sha = tv.sha) AS runs FROM template_versions tv WHERE tv.text IS NOT NULL")
        params: tuple = ()
        if role:
            sql += " AND tv.role = ?"
            params = (role,)
        return [dict(r) for r in self._query(sql + " ORDER BY tv.first_seen DESC", params)]

    def find_template(self, sha_prefix: str, role: str | None = None) -> dict[str, Any]:
        """The one stored version whose sha starts with ``sha_prefix`` (StoreError when none or several)."""
        prefix = sha_prefix.strip().lower()
        if len(prefix) < 4 or any(ch not in "0123456789abcdef" for ch in prefix):
            raise StoreError(f"{sha_prefix!r} is neither a file nor a template version (give at least 4 hex digits"
                             " of its sha256)", hint="list versions with: ropd-tui --headless templates list")
        sql = "SELECT * FROM template_versions WHERE sha LIKE ? AND text IS NOT NULL"
        params: list[Any] = [prefix + "%"]
        if role:
            sql += " AND role = ?"
            params.append(role)
        rows = self._query(sql, params)
        if not rows:
            what = f"{role} template" if role else "template"
            raise StoreError(f"no stored {what} version starts with {prefix!r}",
                             hint="list versions with: ropd-tui --headless templates list")
        if len(rows) > 1:
            raise StoreError(f"template version {prefix!r} is ambiguous ({len(rows)} versions match)",
                             hint="give more digits of the sha256")
        return dict(rows[0])

    # ------------------------------------------------------------------ stored groups
    def load_groups(self, run_id: int, *, steps: Iterable[int] | None = None, group_ids: Iterable[int] | None = None
                    ) -> list[StoredGroup]:
        """The run's groups (current attempt) with rubric, answers and verdicts, oldest step first."""
        from engine.store import queries as q

        sql = "SELECT * FROM groups WHERE run_id = ?"
        params: list[Any] = [int(run_id)]
        if group_ids is not None:
            ids = sorted(set(int(i) for i in group_ids))
            if not ids:
                return []
            sql += f" AND seq IN ({','.join('?' * len(ids))})"
            params += ids
        else:
            sql += " AND attempt = (SELECT attempt FROM runs WHERE id = ?)"
            params.append(int(run_id))
        if steps is not None:
            steps = sorted(set(int(s) for s in steps))
            if not steps:
                return []
            sql += f" AND step IN ({','.join('?' * len(steps))})"
            params += steps
        with self.store.read_snapshot() as c:
            rows = c.execute(sql + " ORDER BY step, group_index, seq", params).fetchall()
            dicts = q.load_groups(c, rows, include_calls=False, include_raw=False)
        return [_stored_group(d) for d in dicts]

    # ------------------------------------------------------------------ replays (the run store's API)
    def create_replay(self, run_id: int, name: str | None, settings: dict[str, Any], n_groups: int) -> int:
        rid = self.store.create_replay(run_id, settings, name=name, n_total=n_groups)
        self.store.update_replay(rid, status="running", started_at=time.time(), pid=os.getpid(),
                                 host=socket.gethostname())
        return int(rid)

    def write_group(self, replay_id: int, group: StoredGroup, result: Any) -> None:
        """``result``: a GroupResult whose answers are in ``group.answers`` order."""
        self.store.write_replay_group(replay_id, group.id, result, [a.id for a in group.answers])

    def finish_replay(self, replay_id: int, status: str, summary: dict[str, Any] | None,
                      cause: str | None = None) -> None:
        self.store.update_replay(replay_id, status=status, ended_at=time.time(), summary=summary, cause=cause)

    def delete_replay(self, replay_id: int) -> None:
        self.store.delete_replay(replay_id)

    def get_replay(self, replay_id: int) -> dict[str, Any]:
        rows = self._query("SELECT r.*, runs.name AS run_name FROM replays r LEFT JOIN runs ON runs.id = r.run_id"
                           " WHERE r.id = ?", (int(replay_id),))
        if not rows:
            raise StoreError(f"no replay with id {replay_id} in {self.path}",
                             hint="list replays with: ropd-tui --headless replay RUN --list")
        return _replay_row(rows[0])

    def list_replays(self, run_id: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT r.*, runs.name AS run_name FROM replays r LEFT JOIN runs ON runs.id = r.run_id"
        if run_id is None:
            rows = self._query(sql + " ORDER BY r.id DESC")
        else:
            rows = self._query(sql + " WHERE r.run_id = ? ORDER BY r.id DESC", (int(run_id),))
        return [_replay_row(r) for r in rows]

    def replay_results(self, replay_id: int) -> list[dict[str, Any]]:
        return self.store.replay_results(replay_id)

    # ------------------------------------------------------------------ judge cache
    def cache_get(self, request_sha: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM judge_cache WHERE request_sha = ?", (request_sha,))
        return dict(rows[0]) if rows else None

    def cache_put(self, request_sha: str, *, model: str | None, role: str | None, reply: str,
                  prompt_tokens: int | None, completion_tokens: int | None, latency_s: float | None,
                  finish_reason: str | None = None, response_format: str | None = None) -> None:
        with self.store.write_transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO judge_cache (request_sha, model, role, reply, prompt_tokens,"
                " completion_tokens, latency_s, created_at, finish_reason, response_format)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (request_sha, model, role, reply, prompt_tokens, completion_tokens, latency_s, time.time(),
                 finish_reason, response_format))

    def cache_size(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM judge_cache")[0][0])


def _stored_group(d: dict[str, Any]) -> StoredGroup:

    rub = d.get("rubric")
    rubric = None
    if rub and rub.get("criteria"):
        rubric = Rubric(criteria=[Criterion(id=c.get("key") or f"c{i + 1}", text=c["text"], points=int(c["points"]),
                                            category=c.get("category") or "") for i, c in enumerate(rub["criteria"])],
                        schema_version=rub.get("schema_version") or "ropd.rubric.v1",
                        maximum_score=rub.get("maximum_score"))
    answers = []
    for a in d.get("answers") or []:
        vs = a.get("verdicts")
        answers.append(StoredAnswer(
            id=a["id"], kind=a["kind"], index=a["index"], text=a["text"], pool_position=a.get("pool_position"),
            reward=a.get("reward"), correct=a.get("correct"),
            verdicts=None if vs is None or any(v is None for v in vs) else [bool(v) for v in vs]))
    return StoredGroup(
        id=d["id"], run_id=d["run_id"], attempt=d["attempt"], step=d["step"], group_index=d["group_index"],
        question=d.get("question") or "", prompt=d.get("prompt"), prompt_hash=d.get("prompt_hash") or "",
        ground_truth=d.get("ground_truth"), status=d["status"], failure_stage=d.get("failure_stage"),
        failure_cause=d.get("failure_cause"), template_versions=d.get("template_versions") or {},
        rubric=rubric, answers=answers)


def _replay_row(row) -> dict[str, Any]:
    d = dict(row)
    d["settings"] = json.loads(d.get("settings_json") or "{}")
    d["summary"] = json.loads(d["summary_json"]) if d.get("summary_json") else None
    return d
