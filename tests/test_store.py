"""RunStore: schema, runs, steps written in one transaction, readers, attempts, replays, secrets."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
import yaml

from dummy_trainers.payloads import make_group, make_step
from engine.errors import StoreError
from engine.store import RunStore, schema_version
from engine.store.scrub import scrub, scrub_text
from engine.types import AnswerResult, GroupResult, JudgeCall


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs" / "ropd.db")
    yield s
    s.close()


def test_new_store_is_wal_and_versioned(store):
    c = sqlite3.connect(store.path)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA user_version").fetchone()[0] == schema_version()
    assert {"runs", "metrics", "events", "groups", "answers", "rubrics", "criteria", "verdicts", "judge_calls",
            "template_versions", "replays", "replay_answers", "replay_verdicts"} <= {
        r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    c.close()


def test_schema_introspection_through_sqlite_utils(store):
    rec = store.create_run("r", "embedded", {})
    store.write_step(rec.id, 1, {"loss": 1.0}, make_step(1, 2, students=2, teachers=1, criteria=3))
    db = store.db
    assert {"run_id", "attempt", "step", "key", "value"} <= set(db["metrics"].columns_dict)
    assert any(ix.columns == ["run_id", "attempt", "key", "step"] and ix.unique for ix in db["metrics"].indexes)
    assert db["verdicts"].count == 2 * 3 * 3
    assert [r["name"] for r in db["runs"].rows_where("backend = ?", ["embedded"])] == ["r"]


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path):
    path = tmp_path / "ropd.db"
    RunStore(path).close()
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version={schema_version() + 5}")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="newer") as exc:
        RunStore(path)
    assert "upgrade ropd-tui" in str(exc.value)


def test_missing_store_and_unknown_run(tmp_path, store):
    with pytest.raises(StoreError, match="no run store"):
        RunStore(tmp_path / "nothing.db", create=False)
    with pytest.raises(StoreError, match="no run 'ghost'"):
        store.get_run("ghost")


def test_not_a_database_is_a_store_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable run store"):
        RunStore(bad)


def test_create_run_folder_snapshot_and_no_secrets(store):
    cfg = {"run": {"name": "a"}, "judge": {"verifier": {"api_key_env": "OPENAI_API_KEY", "api_key": "sk-live-123456789012345",
                                                        "base_url": "https://user:pw@host/v1", "max_tokens": 100}},
           "notes": "key sk-abcdefghijklmnopqrstuv in a comment"}
    rec = store.create_run("a", "embedded", cfg, argv=["python", "-m", "engine.runs.worker"],
                           env={"HF_TOKEN": "hf_" + "x" * 30, "CUDA_VISIBLE_DEVICES": "0"})
    assert rec.run_dir == store.root / "a" and (rec.run_dir / "checkpoints").is_dir()
    snap = yaml.safe_load(rec.config_path.read_text())
    assert snap["judge"]["verifier"]["api_key_env"] == "OPENAI_API_KEY"
    assert snap["judge"]["verifier"]["api_key"] == "***" and snap["judge"]["verifier"]["max_tokens"] == 100
    assert "pw@" not in snap["judge"]["verifier"]["base_url"]
    assert rec.env == {"CUDA_VISIBLE_DEVICES": "0"}
    raw = store.path.read_bytes() + b"".join(p.read_bytes() for p in store.root.glob("ropd.db*"))
    assert b"sk-live" not in raw and b"sk-abcdef" not in raw and b"hf_xxx" not in raw
    with pytest.raises(StoreError, match="already exists"):
        store.create_run("a", "embedded", {})
    with pytest.raises(StoreError, match="invalid run name"):
        store.create_run("../evil", "embedded", {})
    assert store.get_run(str(rec.id)).name == "a"


def test_scrub_helpers():
    assert scrub_text("Authorization: Bearer abcdefghijkl") == "Authorization: ***"
    assert scrub({"tokenizer": "gpt2", "hf_token": "abc", "tokens_per_minute": 5}) == {
        "tokenizer": "gpt2", "hf_token": "***", "tokens_per_minute": 5}


def test_write_step_round_trip(store):
    rec = store.create_run("r", "embedded", {})
    groups = make_step(1, 3, students=4, teachers=2, criteria=5)
    groups.append(make_group(1, 3, students=4, teachers=2, criteria=5, failed=True))
    store.write_step(rec.id, 1, {"loss": 0.5, "reward/mean": 0.4}, groups)
    got = store.step_groups(rec.id, 1)
    assert [g["group_index"] for g in got] == [0, 1, 2, 3]
    for want, g in zip(groups, got):
        assert g["question"] == want.question and g["ground_truth"] == want.ground_truth
        assert g["status"] == want.status and g["uid"] == want.uid
        assert [a["text"] for a in g["answers"]] == [a.text for a in want.answers]
        assert [a["kind"] for a in g["answers"]] == [a.kind for a in want.answers]
        assert [a["pool_position"] for a in g["answers"]] == [a.pool_position for a in want.answers]
        assert len(g["calls"]) == 2 and g["calls"][0]["role"] == "rubricator"
        if want.status == "failed":
            assert g["rubric"] is None and g["failure_stage"] == "verifier"
            assert g["student_reward_mean"] is None
            continue
        assert [c["text"] for c in g["rubric"]["criteria"]] == [c.text for c in want.rubric.criteria]
        assert [c["points"] for c in g["rubric"]["criteria"]] == [c.points for c in want.rubric.criteria]
        assert g["verdicts"] == [a.verdicts for a in want.answers]
        assert [a["reward"] for a in g["answers"]] == pytest.approx([a.reward for a in want.answers])
        crit0 = g["rubric"]["criteria"][0]
        students = [a for a in want.answers if a.kind == "student"]
        assert crit0["student_pass_rate"] == pytest.approx(sum(a.verdicts[0] for a in students) / len(students))
    latest = store.latest_metrics([rec.id])[rec.id]
    assert latest["loss"] == 0.5 and latest["score/groups"] == 4 and latest["score/group_failure_rate"] == 0.25
    ok_students = [a.reward for g in groups if g.status == "ok" for a in g.answers if a.kind == "student"]
    assert latest["score/student_reward_mean"] == pytest.approx(sum(ok_students) / len(ok_students))
    assert store.steps(rec.id)[0]["n_groups"] == 4 and store.steps(rec.id)[0]["n_failed"] == 1
    assert store.templates(rec.id)[0]["sha"] in ("a" * 64, "b" * 64)


def test_list_runs_metric_series_and_pass_rates(store):
    a = store.create_run("a", "embedded", {})
    b = store.create_run("b", "verl", {})
    for step in range(1, 6):
        store.write_step(a.id, step, {"reward/mean": step / 10, "accuracy": step / 20},
                         make_step(step, 2, students=3, teachers=1, criteria=4))
    store.write_metrics(b.id, 1, {"loss": 2.0})
    runs = {r["name"]: r for r in store.list_runs()}
    assert runs["a"]["last_step"] == 5 and runs["a"]["reward"] == 0.5 and runs["a"]["accuracy"] == 0.25
    assert runs["b"]["reward"] is None and runs["b"]["metrics"] == {"loss": 2.0}
    assert store.metric_series(a.id, "reward/mean") == [(s, s / 10) for s in range(1, 6)]
    assert store.metric_series(a.id, "reward/mean", since_step=3) == [(4, 0.4), (5, 0.5)]
    assert "reward/mean" in store.metric_keys(a.id)
    per_crit = store.criterion_pass_rates(a.id)
    assert len(per_crit) == 5 * 2 * 4
    per_step = store.criterion_pass_rates(a.id, by="step")
    assert [r["step"] for r in per_step] == [1, 2, 3, 4, 5] and all(r["n_criteria"] == 8 for r in per_step)
    by_cat = store.criterion_pass_rates(a.id, by="category")
    assert {r["category"] for r in by_cat} == {"task", "quality", "reasoning"}
    answers = store.answers(a.id, steps=[2], kind="student", include_verdicts=True)
    assert len(answers) == 6 and all(len(x["verdicts"]) == 4 for x in answers)
    assert len(store.verdicts(a.id, 3)) == 2 * 4 * 4


def test_rewriting_a_step_replaces_its_groups(store):
    rec = store.create_run("r", "embedded", {})
    store.write_step(rec.id, 1, {"loss": 1.0}, make_step(1, 3, students=2, teachers=1, criteria=2))
    store.write_step(rec.id, 1, {"loss": 0.9}, make_step(1, 2, students=2, teachers=1, criteria=2))
    assert len(store.step_groups(rec.id, 1)) == 2
    assert store.metric_series(rec.id, "loss") == [(1, 0.9)]
    store.write_step(rec.id, 1, {}, make_step(1, 1, students=2, teachers=1, criteria=2), append=True)
    assert len(store.step_groups(rec.id, 1)) == 3
    c = store.connection
    with store.lock:
        assert c.execute("SELECT count(*) FROM answers").fetchone()[0] == 3 * 3
        assert c.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 3 * 3 * 2


def test_attempts_keep_history(store):
    rec = store.create_run("r", "embedded", {})
    for step in (1, 2, 3):
        store.write_metrics(rec.id, step, {"loss": float(step)})
    assert store.start_attempt(rec.id) == 2
    assert store.latest_metrics([rec.id]) == {}
    store.write_metrics(rec.id, 1, {"loss": 10.0})
    assert store.metric_series(rec.id, "loss") == [(1, 10.0)]
    assert store.metric_series(rec.id, "loss", attempt=1) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert store.attempts(rec.id) == [1, 2]
    assert store.get_run(rec.id).last_step == 1
    assert store.events(rec.id)[-1]["kind"] == "restarted"


def test_cursors_and_data_version(store):
    rec = store.create_run("r", "embedded", {})
    rows, cur = store.rows_newer("metrics", 0, run_id=rec.id)
    assert rows == [] and cur == 0
    store.write_metrics(rec.id, 1, {"a": 1.0, "b": 2.0})
    rows, cur = store.rows_newer("metrics", cur, run_id=rec.id)
    assert {r["key"] for r in rows} == {"a", "b"}
    store.write_metrics(rec.id, 2, {"a": 3.0})
    rows, cur2 = store.rows_newer("metrics", cur)
    assert [(r["step"], r["key"]) for r in rows] == [(2, "a")] and cur2 > cur
    with pytest.raises(ValueError):
        store.rows_newer("runs; DROP TABLE runs", 0)
    # data_version changes for our own writes and for another process's writes
    v0 = store.data_version()
    assert store.data_version() == v0
    store.add_event(rec.id, "note", "hello")
    v1 = store.data_version()
    assert v1 != v0
    code = (f"from engine.store import RunStore; s = RunStore({str(store.path)!r});"
            f"s.write_metrics({rec.id}, 3, {{'a': 4.0}})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert store.data_version() != v1
    assert store.metric_series(rec.id, "a")[-1] == (3, 4.0)


def test_stalled_run_recovers_on_a_new_step(store):
    rec = store.create_run("r", "embedded", {})
    store.update_run(rec.id, status="stalled", cause="no step")
    store.write_metrics(rec.id, 1, {"a": 1.0})
    assert store.get_run(rec.id).status == "running"
    assert store.events(rec.id)[-1]["kind"] == "recovered"


def test_templates_recorded_once(store):
    rec = store.create_run("r", "embedded", {})
    store.record_template("verifier", "f" * 64, "Judge {answers}", source="prompts/verifier.txt", run_id=rec.id, step=3)
    store.record_template("verifier", "f" * 64, "Judge {answers}", run_id=rec.id, step=9)
    t = store.templates(rec.id)
    assert len(t) == 1 and t[0]["first_step"] == 3 and t[0]["text"] == "Judge {answers}"
    assert store.template("f" * 64)["source"] == "prompts/verifier.txt"


def test_replay_rows_link_to_original_answers(store):
    rec = store.create_run("r", "embedded", {})
    store.write_step(rec.id, 1, {}, make_step(1, 1, students=2, teachers=1, criteria=3))
    g = store.step_groups(rec.id, 1)[0]
    replay_id = store.create_replay(rec.id, {"verifier_template": "x"}, name="try", n_total=1)
    res = GroupResult(group_index=0, prompt="p", question="q", rollouts_raw=[], status="ok",
                      answers=[AnswerResult(kind=a["kind"], index=a["index"], text=a["text"], reward=0.5,
                                            verdicts=[True, False]) for a in g["answers"]],
                      calls=[JudgeCall(role="verifier", model="m", status="ok", latency_s=0.1)])
    store.write_replay_group(replay_id, g["id"], res, [a["id"] for a in g["answers"]])
    store.update_replay(replay_id, status="finished", summary={"auc": 0.9})
    out = store.replay_results(replay_id)
    assert out[0]["group_id"] == g["id"]
    assert [a["answer_id"] for a in out[0]["answers"]] == [a["id"] for a in g["answers"]]
    assert out[0]["answers"][0]["verdicts"] == [True, False]
    r = store.replays(rec.id)[0]
    assert r["n_done"] == 1 and r["summary"] == {"auc": 0.9} and r["status"] == "finished"
    # the replay's judge calls do not count as the run's
    assert all(c["replay_id"] is None for c in store.judge_calls(rec.id))


def test_delete_run_removes_rows_and_folder(store):
    keep = store.create_run("keep", "embedded", {})
    gone = store.create_run("gone", "embedded", {})
    for rec in (keep, gone):
        store.write_step(rec.id, 1, {"loss": 1.0}, make_step(1, 2, students=2, teachers=1, criteria=2))
    store.create_replay(gone.id, {})
    (gone.run_dir / "run.log").write_text("log")
    store.delete_run(gone.id)
    assert not gone.run_dir.exists() and keep.run_dir.exists()
    c = store.connection
    with store.lock:
        for table in ("groups", "steps", "metrics", "latest_metrics", "events", "judge_calls", "replays"):
            assert c.execute(f"SELECT count(*) FROM {table} WHERE run_id=?", (gone.id,)).fetchone()[0] == 0, table
        assert c.execute("SELECT count(*) FROM answers").fetchone()[0] == 2 * 3
        assert c.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 2 * 3 * 2
    assert len(store.step_groups(keep.id, 1)) == 2


def test_template_recorded_at_start_gets_its_first_step_from_the_first_step_using_it(store):
    rec = store.create_run("r", "embedded", {})
    # a live template set records the versions in use before step 1 exists
    store.record_template("verifier", "b" * 64, "Judge {answers}", run_id=rec.id, step=None)
    store.write_step(rec.id, 1, {"m": 1.0}, make_step(1, 1))
    store.write_step(rec.id, 2, {"m": 1.0}, make_step(2, 1))
    by_sha = {t["sha"]: t for t in store.templates(rec.id)}
    assert by_sha["b" * 64]["first_step"] == 1
    assert by_sha["b" * 64]["text"] == "Judge {answers}"
    assert by_sha["a" * 64]["first_step"] == 1


def test_secret_assignments_are_scrubbed_but_lookalikes_are_kept():
    from engine.store.scrub import scrub_text, secret_overrides

    key = "0123456789abcdef0123456789abcdef01234567"  # a W&B key: no value pattern can tell it from a hash
    ov = f"+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_API_KEY={key}"
    assert scrub_text(f"main_ppo {ov} data.x=1") == (
        "main_ppo +ray_kwargs.ray_init.runtime_env.env_vars.WANDB_API_KEY=*** data.x=1")
    assert scrub_text(f"['{ov}']") == "['+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_API_KEY=***']"
    kept = "judge.verifier.api_key_env=OPENAI_API_KEY max_tokens=4096 sha=" + key
    assert scrub_text(kept) == kept
    assert secret_overrides([ov, "trainer.total_training_steps=3", "HF_TOKEN=x"]) == ["WANDB_API_KEY", "HF_TOKEN"]
