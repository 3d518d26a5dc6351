"""verl's file-logger lines and the gatherer's side channel land in the run store (C's RunStore)."""

from __future__ import annotations

import json

import pytest

from engine.store import RunStore
from engine.types import AnswerResult, Criterion, GroupResult, JudgeCall, Rubric
from engine.verl_backend.metrics_ingest import StepIngestor, map_metrics
from engine.verl_backend.side_channel import JsonlTail, SideChannelWriter, group_from_dict, group_to_record


def scored_group(uid: str, rewards: list[float], correct: list[bool]) -> GroupResult:
    crits = [Criterion("c1", "gives 7 as the final result", 5, "task fulfilment"),
             Criterion("c2", "shows a calculation", 2, "general reasoning quality")]
    answers = [AnswerResult("student", i, f"answer {i}", pool_position=i + 1, verdicts=[r > 0.5, True],
                            reward=r, correct=c) for i, (r, c) in enumerate(zip(rewards, correct))]
    answers.append(AnswerResult("teacher", 0, "3 + 4 = 7. The answer is 7.", pool_position=len(rewards) + 1,
                                verdicts=[True, True], reward=1.0))
    return GroupResult(group_index=0, prompt=[{"role": "user", "content": f"What is 3 + 4? ({uid})"}],
                       question=f"What is 3 + 4? ({uid})", rollouts_raw=[a.text for a in answers[:-1]],
                       status="ok", ground_truth="7", uid=uid, rubric=Rubric(crits), answers=answers,
                       calls=[JudgeCall("rubricator", "m", "ok", 0.1), JudgeCall("verifier", "m", "ok", 0.2)],
                       wall_s=0.3, meta={"data_source": "demo_math", "split": "train"})


def failed_group(uid: str) -> GroupResult:
    return GroupResult(group_index=0, prompt="What is 2 + 2?", question="What is 2 + 2?",
                       rollouts_raw=["4", "5", "4"], status="failed", ground_truth="4", uid=uid,
                       failure_stage="scorer", failure_cause="timeout: only 3 of 4 rollouts arrived")


def verl_line(step: int, data: dict) -> str:
    return json.dumps({"step": step, "data": data}) + "\n"


@pytest.fixture
def store_run(tmp_path):
    store = RunStore(tmp_path / "store" / "ropd.db")
    run = store.create_run("verl-ingest", "verl", {"run": {"backend": "verl"}})
    yield store, run
    store.close()


def test_group_result_round_trips_through_side_channel(tmp_path):
    g = scored_group("u1", [1.0, 0.25], [True, False])
    w = SideChannelWriter(tmp_path / "g.jsonl")
    w.append(group_to_record(g, step=3))
    w.close()
    (rec,) = list(JsonlTail(tmp_path / "g.jsonl").read())
    assert rec["step"] == 3
    assert group_from_dict(rec["group"]) == g


def test_map_metrics_names_accuracy_and_reward_and_keeps_raw_keys():
    m = map_metrics({"critic/score/mean": 0.4, "val-core/demo_math/acc/mean@1": 0.5,
                     "val-core/other/acc/mean@1": 0.25, "val-aux/demo_math/rubric_reward/mean@1": 0.0,
                     "actor/pg_loss": -0.01, "note": "text", "nan": float("nan"), "training/global_step": 2})
    assert m["reward/mean"] == 0.4
    assert m["accuracy"] == pytest.approx(0.375)
    assert m["val-core/demo_math/acc/mean@1"] == 0.5 and m["actor/pg_loss"] == -0.01
    assert "note" not in m and "nan" not in m


def test_ingest_writes_metrics_and_groups_per_step(tmp_path, store_run):
    store, run = store_run
    metrics, groups = tmp_path / "metrics.jsonl", tmp_path / "groups.jsonl"
    ing = StepIngestor(store, run.id, metrics, groups)
    assert ing.poll() == []  # neither file exists yet

    side = SideChannelWriter(groups)
    with open(metrics, "w") as fp:  # val_before_train logs step 0 on its own
        fp.write(verl_line(0, {"val-core/demo_math/acc/mean@1": 0.25}))
    side.append(group_to_record(scored_group("u1", [1.0, 0.0], [True, False]), step=1))
    side.append(group_to_record(failed_group("u2"), step=1))
    side.append(group_to_record(scored_group("u3", [0.5, 0.5], [False, False]), step=2))
    with open(metrics, "a") as fp:
        fp.write(verl_line(1, {"critic/score/mean": 0.25, "actor/pg_loss": 0.1, "timing_s/step": 12.0,
                               "val-core/demo_math/acc/mean@1": 0.5}))
        fp.write('{"step": 2, "data": {"critic/sc')  # verl is still writing this line
    reports = ing.poll()
    assert [r.step for r in reports] == [0, 1]
    assert reports[1].n_groups == 2 and reports[1].failure_rate == 0.5

    assert store.metric_series(run.id, "accuracy") == [(0, 0.25), (1, 0.5)]
    assert store.metric_series(run.id, "reward/mean") == [(1, 0.25)]
    assert store.metric_series(run.id, "actor/pg_loss") == [(1, 0.1)]
    assert store.metric_series(run.id, "ropd/failed_groups") == [(1, 1.0)]
    assert store.metric_series(run.id, "ropd/judge_calls") == [(1, 2.0)]
    step1 = store.step_groups(run.id, 1)
    assert sorted((g["uid"], g["status"]) for g in step1) == [("u1", "ok"), ("u2", "failed")]
    assert store.step_groups(run.id, 2) == []  # step 2 not logged yet: its group waits

    with open(metrics, "a") as fp:
        fp.write('ore/mean": 0.5}}\n')
    (r2,) = ing.poll()
    assert r2.step == 2 and r2.n_groups == 1
    assert [g["uid"] for g in store.step_groups(run.id, 2)] == ["u3"]
    assert store.list_runs()[0]["accuracy"] == 0.5


