"""Full-text search over one run: criterion texts, student and teacher answers, raw judge replies.

The index is SQLite FTS5, one external-content table per source (``criteria_fts``, ``answers_fts``,
``judge_calls_fts``), created by schema migration 4 through sqlite-utils (which indexed the rows an
older store already had). New rows are indexed on demand, not while the trainer writes a step (that cost
a full-size step write +61% in bulk, +308% with per-row triggers; bench/search.py): :func:`refresh_index` indexes, in bulk and in short
write transactions, every row above ``search_index_state.indexed_upto``, and :meth:`RunStore.search`
calls it before searching. Delete/update triggers keep already indexed rows right.

Queries use the FTS5 syntax (words, ``"phrases"``, ``prefix*``, ``AND`` / ``OR`` / ``NOT``,
``NEAR(a b, 5)``) with Porter stemming (``units`` finds ``unit``); a query that is not valid syntax
raises :class:`~engine.errors.SearchQueryError` (``literal=True`` searches the words as typed).

Order and paging: each source is read in rowid order, which is write order and so step order within a
run (a resumed run rewrites every step from the resume point, so it stays ordered). That lets a page
stop after ``limit`` matches instead of sorting every match of a common word: a page is the ``limit``
earliest matches over the sources, listed by step, prompt and kind; the page's cursor remembers where
each source stopped, so paging visits every match exactly once.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from engine.errors import SearchQueryError

KINDS = ("criterion", "student", "teacher", "reply")
INDEXED = (("criteria", "text", "id"), ("answers", "text", "id"), ("judge_calls", "raw_reply", "seq"))
REFRESH_CHUNK = 2000  # rows per write transaction while indexing (tens of ms: a trainer never waits long)
OPEN, CLOSE, ELLIPSIS = "\ue000", "\ue001", "…"  # private-use marks around matched terms in snippets
SNIPPET_TOKENS = 24
MAX_QUERY_CHARS = 1000
TIMEOUT_S = 10.0  # a query still running after this (e.g. "a*" on a huge store) is stopped with a message
CHECK_EVERY = 10_000  # SQLite VM instructions between two looks at the clock

SYNTAX_HELP = ('words, "exact phrases", prefix*, AND / OR / NOT between terms, NEAR(a b, 5); '
               'put text in double quotes to search it as written')


@dataclass(frozen=True)
class _Source:
    name: str  # cursor key
    fts: str
    table: str
    id_col: str
    kinds: tuple[str, ...]
    select: str  # kind rank, label and index expressions over the base table alias ``t``


_SOURCES = (
    _Source("criterion", "criteria_fts", "criteria", "id", ("criterion",),
            "0, coalesce(t.crit_key, 'c' || (t.position + 1)), t.position"),
    _Source("answer", "answers_fts", "answers", "id", ("student", "teacher"),
            "CASE t.kind WHEN 'student' THEN 1 ELSE 2 END,"
            " CASE t.kind WHEN 'student' THEN 'S' ELSE 'T' END || (t.idx + 1), t.idx"),
    _Source("reply", "judge_calls_fts", "judge_calls", "seq", ("reply",), "3, t.role || ' reply', NULL"),
)
_KIND_OF_RANK = {0: "criterion", 1: "student", 2: "teacher", 3: "reply"}


@dataclass
class SearchHit:
    """One matching text: where it is (step, prompt, kind, item) and a snippet split into
    ``(text, matched)`` parts (untrusted model text: render each part literally)."""

    step: int
    group_index: int
    kind: str  # criterion | student | teacher | reply
    item: str  # "c3", "S2", "T1", "verifier reply"
    index: int | None  # answer index (student/teacher) or criterion position; None for replies
    id: int  # row id in criteria / answers / judge_calls
    parts: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def prompt(self) -> int:
        """1-based, as the inspector numbers prompts."""
        return self.group_index + 1

    @property
    def snippet(self) -> str:
        return "".join(p for p, _ in self.parts)

    @property
    def matches(self) -> list[tuple[int, int]]:
        """[start, end) offsets of the matched terms in :attr:`snippet`."""
        out, pos = [], 0
        for text, hit in self.parts:
            if hit:
                out.append((pos, pos + len(text)))
            pos += len(text)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "prompt": self.prompt, "group_index": self.group_index, "kind": self.kind,
                "item": self.item, "index": self.index, "id": self.id, "snippet": self.snippet,
                "matches": [list(m) for m in self.matches]}


@dataclass
class SearchPage:
    query: str
    kinds: tuple[str, ...]
    hits: list[SearchHit]
    cursor: dict[str, int] | None  # pass as ``after`` for the next page; None: no more matches


def pending(c: sqlite3.Connection) -> int:
    """Rows written since the index was last brought up to date."""
    n = 0
    for table, _, key in INDEXED:
        n += c.execute(f"SELECT count(*) FROM {table} WHERE {key} > (SELECT indexed_upto FROM search_index_state"
                       " WHERE source = ?)", (table,)).fetchone()[0]
    return n


def refresh_index(db: Any, *, chunk: int = REFRESH_CHUNK, progress: Callable[[int, int], None] | None = None) -> int:
    """Index every row written since the last refresh; returns how many. ``db`` is the store's
    :class:`engine.store.db.Connection`; each chunk of ``chunk`` rows is one write transaction (inside a
    caller's transaction it joins it). ``progress(done, total)`` after each chunk."""
    with db.read() as c:
        total = pending(c)
    done = 0
    if not total:
        return 0
    for table, column, key in INDEXED:
        while True:
            with db.write() as c:  # read the state inside the lock: another process may have indexed meanwhile
                n, hi = c.execute(f"SELECT count(*), max({key}) FROM (SELECT {key} FROM {table} WHERE {key} >"
                                  " (SELECT indexed_upto FROM search_index_state WHERE source = ?)"
                                  f" ORDER BY {key} LIMIT ?)", (table, chunk)).fetchone()
                if not n:
                    break
                c.execute(f'INSERT INTO "{table}_fts" (rowid, "{column}") SELECT {key}, "{column}" FROM {table}'
                          f" WHERE {key} > (SELECT indexed_upto FROM search_index_state WHERE source = ?)"
                          f" AND {key} <= ?", (table, hi))
                c.execute("UPDATE search_index_state SET indexed_upto = ? WHERE source = ?", (hi, table))
            done += n
            if progress:
                progress(min(done, total), max(total, done))
            if n < chunk:
                break
    return done


def normalize_kinds(kinds: Iterable[str] | str | None) -> tuple[str, ...]:
    if kinds is None:
        return KINDS
    if isinstance(kinds, str):
        kinds = [kinds]
    out = tuple(dict.fromkeys(kinds))
    bad = [k for k in out if k not in KINDS]
    if bad or not out:
        raise SearchQueryError(f"unknown search kind {', '.join(map(repr, bad)) or '(none)'}",
                               hint=f"use one of: {', '.join(KINDS)}")
    return out


def literal_query(text: str) -> str:
    """Each whitespace-separated word as an FTS5 string (inner quotes doubled): matches the words as
    typed, in any order, with no operators."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in text.split())


def prepare_query(query: str, literal: bool) -> str:
    q = (query or "").strip()
    if not q:
        raise SearchQueryError("the search query is empty", hint=f"type what to look for: {SYNTAX_HELP}")
    if len(q) > MAX_QUERY_CHARS:
        raise SearchQueryError(f"the search query is {len(q)} characters long (at most {MAX_QUERY_CHARS})",
                               hint="search for a few distinctive words")
    return literal_query(q) if literal else q


def _query_error(query: str, err: sqlite3.Error) -> SearchQueryError | None:
    """The user's mistake behind an FTS5 error, or None when the error is not about the query."""
    msg = str(err)
    low = msg.lower()
    if "unterminated string" in low:
        why = "a double quote is not closed"
    elif low.startswith("fts5: syntax error"):
        near = msg.split("near", 1)[1].strip() if "near" in msg else ""
        if near in ('""', ""):
            why = "it ends too early (an operator, '(' or NEAR without what should follow)"
        elif near.strip('"') in ("AND", "OR", "NOT"):
            op = near.strip('"')
            why = f"{op} needs a term on each side (to find the word itself, write \"{op.lower()}\")"
        else:
            why = f"syntax error near {near}"
    elif low.startswith("no such column"):
        why = (f"'{msg.split(':', 1)[1].strip()}' followed by ':' or after '-' reads as a column filter"
               " (the texts have no such column)")
    elif low.startswith("unknown special query"):
        why = "'*' needs a word before it (prefix*)"
    elif "fts5" in low:
        why = msg
    else:
        return None
    return SearchQueryError(f"the search query {query!r} is not valid full-text search syntax: {why}",
                            hint=SYNTAX_HELP + "; or search the words literally (--literal, or ctrl+l in the TUI)")


def _run_groups(c: sqlite3.Connection, run_id: int, attempt: int) -> tuple[list[int], list[int]]:
    """Seqs of the run's first and last groups (at most 20 each)."""
    first, last = ([r[0] for r in c.execute(f"SELECT seq FROM groups WHERE run_id=? AND attempt=? ORDER BY seq {order}"
                                            " LIMIT 20", (run_id, attempt))] for order in ("ASC", "DESC"))
    return first, last


def _bounds(c: sqlite3.Connection, src: _Source, run_id: int, groups: tuple[list[int], list[int]]
            ) -> tuple[int, int] | None:
    """Row ids of ``src`` that can belong to the run (None: the run has no groups). Rows are written
    group by group with growing ids (``step_writer``'s id allocator), so the run's first (last) groups
    in write order hold its smallest (largest) ids; where those groups have no such rows, the bound stays
    open. Keeps a search of one run from walking through the matches of every other run in the store."""
    if not groups[0]:
        return None
    if src.table == "judge_calls":
        lo = c.execute("SELECT min(seq) FROM judge_calls WHERE run_id=?", (run_id,)).fetchone()[0]
        hi = c.execute("SELECT max(seq) FROM judge_calls WHERE run_id=?", (run_id,)).fetchone()[0]
        return (lo, hi) if lo is not None else None
    out = []
    for agg, seqs, open_end in (("min", groups[0], 0), ("max", groups[1], 2 ** 63 - 1)):
        v = c.execute(f"SELECT {agg}({src.id_col}) FROM {src.table}"
                      f" WHERE group_id IN ({','.join('?' * len(seqs))})", seqs).fetchone()[0]
        out.append(open_end if v is None else v)
    return out[0], out[1]


def search(c: sqlite3.Connection, run_id: int, attempt: int, query: str, kinds: Iterable[str] | str | None = None,
           *, limit: int = 50, after: dict[str, int] | None = None, literal: bool = False,
           timeout_s: float = TIMEOUT_S) -> SearchPage:
    """The first ``limit`` matches of ``query`` in the run's ``attempt`` (after the cursor ``after``)."""
    kinds = normalize_kinds(kinds)
    fts_query = prepare_query(query, literal)
    limit = max(1, int(limit))
    after = dict(after or {})
    deadline = time.monotonic() + timeout_s
    timed_out = False

    def stop() -> int:
        nonlocal timed_out
        timed_out = time.monotonic() > deadline
        return 1 if timed_out else 0

    c.set_progress_handler(stop, CHECK_EVERY)
    try:
        rows: list[tuple] = []  # (step, gi, rank, id, label, index, source)
        fetched: dict[str, int] = {}
        sources = [(src, [k for k in src.kinds if k in kinds]) for src in _SOURCES]
        sources = [(src, wanted) for src, wanted in sources if wanted]
        for src, _ in sources:  # a syntax error is reported even when the run has nothing to search
            c.execute(f"SELECT 1 FROM {src.fts} WHERE {src.fts} MATCH ? AND rowid = 0", (fts_query,)).fetchall()
        groups = _run_groups(c, run_id, attempt)
        for src, wanted in sources:
            bounds = _bounds(c, src, run_id, groups)
            if bounds is None:
                continue  # no such rows in the run: nothing to find
            lo, hi = bounds
            start = max(lo, after.get(src.name, lo - 1) + 1)
            where = [f"{src.fts} MATCH ?", f"f.rowid BETWEEN ? AND ?", "g.run_id = ?", "g.attempt = ?"]
            params: list[Any] = [fts_query, start, hi, run_id, attempt]
            if src.table == "answers" and len(wanted) == 1:
                where.append("t.kind = ?")
                params.append(wanted[0])
            sql = (f"SELECT g.step, g.group_index, {src.select}, t.{src.id_col}"
                   f" FROM {src.fts} f JOIN {src.table} t ON t.{src.id_col} = f.rowid"
                   f" JOIN groups g ON g.seq = t.group_id WHERE {' AND '.join(where)}"
                   f" ORDER BY f.rowid LIMIT ?")
            got = c.execute(sql, (*params, limit + 1)).fetchall()
            fetched[src.name] = len(got)
            rows += [(r[0], r[1], r[2], r[5], r[3], r[4], src.name) for r in got]
        rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        page = rows[:limit]
        more = len(rows) > limit or any(n > limit for n in fetched.values())
        cursor: dict[str, int] | None = None
        if more:
            cursor = dict(after)
            for r in page:
                cursor[r[6]] = max(cursor.get(r[6], 0), r[3])
        snippets = _snippets(c, fts_query, page)
    except sqlite3.OperationalError as err:
        if timed_out or "interrupted" in str(err).lower():
            raise SearchQueryError(f"the search for {query!r} took longer than {timeout_s:.0f} s and was stopped",
                                   hint="use more distinctive words (a short prefix* matches too much)") from None
        problem = _query_error(query, err)
        if problem is None:
            raise
        raise problem from None
    finally:
        c.set_progress_handler(None, 0)
    hits = [SearchHit(step=r[0], group_index=r[1], kind=_KIND_OF_RANK[r[2]], item=str(r[4]), index=r[5], id=r[3],
                      parts=split_marked(snippets.get((r[6], r[3]), ""))) for r in page]
    return SearchPage(query=query, kinds=kinds, hits=hits, cursor=cursor)


def _snippets(c: sqlite3.Connection, fts_query: str, page: list[tuple]) -> dict[tuple[str, int], str]:
    out: dict[tuple[str, int], str] = {}
    for src in _SOURCES:
        ids = [r[3] for r in page if r[6] == src.name]
        if not ids:
            continue
        sql = (f"SELECT rowid, snippet({src.fts}, 0, ?, ?, ?, {SNIPPET_TOKENS}) FROM {src.fts}"
               f" WHERE {src.fts} MATCH ? AND rowid IN ({','.join('?' * len(ids))})")
        for rowid, text in c.execute(sql, (OPEN, CLOSE, ELLIPSIS, fts_query, *ids)):
            out[(src.name, rowid)] = text or ""
    return out


_SPACE = re.compile(r"\s+")


def split_marked(snippet: str) -> list[tuple[str, bool]]:
    """An FTS5 snippet with OPEN/CLOSE marks as ``[(text, matched)]``, whitespace runs folded to one space
    (a snippet is shown on one line)."""
    parts: list[tuple[str, bool]] = []
    matched = False
    for piece in re.split(f"([{OPEN}{CLOSE}])", snippet):
        if piece == OPEN:
            matched = True
        elif piece == CLOSE:
            matched = False
        elif piece:
            text = _SPACE.sub(" ", piece)
            if parts and parts[-1][1] == matched:
                parts[-1] = (parts[-1][0] + text, matched)
            else:
                parts.append((text, matched))
    if parts:
        parts[0] = (parts[0][0].lstrip(), parts[0][1])
        parts[-1] = (parts[-1][0].rstrip(), parts[-1][1])
    return [p for p in parts if p[0]]
