"""Replay verification against a generated store and the loopback judge server (real HTTP)."""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from contextlib import redirect_stderr, redirect_stdout

import pytest

from engine.errors import ConfigError, JudgeError, StoreError, TemplateError, UserError
from engine.replay.runner import (ReplaySpec, list_replays, load_report, parse_reward_range, parse_steps,
                           parse_template_args, run_replay_sync)
from engine.templates.render import Template
from loopback_server import LoopbackJudgeServer
from replay_fixtures import make_store

JUDGE_ROLES = ("rubricator", "verifier")


@pytest.fixture(scope="module")
def judge_server():
    with LoopbackJudgeServer() as srv:
        yield srv


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "ropd.db"
    make_store(path, steps=2, groups=3, failed={(2, 1)}).close()
    return path


def judge_requests(srv) -> int:
    return sum(1 for r in srv.requests if r.role in JUDGE_ROLES)


def spec(srv, **kw) -> ReplaySpec:
    return ReplaySpec(run="r1", judge_model="judge-m", base_url=srv.base_url, **kw)


def test_reuse_replay_compares_old_and_new_and_is_stored(store_path, judge_server):
    before = judge_requests(judge_server)
    progress = []
    report = run_replay_sync(store_path, spec(judge_server), progress=lambda p: progress.append(p.done_groups))
    assert report.status == "done"
    assert judge_requests(judge_server) - before == 6 + 1  # one verifier call per group, one rubric for the failed group
    assert progress == sorted(progress) and progress[-1] == 6
    s = report.summary
    assert (s.groups, s.failed_groups) == (6, 0)
    # Known values (see replay_fixtures): old rewards are all 6/11; new ones 11/11, 6/11, 6/11, 0 per group.
    assert s.answers == 20  # the failed group had no old rewards
    assert s.mean_reward_old == pytest.approx(6 / 11, abs=1e-4)
    assert s.mean_reward_new == pytest.approx(23 / 44, abs=1e-4)
    assert s.mean_reward_shift == pytest.approx(-1 / 44, abs=1e-4)
    assert s.auc_old == pytest.approx(0.5)
    assert s.auc_new == pytest.approx(0.875)
    # Per group with the stored rubric: s0 c1 F->T, s3 c1 T->F and c4 T->F, each teacher c1 F->T.
    assert s.verdict_flips == 5 * 7
    assert s.verdict_agreement == pytest.approx(25 / 32)
    flips = {c.criterion_id: (c.true_to_false, c.false_to_true) for g, c in report.criterion_flips() if g.step == 1
             and g.group_index == 0}
    assert flips == {"c1": (1, 5), "c2": (0, 0), "c3": (0, 0), "c4": (1, 0)}
    failed = [g for g in report.groups if (g.step, g.group_index) == (2, 1)][0]
    assert failed.rubric_source == "induced" and failed.status == "ok"
    assert all(a.old_reward is None and a.new_reward is not None for a in failed.answers)
    # Stored and linked to the originals.
    again = load_report(store_path, report.replay_id)
    assert again.summary == report.summary
    with sqlite3.connect(store_path) as c:
        assert c.execute("SELECT status, run_id FROM replays WHERE id=?", (report.replay_id,)).fetchone() == ("done", 1)
        assert c.execute("SELECT COUNT(*) FROM replay_answers a JOIN answers o ON o.id = a.answer_id"
                         " WHERE a.replay_id=?", (report.replay_id,)).fetchone()[0] == 6 * 8
        calls = c.execute("SELECT COUNT(*), SUM(cached) FROM judge_calls WHERE replay_id=?",
                          (report.replay_id,)).fetchone()
        assert calls == (7, 0)
    assert [r["id"] for r in list_replays(store_path, "r1")] == [report.replay_id]


def test_identical_requests_are_answered_from_the_cache(store_path, judge_server):
    first = run_replay_sync(store_path, spec(judge_server, steps=[1]))
    n = judge_requests(judge_server)
    second = run_replay_sync(store_path, spec(judge_server, steps=[1]))
    assert judge_requests(judge_server) == n  # the server received no second request
    assert second.stats["judge_calls"] == second.stats["cached_calls"] == 3
    assert second.summary == first.summary
    with sqlite3.connect(store_path) as c:
        assert c.execute("SELECT COUNT(*), SUM(cached) FROM judge_calls WHERE replay_id=?",
                         (second.replay_id,)).fetchone() == (3, 3)
    forced = run_replay_sync(store_path, spec(judge_server, steps=[1], force=True))
    assert judge_requests(judge_server) == n + 3
    assert forced.stats["cached_calls"] == 0


