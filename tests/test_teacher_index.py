"""Teacher index: file format, lookups and their errors, crash safety, and the builder over real HTTP."""

from __future__ import annotations

import io
import json
import socket

import pytest

from engine.config import load_config
from engine.errors import JudgeError, TeacherIndexError
from engine.teacher.index import TeacherIndex, append_rows, build_index, make_row, read_prompts
from engine.types import prompt_hash
from loopback_server import LoopbackJudgeServer, loopback_config
from ropd_tui.cli import main as cli_main

MSGS = [{"role": "user", "content": "What is 2 + 3?"}]


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    return path


# --- reading ----------------------------------------------------------------------------------

def test_roundtrip_and_key_is_prompt_hash(tmp_path):
    path = tmp_path / "idx.jsonl"
    append_rows(path, [{"prompt": MSGS, "answers": ["5", "2 + 3 = 5\n5"], "settings": {"model": "m"}},
                       {"prompt": "plain string prompt", "answers": ["a"]}])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["key"] == prompt_hash(MSGS) and set(rows[0]) == {"key", "prompt", "answers", "settings"}
    idx = TeacherIndex.load(path)
    assert len(idx) == 2 and MSGS in idx
    assert idx.lookup(MSGS, 2) == ["5", "2 + 3 = 5\n5"]
    assert idx.lookup(MSGS, 1) == ["5"]
    assert idx.settings == {"model": "m"}


def test_string_and_single_user_message_match_each_other(tmp_path):
    path = tmp_path / "idx.jsonl"
    append_rows(path, [{"prompt": "What is 2 + 3?", "answers": ["5"]}])
    idx = TeacherIndex.load(path)
    assert idx.lookup(MSGS, 1) == ["5"]
    append_rows(path, [{"prompt": [{"role": "user", "content": "other"}], "answers": ["x"]}])
    assert TeacherIndex.load(path).lookup("other", 1) == ["x"]


def test_miss_names_prompt_file_and_fix(tmp_path):
    path = tmp_path / "idx.jsonl"
    append_rows(path, [{"prompt": MSGS, "answers": ["5"]}])
    idx = TeacherIndex.load(path)
    with pytest.raises(TeacherIndexError) as ei:
        idx.lookup([{"role": "user", "content": "How many legs does a spider have? " + "x" * 200}], 4)
    msg = str(ei.value)
    assert "How many legs does a spider have?" in msg and "..." in msg and str(path) in msg
    assert "ropd-tui --headless index build" in msg
    assert len(msg) < 600  # the long prompt is shortened


def test_fewer_answers_than_k_warns_or_fails_when_strict(tmp_path, caplog):
    path = tmp_path / "idx.jsonl"
    append_rows(path, [{"prompt": MSGS, "answers": ["5", "five"]}])
    idx = TeacherIndex.load(path)
    assert idx.lookup(MSGS, 4) == ["5", "five"]
    assert any("has 2 answer(s)" in w and "k=4" in w for w in idx.warnings)
    with pytest.raises(TeacherIndexError, match="has 2 answer"):
        idx.lookup(MSGS, 4, strict=True)
    assert idx.lookup(MSGS, 0) == []


def test_settings_mismatch_warns_not_fails(tmp_path):
    path = tmp_path / "idx.jsonl"
    append_rows(path, [{"prompt": MSGS, "answers": ["5"], "settings": {"model": "big", "temperature": 0.7}}])
    idx = TeacherIndex.load(path, expected_settings={"model": "small", "temperature": 0.7})
    assert len(idx.warnings) == 1 and "'big'" in idx.warnings[0] and "'small'" in idx.warnings[0]
    assert "temperature" not in idx.warnings[0]
    assert idx.lookup(MSGS, 1) == ["5"]


def test_missing_file_and_bad_lines(tmp_path):
    with pytest.raises(TeacherIndexError, match="not found") as ei:
        TeacherIndex.load(tmp_path / "nope.jsonl")
    assert "index build" in str(ei.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(make_row(MSGS, ["5"])) + "\n{oops\n" + json.dumps(make_row("b", ["1"])) + "\n")
    with pytest.raises(TeacherIndexError, match="line 2 is not valid JSON"):
        TeacherIndex.load(bad)
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(TeacherIndexError, match='line 1: the row has no "answers" list'):
        TeacherIndex.load(bad)


