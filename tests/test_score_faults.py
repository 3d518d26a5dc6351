"""``score`` against faulty judges (real HTTP): dead, hung, dying mid-run, broken templates, and the
progress reporter it shares with ``replay`` and ``train``."""

from __future__ import annotations

import io
import json
import re
import socket
from pathlib import Path

import pytest

from engine.judging.client import forget_unsupported_params
from engine.progress import ProgressSnapshot
from loopback_server import HungServer, LoopbackJudgeServer
from ropd_tui.cli import main as cli_main
from ropd_tui.commands._progress import ProgressReporter

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo" / "groups.jsonl"


@pytest.fixture(autouse=True)
def _fresh_params():
    forget_unsupported_params()
    yield
    forget_unsupported_params()


def judge_args(base_url: str, *extra: str) -> list[str]:
    args = ["judge.mode=llm", "judge.retry_initial_delay_s=0.01", "judge.retry_max_delay_s=0.02",
            "judge.max_retries=2"]
    for role in ("rubricator", "verifier"):
        args += [f"judge.{role}.base_url={base_url}", f"judge.{role}.model=loopback-judge",
                 f"judge.{role}.timeout_s=2"]
    return args + list(extra)


def score(tmp_path, capsys, *args: str) -> tuple[int, str, str]:
    rc = cli_main(["--headless", "score", "--input", str(DEMO), "--out", str(tmp_path / "o.jsonl"), *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_dead_judge_is_exit_3_with_one_message_before_any_group(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, err = score(tmp_path, capsys, *judge_args(f"http://127.0.0.1:{closed_port()}/v1"))
    assert rc == 3
    assert err.count("error:") == 1 and "cannot connect" in err and "connection refused" in err
    assert "group" not in out and not (tmp_path / "o.jsonl").exists()


def test_hung_judge_is_exit_3_from_the_preflight(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with HungServer() as hung:
        rc, out, err = score(tmp_path, capsys, *judge_args(hung.base_url, "judge.rubricator.timeout_s=1",
                                                             "judge.verifier.timeout_s=1"))
    assert rc == 3 and err.count("error:") == 1 and "did not reply within" in err
    assert hung.accepted >= 1


def test_judge_dying_mid_run_is_exit_3_with_one_message_and_the_groups_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with LoopbackJudgeServer(models=["loopback-judge"]) as srv:
        srv.drop_next(10_000)  # /models still answers (the preflight passes); every judge request is dropped
        rc, out, err = score(tmp_path, capsys, *judge_args(srv.base_url))
    assert rc == 3, err
    assert err.count("error:") == 1 and "became unreachable while scoring (8 of 8 groups failed)" in err
    assert "Server disconnected" in err and "did not reply" not in err  # a dropped connection is no timeout
    assert "failed at" not in out  # the outage is said once, in the error
    assert "WARNING" not in err and "group 3 failed" not in err  # no second copy through logging
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["status"] == "failed" and r["rewards"] == [None] * len(r["rewards"])
                                     for r in records)


def test_judge_hanging_after_the_preflight_is_cut_short_by_the_circuit_breaker(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with LoopbackJudgeServer(models=["loopback-judge"]) as srv:
        srv.hang_next(10_000, seconds=60)  # /models answers (the preflight passes); no judge request ever does
        rc, out, err = score(tmp_path, capsys, *judge_args(srv.base_url, "judge.max_retries=4",
                                                             "judge.rubricator.timeout_s=1", "judge.verifier.timeout_s=1"))
        sent = len(srv.requests)
    assert rc == 3, err
    assert err.count("error:") == 1 and "became unreachable while scoring (8 of 8 groups failed)" in err
    assert re.search(r"is not answering: \d+ request\(s\) to it in a row failed with no reply", err), err
    assert "last: no reply within 1 s" in err and "circuit breaker is open" in err
    assert "raise judge.rubricator.timeout_s" in err
    assert "8 at once: judge not answering" in err  # the progress line says what happened too
    # Each of the 8 groups' first request would be sent 1 + 4 times (40 requests, 5 timeouts each) without
    # the breaker; with it, one wave of timeouts (and a few retries already under way) ends them all.
    assert sent <= 16, sent
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["status"] == "failed" for r in records)
    assert all(any(c.get("error_class") == "JudgeError:unreachable" for c in r["calls"]) for r in records)


def test_broken_verifier_template_is_exit_2_before_the_first_request(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "verifier.txt"
    bad.write_text("Judge {answers} against {rubrics} for {question} {nonsense}\n")
    with LoopbackJudgeServer() as srv:
        rc, out, err = score(tmp_path, capsys, *judge_args(srv.base_url, f"templates.verifier={bad}"))
        sent = len(srv.requests)
    assert rc == 2 and "nonsense" in err and str(bad) in err
    assert sent == 0


def test_score_shows_progress_on_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with LoopbackJudgeServer() as srv:
        rc, out, err = score(tmp_path, capsys, *judge_args(srv.base_url))
    assert rc == 0, err
    last = [ln for ln in err.splitlines() if ln.startswith("scoring  [")][-1]
    assert "8/8 groups" in last and "in flight" in last and "retried" in last and "0 failed" in last


# ---------------------------------------------------------------------------------------------
# the reporter (synthetic snapshots: no timing)

def snap(**kw) -> ProgressSnapshot:
    base = dict(label="scoring", groups_total=10, groups_done=3, groups_failed=1, requests_done=7,
                requests_failed=1, requests_retried=2, in_flight=4, elapsed_s=12.0, idle_s=1.0)
    base.update(kw)
    return ProgressSnapshot(**base)


def test_reporter_plain_lines_and_stall_warning():
    buf = io.StringIO()
    rep = ProgressReporter(buf, every_s=0.0, stall_s=30.0, tty=False)
    rep.update(snap())
    rep.update(snap(idle_s=45.0))
    rep.update(snap(idle_s=50.0))  # still stalled: warned once
    rep.update(snap(idle_s=0.5, requests_done=8))
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("scoring  [#######") and "3/10 groups (1 failed)" in lines[0]
    assert "7 done, 4 in flight, 2 retried, 1 failed" in lines[0]
    warnings = [ln for ln in lines if ln.startswith("warning: no judge request has completed for 45 s (4 in flight)")]
    assert len(warnings) == 1
    assert any(ln.startswith("judge replies resumed") for ln in lines)
    assert "\r" not in buf.getvalue()


def test_reporter_redraws_one_line_on_a_terminal():
    buf = io.StringIO()
    rep = ProgressReporter(buf, tty=True)
    rep.update(snap(), force=True)
    rep.update(snap(groups_done=4), force=True)
    rep.close(snap(groups_done=10, in_flight=0, idle_s=None))
    text = buf.getvalue()
    assert text.count("\r\x1b[K") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "10/10 groups" in text