def test_induce_mode_re_runs_rubric_induction(store_path, judge_server):
    before = [r.role for r in judge_server.requests].count("rubricator")
    report = run_replay_sync(store_path, spec(judge_server, steps=[1], rubric_mode="induce", force=True))
    assert [r.role for r in judge_server.requests].count("rubricator") - before == 3
    assert all(g.rubric_source == "induced" and g.new_rubric is not None for g in report.groups)
    assert report.summary.verdict_agreement is None  # different rubrics: verdicts are not comparable
    assert report.summary.auc_new == pytest.approx(0.875)


def test_selection_filters(store_path, judge_server):
    r = run_replay_sync(store_path, spec(judge_server, failed_only=True))
    assert [(g.step, g.group_index) for g in r.groups] == [(2, 1)]
    r = run_replay_sync(store_path, spec(judge_server, prompts=["what is 17 +"]))
    assert [(g.step, g.group_index) for g in r.groups] == [(2, 0)]
    r = run_replay_sync(store_path, spec(judge_server, steps=[2], reward_range=(0.5, 0.6)))
    assert [(g.step, g.group_index) for g in r.groups] == [(2, 0), (2, 2)]
    with pytest.raises(UserError, match="nothing to replay"):
        run_replay_sync(store_path, spec(judge_server, reward_range=(0.9, 1.0)))


def test_template_by_stored_version_and_by_file(store_path, judge_server, tmp_path):
    base = Template.default("verifier").text
    edited = base.replace("You are a strict grader.", "You are a strict grader. MARKER-V2.")
    tpl = Template.from_text(edited, "verifier")
    from engine.store import RunStore

    with RunStore(store_path) as st:
        st.record_template("verifier", tpl.sha256, tpl.text, source="edited")
    r = run_replay_sync(store_path, spec(judge_server, steps=[1], max_groups=1,
                                         templates={"verifier": tpl.sha256[:10]}))
    assert r.settings["templates"]["verifier"]["sha256"] == tpl.sha256
    assert r.groups[0].template_versions["verifier"] == tpl.sha256
    assert "MARKER-V2" in judge_server.requests[-1].prompt
    f = tmp_path / "verifier_v3.txt"
    f.write_text(base.replace("You are a strict grader.", "MARKER-V3"), encoding="utf-8")
    run_replay_sync(store_path, spec(judge_server, steps=[1], max_groups=1, templates={"verifier": str(f)}))
    assert "MARKER-V3" in judge_server.requests[-1].prompt
    bad = tmp_path / "bad.txt"
    bad.write_text("{question} {rubrics} {answers} {oops}", encoding="utf-8")
    with pytest.raises(TemplateError, match="oops"):
        run_replay_sync(store_path, spec(judge_server, templates={"verifier": str(bad)}))
    with pytest.raises(TemplateError, match="no stored verifier template version"):
        run_replay_sync(store_path, spec(judge_server, templates={"verifier": "deadbeef"}))


def test_cancel_keeps_the_groups_done(store_path, judge_server):
    cancel = threading.Event()
    r = run_replay_sync(store_path, spec(judge_server, concurrency=1, force=True),
                        progress=lambda p: cancel.set(), cancel=cancel)
    assert r.status == "cancelled"
    assert 1 <= len(r.groups) < 6
    assert list_replays(store_path)[0]["status"] == "cancelled"


def test_offline_judge_replay(store_path):
    r = run_replay_sync(store_path, ReplaySpec(run="r1", offline=True, steps=[1], rubric_mode="induce"))
    assert r.status == "done" and r.settings["judge"] == "offline"
    assert all(a.new_reward is not None for a in r.answers)


