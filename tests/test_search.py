"""Full-text search over a run (FTS5 kept by sqlite-utils triggers), the SQL views, the headless
``search`` command, and readers with the SQLite tools never blocking the trainer's writes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fixtures_store import build_store, make_group
from engine.errors import SearchQueryError
from engine.store import MIGRATIONS, RunStore, schema_version
from engine.store import search as search_mod
from ropd_tui.cli import main

FTS_TABLES = ("criteria_fts", "answers_fts", "judge_calls_fts")
SQLITE_UTILS = Path(sys.executable).with_name("sqlite-utils")


def planted_groups(step: int, *, marker: str = "") -> list:
    """Two groups whose prompt 2 holds known words: a criterion about furlongs, a student who cannot, a
    teacher who weighs in kilograms, and a verifier reply mentioning a pineapple."""
    groups = [make_group(step, gi, inject=False) for gi in range(2)]
    g = groups[1]
    g.rubric.criteria[0].text = f"Mentions the furlongs of measurement {marker}".strip()
    students = [a for a in g.answers if a.kind == "student"]
    teachers = [a for a in g.answers if a.kind == "teacher"]
    students[1].text = "I cannot solve this, sorry."
    teachers[0].text = "The parcel weighs 3 kilograms."
    groups[0].calls[1].raw_reply = '{"answers": [{"note": "a pineapple [bold]x[/]"}]}'
    return groups


@pytest.fixture
def planted(tmp_path):
    store = RunStore(tmp_path / "ropd.db")
    rec = store.create_run("planted", "embedded", {})
    other = store.create_run("other", "embedded", {})
    for step in range(3):
        store.write_step(rec.id, step, {"loss": 1.0}, planted_groups(step))
        store.write_step(other.id, step, {"loss": 1.0}, planted_groups(step, marker="elsewhere"))
    yield store, rec.id, other.id
    store.close()


def brute_force(store: RunStore, run_id: int, query: str) -> list[tuple]:
    """Every match of ``query`` in the run, by a full scan (the reference the paged search must equal)."""
    store.refresh_search_index()
    c = store.connection
    rows = []
    for fts, table, idc, rank in (("criteria_fts", "criteria", "id", "0"),
                                  ("answers_fts", "answers", "id", "CASE t.kind WHEN 'student' THEN 1 ELSE 2 END"),
                                  ("judge_calls_fts", "judge_calls", "seq", "3")):
        rows += c.execute(f"SELECT g.step, g.group_index, {rank}, t.{idc} FROM {table} t JOIN groups g"
                          f" ON g.seq = t.group_id WHERE g.run_id = ? AND t.{idc} IN"
                          f" (SELECT rowid FROM {fts} WHERE {fts} MATCH ?)", (run_id, query)).fetchall()
    return sorted(tuple(r) for r in rows)


def test_search_finds_every_kind_by_step_prompt_and_kind(planted):
    store, run_id, _ = planted
    page = store.search(run_id, "furlongs OR cannot OR kilograms OR pineapple")
    got = [(h.step, h.prompt, h.kind, h.item) for h in page.hits]
    per_step = [("criterion", "c1"), ("student", "S2"), ("teacher", "T1")]
    expected = []
    for step in range(3):
        expected.append((step, 1, "reply", "verifier reply"))
        expected += [(step, 2, kind, item) for kind, item in per_step]
    assert got == expected and page.cursor is None
    unit = store.search(run_id, "furlong").hits  # Porter stemming: "furlong" finds "furlongs"
    assert [(h.step, h.kind) for h in unit] == [(0, "criterion"), (1, "criterion"), (2, "criterion")]
    assert unit[0].parts == [("Mentions the ", False), ("furlongs", True), (" of measurement", False)]
    assert unit[0].snippet[slice(*unit[0].matches[0])] == "furlongs"
    phrase = store.search(run_id, '"I cannot"')
    assert [(h.kind, h.item, h.index) for h in phrase.hits] == [("student", "S2", 1)] * 3
    assert store.search(run_id, '"I cannot"', kinds=["teacher", "criterion", "reply"]).hits == []
    reply = store.search(run_id, "pineapple", kinds="reply").hits[0]
    assert reply.kind == "reply" and "[bold]x[/]" in reply.snippet  # model text kept literally


def test_search_stays_inside_the_run_and_its_attempt(planted):
    store, run_id, other_id = planted
    assert len(store.search(other_id, "elsewhere").hits) == 3
    assert store.search(run_id, "elsewhere").hits == []
    store.start_attempt(run_id)
    assert store.search(run_id, "furlongs").hits == []  # the new attempt has no steps yet
    assert len(store.search(run_id, "furlongs", attempt=1).hits) == 3


def test_pages_visit_every_match_once_in_step_order(tmp_path):
    path = tmp_path / "ropd.db"
    build_store(path)
    with RunStore(path) as store:
        run_id = store.get_run("demo-baseline").id
        for query in ("answer", "student OR final", "unit*", "bold"):
            want = brute_force(store, run_id, query)
            seen, after = [], None
            while True:
                page = store.search(run_id, query, limit=7, after=after)
                rank = {"criterion": 0, "student": 1, "teacher": 2, "reply": 3}
                seen += [(h.step, h.group_index, rank[h.kind], h.id) for h in page.hits]
                if page.cursor is None:
                    break
                after = page.cursor
            assert seen == want, query
            assert len(want) > 7


def test_steps_are_indexed_on_demand_not_while_the_trainer_writes(planted):
    store, run_id, _ = planted
    before = store.search_backlog()  # the fixture's steps: written, not searched yet
    assert before > 0
    store.write_step(run_id, 3, {}, planted_groups(3))
    n_rows = 2 * (2 + 6) + sum(len(g.rubric.criteria) for g in planted_groups(3))  # calls, answers, criteria
    assert store.search_backlog() == before + n_rows  # the step's write indexed nothing
    assert [h.step for h in store.search(run_id, "kilograms").hits] == [0, 1, 2, 3]  # the search caught up
    assert store.search_backlog() == 0
    seen = []
    assert store.refresh_search_index(progress=lambda done, total: seen.append((done, total))) == 0 and seen == []


def test_index_follows_rewritten_steps_and_deleted_runs(planted):
    store, run_id, other_id = planted
    store.refresh_search_index()
    store.write_step(run_id, 3, {}, planted_groups(3))  # step 3 not indexed yet when step 1 is rewritten
    fresh = planted_groups(1)
    fresh[1].rubric.criteria[0].text = "Quotes the thermometer reading"
    store.write_step(run_id, 1, {"loss": 0.5}, fresh)  # a resumed run rewrites step 1
    assert [h.step for h in store.search(run_id, "furlongs").hits] == [0, 2, 3]
    assert [h.step for h in store.search(run_id, "thermometer").hits] == [1]
    store.write_step(other_id, 3, {}, planted_groups(3, marker="elsewhere"))  # deleted before it is indexed
    store.delete_run(other_id)
    assert store.search(run_id, "elsewhere").hits == []
    c = store.connection
    for fts in FTS_TABLES:
        c.execute(f"INSERT INTO {fts}({fts}) VALUES('integrity-check')")  # raises if index and rows differ
    n_indexed = c.execute("SELECT count(*) FROM answers_fts WHERE answers_fts MATCH 'answer OR cannot OR parcel'")
    assert n_indexed.fetchone()[0] == c.execute("SELECT count(*) FROM answers").fetchone()[0]


def test_an_old_store_is_indexed_by_its_migration(tmp_path):
    """A store written before search existed (schema 4: no search index, no views) opens, migrates and
    finds what was written before."""
    # the rows are written by today's step writer into a current store, then copied (the columns both
    # schemas have) into a store built only up to schema 4
    src = tmp_path / "src.db"
    with RunStore(src) as current:
        run = current.create_run("old", "embedded", {})
        for step in range(2):
            current.write_step(run.id, step, {"loss": 1.0}, planted_groups(step))
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:4]:
        migration(conn)
    conn.execute("PRAGMA user_version=4")
    conn.execute("ATTACH DATABASE ? AS src", (str(src),))
    tables = [r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type='table'"
                                         " AND name NOT LIKE 'sqlite_%'")]
    conn.execute("BEGIN")
    for table in tables:
        mine = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
        theirs = {r[1] for r in conn.execute(f"PRAGMA src.table_info({table})")}
        cols = ", ".join(c for c in mine if c in theirs)
        if cols:
            conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM src.{table}")
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE src")
    conn.close()
    with RunStore(path) as store:
        c = store.connection
        assert c.execute("PRAGMA user_version").fetchone()[0] == schema_version()
        assert [(h.step, h.kind) for h in store.search(1, "kilograms").hits] == [(0, "teacher"), (1, "teacher")]
        for fts in FTS_TABLES:
            c.execute(f"INSERT INTO {fts}({fts}) VALUES('integrity-check')")
        store.write_step(1, 2, {}, planted_groups(2))  # and new steps are indexed as they come
        assert len(store.search(1, "kilograms").hits) == 3


@pytest.mark.parametrize("query, why", [
    ('"I cannot', "double quote is not closed"),
    ("AND", "AND needs a term on each side"),
    ("units AND", "ends too early"),
    ("NOT units", "NOT needs a term"),
    ("*", "needs a word before it"),
    ("foo:bar", "column filter"),
    ("don't", "syntax error near"),
    ("", "empty"),
    ("   ", "empty"),
    ("x" * 1001, "at most 1000"),
])
def test_bad_queries_say_what_is_wrong(planted, query, why):
    store, run_id, _ = planted
    with pytest.raises(SearchQueryError) as err:
        store.search(run_id, query)
    assert why in str(err.value) and err.value.hint


@pytest.mark.parametrize("query", ['"I cannot', "AND", "don't", "units:", "I cannot"])
def test_literal_queries_search_the_words_as_typed(planted, query):
    store, run_id, _ = planted
    store.search(run_id, query, literal=True)  # never a syntax error
    assert [h.kind for h in store.search(run_id, '"I cannot', literal=True).hits] == ["student"] * 3


def test_unknown_kind_and_a_query_running_too_long(planted, monkeypatch):
    store, run_id, _ = planted
    monkeypatch.setattr(search_mod, "CHECK_EVERY", 1)  # look at the clock at once: the deadline has passed
    with pytest.raises(SearchQueryError, match="unknown search kind"):
        store.search(run_id, "furlongs", kinds=["rubric"])
    with store.read_snapshot() as c:
        with pytest.raises(SearchQueryError, match="took longer"):
            search_mod.search(c, run_id, 1, "a* OR s* OR t* OR c*", timeout_s=-1)
    assert len(store.search(run_id, "furlongs").hits) == 3  # the connection is fine afterwards


# -- headless -------------------------------------------------------------------------------------------------

def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_headless_search_table_json_and_bad_input(planted, capsys):
    store, _, _ = planted
    path = str(store.path)
    rc, out, err = run_cli(capsys, "--headless", "--store", path, "search", "planted", "kilograms OR furlongs")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["step", "prompt", "kind", "item", "match"]
    assert lines[2].split()[:4] == ["0", "2", "criterion", "c1"] and "**furlongs**" in lines[2]
    assert "**kilograms**" in lines[3] and "6 matches in run planted" in err
    rc, out, _ = run_cli(capsys, "--headless", "--store", path, "search", "planted", "cannot", "--kind", "student",
                         "--json", "--limit", "2")
    data = json.loads(out)
    assert rc == 0 and data["more"] is True and data["kinds"] == ["student"]
    assert [(h["step"], h["prompt"], h["item"]) for h in data["hits"]] == [(0, 2, "S2"), (1, 2, "S2")]
    hit = data["hits"][0]
    assert hit["snippet"][hit["matches"][0][0]:hit["matches"][0][1]] == "cannot"
    for query in ('"I cannot', "AND"):
        rc, out, err = run_cli(capsys, "--headless", "--store", path, "search", "planted", query)
        assert rc == 2 and out == "" and err.startswith("error: the search query") and "Traceback" not in err
    rc, _, err = run_cli(capsys, "--headless", "--store", path, "search", "planted", "don't", "--literal")
    assert rc == 0 and "no matches" in err
    rc, _, err = run_cli(capsys, "--headless", "--store", path, "search", "nope", "units")
    assert rc == 2 and "no run 'nope'" in err


def test_headless_search_never_lets_model_text_drive_the_terminal(planted, capsys):
    store, run_id, _ = planted
    g = planted_groups(5)
    g[1].rubric.criteria[0].text = "furlongs \x1b[2J\x1b]0;pwned\x07 cleared"
    store.write_step(run_id, 5, {}, g)
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(store.path), "search", "planted", "cleared")
    assert rc == 0 and "\x1b" not in out and "\x07" not in out and "cleared" in out


# -- SQL views and the SQLite tools ---------------------------------------------------------------------------------

def test_views_give_the_run_step_prompt_kind_reward_criterion_and_points(tmp_path):
    path = tmp_path / "ropd.db"
    build_store(path)
    with RunStore(path) as store:
        c = store.connection
        for view, table in (("v_answers", "answers"), ("v_criteria", "criteria"), ("v_verdicts", "verdicts")):
            assert c.execute(f"SELECT count(*) FROM {view}").fetchone()[0] == \
                c.execute(f"SELECT count(*) FROM {table}").fetchone()[0], view
        cols = {v: [r[1] for r in c.execute(f"PRAGMA table_info({v})")] for v in ("v_answers", "v_criteria", "v_verdicts")}
        for needed in ("run", "attempt", "current", "step", "prompt", "kind", "reward", "correct", "checker",
                       "truncated", "clipped", "text"):
            assert needed in cols["v_answers"], needed
        for needed in ("run", "step", "prompt", "criterion", "points", "category", "teacher_pass_rate"):
            assert needed in cols["v_criteria"], needed
        for needed in ("run", "step", "prompt", "kind", "reward", "criterion", "points", "passed"):
            assert needed in cols["v_verdicts"], needed
        rec = store.get_run("demo-baseline")
        g = store.step_groups(rec.id, 3)[1]
        row = c.execute("SELECT step, prompt, group_index, kind, answer_index, reward, text FROM v_answers"
                        " WHERE run = 'demo-baseline' AND current AND step = 3 AND prompt = 2 ORDER BY answer_id"
                        " LIMIT 1").fetchone()
        a = g["answers"][0]
        assert tuple(row) == (3, 2, 1, a["kind"], a["index"], a["reward"], a["text"])
        passed = c.execute("SELECT passed FROM v_verdicts WHERE run = 'demo-baseline' AND step = 3 AND prompt = 2"
                           " AND answer_id = ? ORDER BY position", (a["id"],)).fetchall()
        assert [bool(p[0]) for p in passed] == a["verdicts"]


@pytest.mark.skipif(not SQLITE_UTILS.exists(), reason="the sqlite-utils command is not installed next to python")
def test_sqlite_utils_command_line_reads_the_views_and_the_search_index(planted):
    store, run_id, _ = planted
    path = str(store.path)
    out = subprocess.run([str(SQLITE_UTILS), "query", path,
                          "select step, prompt, kind, criterion, points from v_verdicts"
                          " where run = 'planted' and criterion like 'Mentions the furlongs%' and kind = 'teacher' and answer_index = 0"
                          " order by step limit 2"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert [(r["step"], r["prompt"], r["kind"]) for r in rows] == [(0, 2, "teacher"), (1, 2, "teacher")]
    def sqlite_utils_search() -> list[str]:
        out = subprocess.run([str(SQLITE_UTILS), "search", path, "answers", "kilograms", "-c", "text"],
                             capture_output=True, text=True, check=True).stdout
        return [r["text"] for r in json.loads(out)]

    store.refresh_search_index()  # what every ropd-tui search does first
    assert sqlite_utils_search() == ["The parcel weighs 3 kilograms."] * 6
    store.write_step(run_id, 3, {}, planted_groups(3))
    assert len(sqlite_utils_search()) == 6  # indexed on demand: not yet
    assert len(store.search(run_id, "kilograms").hits) == 4
    assert len(sqlite_utils_search()) == 7


READER = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, isolation_level=None)
    conn.execute("BEGIN")
    rows = conn.execute("SELECT run, step, prompt, kind, criterion, passed FROM v_verdicts ORDER BY step")
    first = rows.fetchone()  # a long query, half read: its snapshot stays open
    print("holding", flush=True)
    sys.stdin.readline()
    n = 1 + sum(1 for _ in rows)
    before = conn.execute("SELECT max(step) FROM v_verdicts").fetchone()[0]
    conn.execute("COMMIT")
    after = conn.execute("SELECT max(step) FROM v_verdicts").fetchone()[0]
    print(n, before, after, flush=True)
""")


def test_a_reader_holding_a_long_query_does_not_block_a_step_write(planted):
    """sqlite-utils / Datasette on the store while a run trains: the read transaction keeps its snapshot
    and the trainer's step commits meanwhile (WAL)."""
    store, run_id, _ = planted
    n_before = store.connection.execute("SELECT count(*) FROM v_verdicts").fetchone()[0]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "holding"
        writer = threading.Thread(target=store.write_step, args=(run_id, 3, {"loss": 0.1}, planted_groups(3)))
        writer.start()
        writer.join(timeout=120)  # a blocked write would wait here (busy timeout), not finish
        assert not writer.is_alive(), "the step write waited for the reader"
        assert store.get_run(run_id).last_step == 3
        out, _ = reader.communicate("go\n", timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    n, before, after = out.split()
    assert int(n) == n_before and int(before) == 2 and int(after) == 3  # its snapshot, then the new step