def test_partial_last_line_from_a_crash_is_ignored_and_later_rows_win(tmp_path):
    path = tmp_path / "idx.jsonl"
    append_rows(path, [{"prompt": MSGS, "answers": ["old"]}, {"prompt": MSGS, "answers": ["new", "newer"]}])
    with open(path, "ab") as f:
        f.write(b'{"key": "abc", "prompt": "half a li')
    idx = TeacherIndex.load(path)
    assert idx.lookup(MSGS, 2) == ["new", "newer"]
    assert any("incomplete" in w for w in idx.warnings)
    # the next append cuts the partial line off first, so the file stays valid JSONL
    append_rows(path, [{"prompt": "b", "answers": ["1"]}])
    assert all(json.loads(line) for line in path.read_text().splitlines())
    assert len(TeacherIndex.load(path)) == 2


def test_read_prompts_errors(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a"}\n"b"\n{"messages": [{"role": "user", "content": "c"}]}\n\n')
    assert read_prompts(p) == ["a", "b", [{"role": "user", "content": "c"}]]
    p.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(TeacherIndexError, match="line 2 is not valid JSON"):
        read_prompts(p)
    p.write_text('{"question": "a"}\n')
    with pytest.raises(TeacherIndexError, match="line 1 has no prompt"):
        read_prompts(p)


# --- building over HTTP -----------------------------------------------------------------------

@pytest.fixture
def server():
    with LoopbackJudgeServer(models=["loopback-judge"]) as srv:  # preflight lists models, no probe request
        yield srv


PROMPTS = ["What is 2 + 3?", "What is 4 * 5?", [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "What is 9 - 7?"}],
           "What is 6 + 1?", "What is 2 + 3?"]  # the last is a duplicate


def build(cfg, prompts_file, out, answers, **kw):
    return build_index(prompts_file, out, cfg.judge.teacher, answers, judge_cfg=cfg.judge, stream=io.StringIO(), **kw)


def test_build_resume_and_top_up(tmp_path, server):
    cfg = loopback_config(server)
    pf = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "sub" / "teacher.jsonl"
    s = build(cfg, pf, out, 2)
    assert (s.total, s.skipped, s.built, s.failed, s.answers_written) == (4, 0, 4, 0, 8)
    chats = [r for r in server.requests if r.role == "chat"]
    assert len(chats) == 8
    assert all(r.body.get("response_format") is None for r in chats)  # teachers answer in prose
    idx = TeacherIndex.load(out)
    a, b = idx.lookup("What is 4 * 5?", 2)
    assert a != b and a.endswith("answer is 20.") and b.endswith("answer is 20.")
    assert all(r.body["temperature"] == 0.7 for r in chats)  # judge.teacher's own default, not 0.0
    assert idx.settings["model"] == "loopback-judge" and "base_url" not in idx.settings
    # the system prompt is sent as is
    sys_req = [r for r in chats if r.messages[0]["role"] == "system"]
    assert len(sys_req) == 2
    # resume: nothing left to do, no requests
    n = len(server.requests)
    s2 = build(cfg, pf, out, 2)
    assert (s2.skipped, s2.built, s2.answers_written) == (4, 0, 0)
    assert len([r for r in server.requests[n:] if r.role == "chat"]) == 0
    # top up to 3 answers: one new request per prompt, old answers kept
    s3 = build(cfg, pf, out, 3)
    assert (s3.built, s3.answers_written) == (4, 4)
    assert all(len(TeacherIndex.load(out).lookup(p, 3)) == 3 for p in PROMPTS)


def test_build_records_failures_and_retry_fills_them(tmp_path, server):
    cfg = loopback_config(server)
    pf = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:3])
    out = tmp_path / "teacher.jsonl"
    server.reply_next("", n=1, role="chat")  # one empty teacher answer: that prompt fails
    s = build(cfg, pf, out, 2, concurrency=1)
    assert (s.built, s.failed) == (2, 1)
    assert "empty answer" in s.failures[0][1]
    assert any("run the same command again" in line for line in s.lines())
    s2 = build(cfg, pf, out, 2)
    assert (s2.skipped, s2.built, s2.failed) == (2, 1, 0)
    assert len(TeacherIndex.load(out)) == 3


