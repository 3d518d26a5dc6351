"""Steps whose groups carry no learning signal (zero reward spread) are warned about, with likely causes:
in the store (an event), in `train`'s output and in the TUI's Overview events."""

from __future__ import annotations

from engine.scoring.signal import learning_signal
from engine.store import RunStore
from engine.types import AnswerResult, Criterion, GroupResult, Rubric


def group(rewards, *, rollouts=None, verdicts=None, teacher_verdicts=None, rubric_text="The answer gives 5.",
          status="ok", index=0):
    rollouts = rollouts or [f"answer {i}" for i in range(len(rewards))]
    answers = [AnswerResult(kind="student", index=i, text=t, reward=r,
                            verdicts=(verdicts[i] if verdicts else [r > 0.5]))
               for i, (t, r) in enumerate(zip(rollouts, rewards))]
    answers.append(AnswerResult(kind="teacher", index=0, text="teacher", reward=1.0,
                                verdicts=teacher_verdicts if teacher_verdicts is not None else [True]))
    return GroupResult(group_index=index, prompt="q", question="q", rollouts_raw=rollouts, status=status,
                       rubric=Rubric([Criterion("c1", rubric_text, 5)]), answers=answers)


def test_no_warning_while_most_groups_have_spread():
    groups = [group([0.0, 1.0]), group([0.0, 1.0]), group([0.5, 0.5])]
    assert learning_signal(groups) is None


def test_identical_rollouts_are_named():
    groups = [group([0.5, 0.5], rollouts=["12", "12"], rubric_text=f"r{i}", index=i) for i in range(3)]
    report = learning_signal(groups)
    assert (report.flat, report.scored) == (3, 3)
    msg = report.message(4)
    assert msg.startswith("step 4: 3 of 3 scored groups carry no learning signal")
    assert "every rollout is the same text in 3 of 3 group(s)" in msg and "trainer.temperature" in msg


def test_a_judge_copying_its_example_is_named():
    same = [[False, False, True]] * 2
    groups = [group([0.2, 0.2], verdicts=same, teacher_verdicts=[False, False, True], index=i) for i in range(4)]
    msg = learning_signal(groups).message(1)
    assert "the rubricator wrote the same rubric for every prompt" in msg
    assert "the verifier gave every answer, teacher answers included, the same verdicts in 4 of 4" in msg


def test_too_easy_and_too_hard_rubrics_are_named():
    easy = learning_signal([group([1.0, 1.0], rubric_text=f"r{i}", index=i) for i in range(2)]).message()
    assert "every rollout passes every criterion (the rubric is too easy" in easy
    hard = learning_signal([group([0.0, 0.0], rubric_text=f"r{i}", index=i) for i in range(2)]).message()
    assert "every rollout fails every criterion" in hard


def test_failed_groups_do_not_count():
    groups = [group([0.5, 0.5], status="failed"), group([0.5, 0.5], status="failed"), group([0.0, 1.0])]
    assert learning_signal(groups) is None


def test_train_prints_the_no_signal_event(tmp_path, capsys):
    from ropd_tui.commands.train import _Follower

    store = RunStore(tmp_path / "ropd.db")
    run = store.create_run("r", "embedded", {"trainer": {"steps": 2}})
    follower = _Follower(store, run)
    report = learning_signal([group([0.5, 0.5], rollouts=["x", "x"]), group([0.5, 0.5], rollouts=["y", "y"])])
    store.add_event(run.id, "no_signal", report.message(1), step=1, data=report.data())
    follower.poll()
    out = capsys.readouterr().out
    assert "[no_signal] step 1: 2 of 2 scored groups carry no learning signal" in out
    store.close()


def test_embedded_run_with_a_judge_copying_its_example_warns_in_the_store(tmp_path):
    """The run that finished with only "finished" while frac_reward_zero_std was 1."""
    import json

    from loopback_server import LoopbackJudgeServer
    from test_trainer_embedded import make_cfg, new_run
    from tiny_llama import build_tiny_llama

    from engine.trainers import embedded

    tiny = build_tiny_llama(tmp_path / "model")
    store = RunStore(tmp_path / "runs" / "ropd.db")
    with LoopbackJudgeServer() as srv:
        example = {"schema_version": "ropd.batch_verifier.v2"}

        def copy_example(prompt, answers, criteria):  # the same verdicts for every answer
            return json.dumps(example | {"answers": [{"answer_index": i, "judgement": [False] * len(criteria)}
                                                     for i in range(1, len(answers) + 1)]})

        srv.verifier_fn = copy_example
        cfg = make_cfg(tmp_path, tiny, "trainer.steps=1", "judge.mode=llm",
                       f"judge.rubricator.base_url={srv.base_url}", f"judge.verifier.base_url={srv.base_url}",
                       "judge.rubricator.model=fake-judge", "judge.verifier.model=fake-judge")
        run = new_run(store, cfg)
        logged: list[str] = []
        assert embedded.run(cfg, store, run, log=logged.append).status == "finished"
    (event,) = store.events(run.id, kinds=["no_signal"])
    assert event["step"] == 1 and "2 of 2 scored groups carry no learning signal" in event["message"]
    assert "the verifier gave every answer, teacher answers included, the same verdicts" in event["message"]
    assert "every rollout fails every criterion" in event["message"]
    assert any(line.startswith("warning: step 1: 2 of 2") for line in logged)
    store.close()
