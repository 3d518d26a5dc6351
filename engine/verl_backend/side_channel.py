"""The scored-groups side channel: one JSON line per GroupResult (and per gatherer event), appended by
the group gatherer on the launch node and tailed by the launcher, which writes them into the run store.

A file (not Ray object transfer) keeps the store writer independent of Ray: groups survive a launcher
restart and the ingest logic is testable without a cluster.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from engine.types import AnswerResult, Criterion, GroupResult, JudgeCall, Rubric, to_jsonable


def group_to_record(group: GroupResult, *, step: int | None) -> dict[str, Any]:
    return {"type": "group", "step": step, "group": to_jsonable(group)}


def event_record(kind: str, message: str, *, step: int | None) -> dict[str, Any]:
    """A run event (e.g. a ``warning``) for the run store's event list."""
    return {"type": "event", "kind": kind, "message": message, "step": step}


def group_from_dict(d: dict[str, Any]) -> GroupResult:
    """Rebuild a GroupResult (with its rubric, answers and judge calls) from :func:`to_jsonable` output."""
    d = dict(d)
    rubric = d.pop("rubric", None)
    if rubric is not None:
        rubric = dict(rubric)
        rubric["criteria"] = [Criterion(**c) for c in rubric.get("criteria", [])]
        rubric = Rubric(**rubric)
    answers = [AnswerResult(**a) for a in d.pop("answers", []) or []]
    calls = [JudgeCall(**c) for c in d.pop("calls", []) or []]
    return GroupResult(rubric=rubric, answers=answers, calls=calls, **d)


class SideChannelWriter:
    """Appends records; each line is written with one ``write`` call and flushed at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fp = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._fp.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._fp.flush()

    def close(self) -> None:
        self._fp.close()


class JsonlTail:
    """Reads the complete lines appended to a JSONL file since the last call (a partial last line waits).

    Works on a file that does not exist yet, and starts over when the file is truncated or replaced
    (verl's file logger truncates on every start).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._offset = 0
        self._ino: int | None = None
        self.bad_lines = 0

    def read(self) -> Iterator[dict[str, Any]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if self._ino is not None and (st.st_ino != self._ino or st.st_size < self._offset):
            self._offset = 0
        self._ino = st.st_ino
        if st.st_size <= self._offset:
            return
        with open(self.path, "rb") as fp:
            fp.seek(self._offset)
            chunk = fp.read(st.st_size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for line in chunk[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(rec, dict):
                yield rec