def test_dead_judge_fails_fast_with_a_clear_error(store_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(JudgeError, match=f"127.0.0.1:{port}"):
        run_replay_sync(store_path, ReplaySpec(run="r1", judge_model="m", base_url=f"http://127.0.0.1:{port}/v1"))


def test_bad_input_errors(store_path):
    with pytest.raises(StoreError, match="nope"):
        run_replay_sync(store_path, ReplaySpec(run="nope", offline=True))
    assert parse_steps("1-3,8") == [1, 2, 3, 8]
    assert parse_steps("") is None
    for bad in ("3-1", "x", "1,,2"):
        with pytest.raises(ConfigError):
            parse_steps(bad)
    assert parse_reward_range("0.2:0.6") == (0.2, 0.6)
    assert parse_reward_range(":0.5") == (0.0, 0.5)
    with pytest.raises(ConfigError):
        parse_reward_range("0.6:0.2")
    assert parse_template_args(["verifier=abc123"]) == {"verifier": "abc123"}
    with pytest.raises(ConfigError):
        parse_template_args(["judge=x"])


def run_cli(*argv: str) -> tuple[int, str, str]:
    from ropd_tui.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_headless_replay_command(store_path, judge_server):
    rc, out, err = run_cli("--headless", "--store", str(store_path), "replay", "r1", "--steps", "1",
                           "--judge-model", "m", "--base-url", judge_server.base_url, "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["summary"]["groups"] == 3 and data["summary"]["auc_new"] == pytest.approx(0.875)
    assert "3/3 groups" in err and "requests: " in err and "#" in err  # the shared progress reporter, on stderr
    rc, out, _ = run_cli("--headless", "--store", str(store_path), "replay", "--show", str(data["replay_id"]))
    assert rc == 0 and "AUC reward vs correct, new" in out and "0.8750" in out
    rc, out, _ = run_cli("--headless", "--store", str(store_path), "replay", "r1", "--list")
    assert rc == 0 and str(data["replay_id"]) in out
    rc, _, err = run_cli("--headless", "--store", str(store_path), "replay", "r1", "--steps", "5-1", "--offline")
    assert rc == 2 and "error: --steps" in err and "Traceback" not in err


def test_headless_templates_commands(store_path, tmp_path):
    v = Template.default("verifier")
    rc, out, _ = run_cli("--headless", "--store", str(store_path), "templates", "list")
    assert rc == 0 and v.sha256[:12] in out
    rc, out, _ = run_cli("--headless", "--store", str(store_path), "templates", "show", v.sha256[:8])
    assert rc == 0 and out.rstrip("\n") == v.text.rstrip("\n")
    f = tmp_path / "verifier.txt"
    f.write_text(v.text.replace("strict grader", "careful grader"), encoding="utf-8")
    rc, out, _ = run_cli("--headless", "--store", str(store_path), "templates", "diff", v.sha256[:8], str(f))
    assert rc == 1 and "-You are a strict grader" in out and "+You are a careful grader" in out
    rc, out, _ = run_cli("--headless", "templates", "validate", str(f))
    assert rc == 0 and "valid verifier template" in out
    f.write_text("{question} {answers} {rubric}", encoding="utf-8")
    rc, _, err = run_cli("--headless", "templates", "validate", str(f))
    assert rc == 2 and "unknown placeholder '{rubric}'" in err


def test_replay_whose_groups_all_fail_is_failed_and_exits_4(store_path):
    """It used to exit 0 and report "done" when every group failed."""
    with LoopbackJudgeServer() as srv:
        srv.verifier_fn = lambda prompt, answers, criteria: "I think they are all fine."
        rc, out, err = run_cli("--headless", "--store", str(store_path), "replay", "r1", "--steps", "1",
                               "--judge-model", "m", "--base-url", srv.base_url)
    assert rc == 4, err
    assert ": failed" in out and "3 of 3 groups failed to score" in out
    assert "replay" in err and "failed: 3 of 3 groups failed" in err and "verifier: the verifier reply was still " \
        "invalid after 3 attempt(s)" in err
    assert "--show" in err and "Traceback" not in err
    (row,) = [r for r in list_replays(store_path, "r1") if r["status"] == "failed"]
    report = load_report(store_path, row["id"])
    assert report.status == "failed" and "3 of 3 groups failed" in report.cause
    rc, out, _ = run_cli("--headless", "--store", str(store_path), "replay", "--show", str(row["id"]))
    assert rc == 0 and ": failed" in out and "3 of 3 groups failed" in out


def test_replay_against_a_judge_hanging_after_the_preflight_is_exit_3_from_the_circuit_breaker(tmp_path):
    def quick(cfg):
        cfg.judge.retry_initial_delay_s, cfg.judge.retry_max_delay_s = 0.01, 0.02
        cfg.judge.circuit_breaker_failures = 3  # the 3 groups' verifier requests, one wave of timeouts
        for role in JUDGE_ROLES:
            getattr(cfg.judge, role).timeout_s = 1.0

    path = tmp_path / "ropd.db"
    make_store(path, steps=1, groups=3, configure=quick).close()
    with LoopbackJudgeServer(models=["m"]) as srv:
        srv.hang_next(10_000, seconds=60)  # /models answers (the preflight passes); no judge request ever does
        rc, out, err = run_cli("--headless", "--store", str(path), "replay", "r1", "--judge-model", "m",
                               "--base-url", srv.base_url)
        sent = len(srv.requests)
    assert rc == 3, err
    assert err.count("error:") == 1 and "the judge stopped answering: 3 of 3 groups failed to score" in err
    assert "circuit breaker is open" in err and "raise judge.verifier.timeout_s" in err and "Traceback" not in err
    assert "is not answering" not in out and "failed: step" not in out  # said once, in the error
    assert sent <= 6  # without the breaker: 3 requests x (1 + 4 retries), 5 timeouts each


def test_replay_with_failures_within_the_threshold_is_done(store_path):
    with LoopbackJudgeServer() as srv:
        srv.malformed_next(3, role="verifier", text="no json")  # one group's verifier call and both its re-asks
        report = run_replay_sync(store_path, ReplaySpec(run="r1", steps=[1], judge_model="m", base_url=srv.base_url,
                                                        concurrency=1))
    assert report.summary.failed_groups == 1 and report.status == "done" and report.cause is None
