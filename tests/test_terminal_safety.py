"""Every headless command on a store seeded with hostile text: no terminal control character reaches
the output (ESC, BEL, OSC/CSI sequences, C1, bidi overrides), the text is still shown (as visible
escapes), and JSON stays exact (it decodes to the hostile text itself)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout

import pytest

import fixtures_store
from engine.store import RunStore
from ropd_tui.cli import main as cli_main
from ropd_tui.commands._output import json_text, term_safe

#: retitles the terminal (OSC 0), clears it (CSI 2J), C1 CSI, a bell, a bidi override, a carriage return
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31mRED\u202eevil\rfake-line\x00"
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class TTYBuffer(io.StringIO):
    def isatty(self) -> bool:  # the command believes it writes to a terminal
        return True


def run(*argv: str, tty: bool = False) -> tuple[int, str, str]:
    out, err = (TTYBuffer() if tty else io.StringIO()), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli_main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def hostile_store(tmp_path, monkeypatch):
    monkeypatch.setattr(fixtures_store, "INJECTION", HOSTILE)  # in questions, criteria and answers
    path = tmp_path / "runs" / "ropd.db"
    runs = (fixtures_store.FixtureRun("ok-run", "finished", 3, exit_code=0),
            fixtures_store.FixtureRun("bad-run", "failed", 2, exit_code=1, cause=f"RuntimeError: {HOSTILE}",
                                      stderr_tail=f"Traceback\nValueError: {HOSTILE}"))
    ids = fixtures_store.build_store(path, runs)
    with RunStore(path) as store:
        store.add_event(ids["bad-run"], "failed", f"judge said {HOSTILE}", step=1)
        store.write_metrics(ids["bad-run"], 1, {f"custom/{HOSTILE}": 1.0})
        text = f"Question: {{question}}\n{HOSTILE}\nAnswers: {{answers}} {{rubrics}} {{extra_scoring_instructions}}\n"
        sha = hashlib.sha256(text.encode()).hexdigest()
        store.record_template("verifier", sha, text, source=f"/tmp/{HOSTILE}.txt", run_id=ids["bad-run"], step=1)
        rec = store.get_run(ids["bad-run"])
        with open(rec.log_path, "a", encoding="utf-8") as f:
            f.write(f"model said: {HOSTILE}\n")
    index = tmp_path / "index.jsonl"
    index.write_text(json.dumps({"prompt": f"Q {HOSTILE}", "answers": [HOSTILE, "4"], "settings": {"model": HOSTILE}})
                     + "\n" + json.dumps({"prompt": f"Q2 {HOSTILE}", "answers": ["x"], "key": "0" * 64}) + "\n")
    groups = tmp_path / "groups.jsonl"
    groups.write_text(json.dumps({"prompt": f"What is 2 + 2? {HOSTILE}", "rollouts": [f"4 {HOSTILE}", "5"],
                                  "ground_truth": "4", "teacher_answers": ["2 + 2 = 4\n4", "4"]}) + "\n"
                      + json.dumps({"prompt": f"Unindexed {HOSTILE}", "rollouts": ["1", "2"]}) + "\n")
    return {"store": str(path), "sha": sha, "index": str(index), "groups": str(groups), "tmp": tmp_path}


def human_commands(h) -> list[tuple[list[str], bool]]:
    s = ["--headless", "--store", h["store"]]
    return [
        (s + ["runs"], False),
        (s + ["status", "bad-run"], False),
        (s + ["status", "ok-run"], False),
        (s + ["logs", "bad-run"], False),
        (s + ["logs", "bad-run", "-n", "2"], False),
        (s + ["metrics", "bad-run", "--list-keys"], False),
        (s + ["metrics", "bad-run", "--keys", f"custom/{HOSTILE}"], False),
        (s + ["metrics", "ok-run"], False),
        (s + ["export", "bad-run", "--format", "csv", "--what", "answers"], True),
        (s + ["export", "bad-run", "--format", "csv", "--what", "verdicts"], True),
        (s + ["export", "bad-run", "--format", "csv", "--what", "metrics"], True),
        (s + ["templates", "list"], False),
        (s + ["templates", "list", "--run", "bad-run"], False),
        (s + ["templates", "show", h["sha"][:12]], False),
        (s + ["templates", "diff", h["sha"][:12], h["sha"][:12]], False),
        (s + ["index", "show", h["index"]], False),
        (s + ["score", "--input", h["groups"], "--out", str(h["tmp"] / "scores.jsonl"),
              f"teacher.index={h['index']}", "scorer.k=2", "scorer.failure_threshold=1"], False),
        (s + ["replay", "bad-run", "--offline", "--steps", "0-1"], False),
        (s + ["replay", "--list"], False),
        (s + ["replay", "--show", "1"], False),
        (s + ["stop", "bad-run"], False),
        (s + ["status", f"no-such-{HOSTILE}"], False),  # an error message echoing the user's argument
        (s + ["templates", "show", f"/nope/{HOSTILE}"], False),
        (s + ["delete", "bad-run", "--yes"], False),
    ]


def test_every_headless_command_neutralises_control_characters(hostile_store):
    shown_escaped = 0
    for argv, tty in human_commands(hostile_store):
        rc, out, err = run(*argv, tty=tty)
        for name, text in (("stdout", out), ("stderr", err)):
            bad = UNSAFE.findall(text)
            assert not bad, f"{argv[3:]} {name} carries {bad!r}:\n{text}"
        assert "Traceback" not in err, (argv, err)
        shown_escaped += "\\x1b]0;pwned\\x07" in out + err
    assert shown_escaped >= 15  # the hostile text is shown, as visible escapes


def test_json_and_raw_outputs_stay_exact(hostile_store):
    s = ["--headless", "--store", hostile_store["store"]]
    rc, out, _ = run(*s, "status", "bad-run", "--json")
    assert rc == 0 and not UNSAFE.search(out)
    data = json.loads(out)
    assert data["cause"] == f"RuntimeError: {HOSTILE}" and data["events"][-1]["message"] == f"judge said {HOSTILE}"
    rc, out, _ = run(*s, "export", "bad-run", "--format", "jsonl", "--what", "answers", tty=True)
    assert not UNSAFE.search(out)
    assert any(HOSTILE in json.loads(line)["text"] for line in out.splitlines())
    rc, out, _ = run(*s, "export", "bad-run", "--format", "csv", "--what", "answers")  # a pipe: exact CSV
    assert HOSTILE.replace("\r", "") in out.replace("\r", "")
    rc, out, _ = run(*s, "logs", "bad-run", "--raw")
    assert f"model said: {HOSTILE}" in out
    rc, out, _ = run(*s, "templates", "show", hostile_store["sha"][:12], "--raw")
    assert HOSTILE in out


def test_term_safe_and_json_text():
    assert term_safe("a\x1b[2Jb\x07") == "a\\x1b[2Jb\\x07"
    assert term_safe("x\u202ey\x9b") == "x\\u202ey\\x9b"
    assert term_safe("line 1\r\nline 2\ttab") == "line 1\nline 2\ttab"
    assert term_safe("a\nb\tc\rd", multiline=False) == "a\\nb\\tc\\rd"
    assert term_safe(None) == ""
    for value in (HOSTILE, {"k": [HOSTILE, "é ü 中"]}):
        text = json_text(value)
        assert not UNSAFE.search(text) and json.loads(text) == value
    assert "中" in json_text("中")  # readable text is not escaped