def test_groups_without_step_and_unlogged_steps_are_flushed(tmp_path, store_run):
    store, run = store_run
    metrics, groups = tmp_path / "metrics.jsonl", tmp_path / "groups.jsonl"
    # resumed after step 4: verl's legacy trainer does not say which step a rollout belongs to
    ing = StepIngestor(store, run.id, metrics, groups, start_step=4)
    side = SideChannelWriter(groups)
    side.append(group_to_record(scored_group("a", [1.0, 1.0], [True, True]), step=None))
    ing.poll()  # read while step 5 is running
    metrics.write_text(verl_line(5, {"critic/score/mean": 1.0}))
    ing.poll()
    side.append(group_to_record(scored_group("b", [0.0, 1.0], [False, True]), step=None))
    ing.poll()
    assert [g["uid"] for g in store.step_groups(run.id, 5)] == ["a"]
    # the run ends before step 6 is logged: its group is still written
    reports = ing.flush()
    assert [r.step for r in reports] == [6]
    assert [g["uid"] for g in store.step_groups(run.id, 6)] == ["b"]


def test_metrics_file_truncated_by_a_restart_is_read_from_the_start(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(verl_line(1, {"a": 1}) + verl_line(2, {"a": 2}))
    tail = JsonlTail(p)
    assert [r["step"] for r in tail.read()] == [1, 2]
    p.write_text(verl_line(3, {"a": 3}))  # verl's FileLogger opens with "wb"
    assert [r["step"] for r in tail.read()] == [3]


def test_a_step_without_learning_signal_gets_an_event(tmp_path, store_run):
    store, run = store_run
    metrics, groups = tmp_path / "metrics.jsonl", tmp_path / "groups.jsonl"
    ing = StepIngestor(store, run.id, metrics, groups)
    side = SideChannelWriter(groups)
    side.append(group_to_record(scored_group("u1", [1.0, 0.0], [True, False]), step=1))  # spread: fine
    side.append(group_to_record(scored_group("u2", [0.5, 0.5], [False, False]), step=2))
    side.append(group_to_record(scored_group("u3", [0.5, 0.5], [False, False]), step=2))
    with open(metrics, "w") as fp:
        fp.write(verl_line(1, {"critic/score/mean": 0.5}) + verl_line(2, {"critic/score/mean": 0.5}))
    ing.poll()
    (event,) = store.events(run.id, kinds=["no_signal"])
    assert event["step"] == 2 and "2 of 2 scored groups carry no learning signal" in event["message"]
    assert event["data"]["flat"] == 2


def test_gatherer_events_become_store_events(tmp_path, store_run):
    from engine.verl_backend.side_channel import event_record

    store, run = store_run
    w = SideChannelWriter(tmp_path / "g.jsonl")
    w.append(event_record("warning", "1 prompt(s) still miss rollouts 120 s after their last one arrived", step=3))
    w.append(group_to_record(scored_group("u1", [1.0, 0.0], [True, False]), step=3))
    ing = StepIngestor(store, run.id, tmp_path / "m.jsonl", tmp_path / "g.jsonl")
    ing.poll()
    (ev,) = [e for e in store.events(run.id) if e["kind"] == "warning"]
    assert ev["step"] == 3 and "still miss rollouts" in ev["message"]
    assert [e["message"] for e in ing.new_events] == [ev["message"]]


def test_verl_heartbeat_follows_the_groups_and_metrics_that_reach_the_launch_node(tmp_path, store_run):
    """Issue 14/12 for verl: the run's 'now' line inside a verl step, inferred from the side channel and the
    metrics file (the launcher never talks to verl's trainer): starting up, scoring k/N, updating, generating."""
    from engine.runs.heartbeat import describe
    from engine.verl_backend.launcher import VerlHeartbeat

    store, run = store_run
    metrics, groups = tmp_path / "metrics.jsonl", tmp_path / "groups.jsonl"
    ing = StepIngestor(store, run.id, metrics, groups)
    side = SideChannelWriter(groups)
    composed = {"data": {"train_batch_size": 2}, "trainer": {"total_training_steps": 3}}
    from omegaconf import OmegaConf

    beat = VerlHeartbeat(store, run.id, 0, OmegaConf.create(composed), 300.0)
    seen = []

    def tick():
        ing.poll()
        beat.update(ing)
        snap = beat.hb.snapshot()
        seen.append((snap["phase"], snap["step"], snap["done"], snap["total"]))

    tick()  # nothing arrived yet: verl is starting
    side.append(group_to_record(scored_group("u1", [1.0, 0.0], [True, False]), step=1))
    tick()
    side.append(group_to_record(scored_group("u2", [1.0, 0.0], [True, False]), step=1))
    tick()
    with open(metrics, "w") as fp:
        fp.write(verl_line(1, {"critic/score/mean": 0.5}))
    tick()
    assert seen == [("startup", 1, None, None), ("score", 1, 1, 2), ("update", 1, None, None),
                    ("generate", 2, None, None)]
    beat.close()
    row = store.progress([run.id])[run.id]
    assert row["phase"] == "done" and row["total_steps"] == 3
    assert {"startup", "score", "update", "generate"} <= set(row["totals"])
    assert describe(row) is not None
