"""``ropd-tui --headless score`` end to end: the real CLI on the bundled demo data, and its error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.teacher.index import TeacherIndex, append_rows
from loopback_server import LoopbackJudgeServer
from ropd_tui.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo" / "groups.jsonl"


def run_cli(args, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ROPD_"))}
    env.update(env_extra or {})
    # this checkout's code, not whichever one is installed (the subprocess runs in a temp dir)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-m", "ropd_tui.cli", "--headless", "score", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def read_out(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_demo_data_offline_end_to_end(tmp_path):
    demo_groups = [json.loads(line) for line in DEMO.read_text().splitlines()]
    assert 6 <= len(demo_groups) <= 10
    assert any("teacher_answers" in g for g in demo_groups) and any("teacher_answers" not in g for g in demo_groups)

    proc = run_cli(["--input", str(DEMO), "--out", "scores.jsonl"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "judge: offline" in proc.stdout and "stand-in" in proc.stderr
    # scoring never modifies a teacher index unless asked, and says how to
    index_file = tmp_path / "runs" / "teacher_index" / "demo_math.jsonl"  # the configured default
    missing = sum("teacher_answers" not in g for g in demo_groups)
    assert not index_file.exists()
    assert (f"{missing} prompt(s) are not in the teacher index" in proc.stderr
            and "the index is unchanged; --add-to-index stores them" in proc.stderr)

    out = read_out(tmp_path / "scores.jsonl")
    assert len(out) == len(demo_groups)
    right, wrong = [], []
    for rec, src in zip(out, demo_groups):
        assert rec["status"] == "ok" and rec["judge"] == "offline" and rec["reward_mode"] == "rubric"
        assert rec["teacher_source"] == ("input" if "teacher_answers" in src else "index")
        crit = rec["rubric"]["criteria"]
        assert 4 <= len(crit) <= 12 and all(1 <= c["points"] <= 5 for c in crit)
        assert rec["rubric"]["total_points"] == sum(c["points"] for c in crit)
        n = len(src["rollouts"])
        assert len(rec["verdicts"]["rollouts"]) == n and all(len(row) == len(crit) for row in rec["verdicts"]["rollouts"])
        assert len(rec["verdicts"]["teachers"]) == 4 and len(rec["teacher_scores"]) == 4
        assert len(rec["rewards"]) == n and all(0.0 <= r <= 1.0 for r in rec["rewards"])
        # rewards are the weighted pass rate of the verdicts
        for row, reward in zip(rec["verdicts"]["rollouts"], rec["rewards"]):
            expect = sum(c["points"] for c, v in zip(crit, row) if v) / (rec["rubric"]["total_points"] + 1e-6)
            assert reward == pytest.approx(expect, abs=1e-6)
        assert len(set(rec["rewards"])) >= 2, rec["rewards"]  # rewards vary within every group
        assert {c["role"] for c in rec["calls"]} == {"rubricator", "verifier"}
        for ok, reward in zip(rec["correct"], rec["rewards"]):
            (right if ok else wrong).append(reward)
    assert sum(right) / len(right) > sum(wrong) / len(wrong) + 0.3

    # asked to, it adds them; a second run then reuses the index (same answers: same rewards)
    proc = run_cli(["--input", str(DEMO), "--out", "again.jsonl", "--add-to-index"], cwd=tmp_path)
    assert proc.returncode == 0 and f"added deterministic demo teacher answers for {missing}" in proc.stderr
    assert len(TeacherIndex.load(index_file)) == missing
    proc = run_cli(["--input", str(DEMO), "--out", "third.jsonl"], cwd=tmp_path)
    assert proc.returncode == 0 and "not in the teacher index" not in proc.stderr and "added" not in proc.stderr
    assert len(TeacherIndex.load(index_file)) == missing
    for again in ("again.jsonl", "third.jsonl"):
        assert [r["rewards"] for r in read_out(tmp_path / again)] == [r["rewards"] for r in out]


def test_llm_judge_selected_by_openai_base_url(tmp_path):
    with LoopbackJudgeServer() as srv:
        proc = run_cli(["--input", str(DEMO), "--out", "llm.jsonl", "judge.max_retries=0"], cwd=tmp_path,
                       env_extra={"OPENAI_BASE_URL": srv.base_url, "ROPD_RUBRICATOR_MODEL": "loopback-judge",
                                  "ROPD_VERIFIER_MODEL": "loopback-judge", "OPENAI_API_KEY": "sk-test-not-a-real-key"})
        roles = {r.role for r in srv.requests}
    assert proc.returncode == 0, proc.stderr
    assert "judge: LLM" in proc.stdout and "sk-test" not in proc.stdout + proc.stderr
    assert {"rubricator", "verifier"} <= roles
    out = read_out(tmp_path / "llm.jsonl")
    assert all(r["judge"] == "llm" and r["status"] in ("ok", "recovered") for r in out)
    assert all(r["template_versions"].get("verifier") for r in out)
    calls = [c for r in out for c in r["calls"]]
    assert calls and all(c["finish_reason"] == "stop" and c["response_format"] == "json_object" for c in calls)


def test_scalar_mode_and_json_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["--headless", "score", "--input", str(DEMO), "--out", "s.jsonl", "--json",
                   "scorer.reward_mode=scalar_judge"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["judge"] == "offline" and summary["groups"] == 8 and summary["failed"] == 0
    out = read_out(tmp_path / "s.jsonl")
    assert all(r["reward_mode"] == "scalar_judge" and r["rubric"] is None for r in out)
    assert all(r["judge_scores"]["rollouts"][i] / 10 == pytest.approx(r["rewards"][i]) for r in out
               for i in range(len(r["rewards"])))


def test_bad_input_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "What is 2 + 2?", "rollouts": ["4"]}) + "\n" +
                   json.dumps({"prompt": "x", "rollouts": "4"}) + "\n")
    rc = cli_main(["--headless", "score", "--input", str(bad), "--out", "o.jsonl"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl: line 2" in err and '"rollouts" must be a non-empty list' in err
    assert "Traceback" not in err
    rc = cli_main(["--headless", "score", "--input", str(tmp_path / "nope.jsonl"), "--out", "o.jsonl"])
    assert rc == 2 and "input file not found" in capsys.readouterr().err


def test_index_miss_fails_the_group_visibly_and_stops_over_threshold(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    index = tmp_path / "teacher.jsonl"
    append_rows(index, [{"prompt": "What is 2 + 2?", "answers": ["2 + 2 = 4\n4", "4", "4", "Two plus two is 4.\n4"]}])
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "What is 2 + 2?", "rollouts": ["4", "5"], "ground_truth": "4"}) + "\n" +
                   json.dumps({"prompt": "What is 3 + 3?", "rollouts": ["6", "7"], "ground_truth": "6"}) + "\n")
    rc = cli_main(["--headless", "score", "--input", str(inp), "--out", "o.jsonl", f"teacher.index={index}",
                   "scorer.failure_threshold=0.2"])
    captured = capsys.readouterr()
    assert rc == 4, captured.err
    out = read_out(tmp_path / "o.jsonl")  # written before stopping: nothing is lost
    assert out[0]["status"] == "ok" and out[0]["rewards"][0] > out[0]["rewards"][1]
    assert out[1]["status"] == "failed" and out[1]["failure_stage"] == "teacher"
    assert "What is 3 + 3?" in out[1]["failure_cause"] and str(index) in out[1]["failure_cause"]
    assert out[1]["rewards"] == [None, None]  # never a silent 0
    assert "failed to score" in captured.err