def test_build_repairs_interrupted_file(tmp_path, server):
    cfg = loopback_config(server)
    pf = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:2])
    out = tmp_path / "teacher.jsonl"
    out.write_text(json.dumps(make_row("What is 2 + 3?", ["5", "5"])) + "\n" + '{"key": "x", "prompt": "What is 4')
    s = build(cfg, pf, out, 2)
    assert s.repaired and (s.skipped, s.built) == (1, 1)
    assert len(TeacherIndex.load(out)) == 2 and "incomplete" not in " ".join(TeacherIndex.load(out).warnings)


def test_dead_server_fails_fast_naming_url(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    url = f"http://127.0.0.1:{port}/v1"
    cfg = load_config(None, [f"judge.teacher.base_url={url}", "judge.teacher.model=m", "judge.max_retries=0"])
    pf = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:1])
    with pytest.raises(JudgeError) as ei:
        build(cfg, pf, tmp_path / "out.jsonl", 2)
    assert f"127.0.0.1:{port}" in str(ei.value)


def test_cli_index_build_and_show(tmp_path, server, capsys):
    pf = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "teacher.jsonl"
    rc = cli_main(["--headless", "index", "build", "--prompts", str(pf), "--out", str(out), "--teacher-model",
                   "loopback-judge", "--answers", "2", "--base-url", server.base_url, "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "4 distinct, 0 already answered, 4 built, 0 failed" in captured.out
    assert len(TeacherIndex.load(out)) == 4
    rc = cli_main(["--headless", "index", "show", str(out)])
    shown = capsys.readouterr().out
    assert rc == 0 and "4 prompts" in shown and "answers per prompt: 2 (4 prompts)" in shown
    assert "built with: " in shown and "loopback-judge" in shown and "{" not in shown  # no Python dict repr
    rc = cli_main(["--headless", "index", "show", str(out), "--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["prompts"] == 4 and d["answers_per_prompt"] == {"2": 4} and d["rows_with_other_settings"] == 0
    rc = cli_main(["--headless", "index", "build", "--prompts", str(tmp_path / "missing.jsonl"), "--out", str(out),
                   "--teacher-model", "m", "--base-url", server.base_url])
    assert rc == 2 and "prompts file not found" in capsys.readouterr().err


def test_cli_teacher_model_flag_keeps_the_sampling_temperature(tmp_path, server, capsys):
    """`index build --teacher-model M` used to build every row at temperature 0.0 (K identical answers)."""
    pf = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:2])
    out = tmp_path / "teacher.jsonl"
    rc = cli_main(["--headless", "index", "build", "--prompts", str(pf), "--out", str(out), "--teacher-model",
                   "loopback-judge", "--answers", "3", "--base-url", server.base_url, "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    chats = [r for r in server.requests if r.role == "chat"]
    assert chats and all(r.body["temperature"] == 0.7 for r in chats)
    idx = TeacherIndex.load(out)
    assert idx.settings["temperature"] == 0.7
    assert idx.identical_answer_rows() == []
    assert "identical" not in captured.out


def test_identical_answers_warn_in_build_and_show(tmp_path, server, capsys):
    server.chat_fn = lambda prompt: "12"  # a greedy teacher: the same answer every time
    pf = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:2])
    out = tmp_path / "teacher.jsonl"
    rc = cli_main(["--headless", "index", "build", "--prompts", str(pf), "--out", str(out), "--teacher-model",
                   "loopback-judge", "--answers", "2", "--base-url", server.base_url, "--temperature", "0",
                   "--quiet"])
    built = capsys.readouterr().out
    assert rc == 0
    assert "warning: 2 of 2 prompt(s)" in built and "identical teacher answers" in built
    assert "['12', '12']" in built and "temperature 0.0" in built and "--temperature 0.7" in built
    assert cli_main(["--headless", "index", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "warning: 2 of 2 prompt(s)" in shown and "K collapses to 1" in shown
    # a row with one answer, or with different answers, is not flagged
    append_rows(out, [{"prompt": PROMPTS[0], "answers": ["12", "twelve"]}, {"prompt": "solo", "answers": ["1"]}])
    assert [r["prompt"] for r in TeacherIndex.load(out).identical_answer_rows()] == [PROMPTS[1]]
