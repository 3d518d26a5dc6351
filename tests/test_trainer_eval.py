"""Validation accuracy in the embedded trainer: the held-out set, greedy evaluation, the steps it runs
after, what lands in the store, and bad validation files (tiny random Llama; seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.store import RunStore
from engine.tasks import check_answer
from engine.trainers import data as task_data
from engine.trainers import embedded
from engine.trainers.evaluate import evaluate
from engine.trainers.preflight import preflight
from engine.types import prompt_hash


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def store(tmp_path) -> RunStore:
    s = RunStore(tmp_path / "runs" / "ropd.db")
    yield s
    s.close()


def make_cfg(tmp_path: Path, tiny_model: Path | str, *extra: str):
    return load_config(None, [
        f"trainer.model={tiny_model}", "trainer.steps=3", "trainer.prompts_per_step=2", "trainer.rollouts=2",
        "trainer.max_new_tokens=5", "trainer.learning_rate=1e-3", "trainer.threads=1", "task.num_prompts=4",
        f"teacher.index={tmp_path / 'teacher.jsonl'}", "judge.mode=offline", "templates.watch=false",
        *extra])


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def new_run(store: RunStore, cfg, name: str = "t"):
    cfg.run.name = name
    return store.create_run(name, "embedded", cfg.to_dict())


# -- the validation set ---------------------------------------------------------------------------

def test_demo_heldout_problems_are_disjoint_from_training_and_deterministic(tmp_path):
    cfg = make_cfg(tmp_path, "smollm2", "task.num_prompts=200", "trainer.eval_every=1", "trainer.eval_prompts=40")
    train = task_data.load_problems(cfg)
    val = task_data.load_validation_problems(cfg, train)
    assert len(val) == 40
    train_keys = {prompt_hash(p["prompt"]) for p in train}
    assert not train_keys & {prompt_hash(p["prompt"]) for p in val}
    assert len({prompt_hash(p["prompt"]) for p in val}) == 40  # distinct
    assert all(p["ground_truth"] and check_answer(p["ground_truth"], p["ground_truth"]) for p in val)
    assert task_data.load_validation_problems(cfg, train) == val  # same set every time


def test_no_validation_set_when_eval_is_off(tmp_path):
    cfg = make_cfg(tmp_path, "smollm2")
    assert cfg.trainer.eval_every == 0
    assert task_data.load_validation_problems(cfg, task_data.load_problems(cfg)) == []


def test_val_file_replaces_the_demo_heldout_set_and_is_capped(tmp_path):
    path = write_jsonl(tmp_path / "val.jsonl", [{"prompt": f"What is {i} + 1?", "ground_truth": str(i + 1)}
                                                for i in range(5)])
    cfg = make_cfg(tmp_path, "smollm2", "trainer.eval_every=2", "trainer.eval_prompts=3", f"task.val_file={path}")
    val = task_data.load_validation_problems(cfg, task_data.load_problems(cfg))
    assert [p["prompt"] for p in val] == [f"What is {i} + 1?" for i in range(3)]
    assert [p["ground_truth"] for p in val] == ["1", "2", "3"]


@pytest.mark.parametrize("bad_row, words", [
    ({"prompt": "What is 2 + 2?"}, "ground_truth"),
    ({"prompt": "What is 2 + 2?", "ground_truth": "  "}, "ground_truth"),
    ({"question": "What is 2 + 2?", "ground_truth": "4"}, "prompt"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_val_file_row_is_a_config_error_naming_file_and_line(tmp_path, bad_row, words):
    path = write_jsonl(tmp_path / "val.jsonl", [{"prompt": "What is 1 + 1?", "ground_truth": "2"}, bad_row])
    cfg = make_cfg(tmp_path, "smollm2", "trainer.eval_every=1", f"task.val_file={path}")
    with pytest.raises(ConfigError, match=words) as err:
        task_data.load_validation_problems(cfg, task_data.load_problems(cfg))
    assert f"{path}:2" in str(err.value)
    # `ropd-tui train` checks it before a run exists
    with pytest.raises(ConfigError, match=words):
        preflight(cfg, env={}, live=False)


def test_missing_val_file_and_missing_validation_set_are_config_errors(tmp_path):
    cfg = make_cfg(tmp_path, "smollm2", "trainer.eval_every=1", f"task.val_file={tmp_path / 'nope.jsonl'}")
    with pytest.raises(ConfigError, match="task.val_file not found"):
        task_data.load_validation_problems(cfg, [])
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "What is 1 + 1?", "ground_truth": "2"}])
    cfg = make_cfg(tmp_path, "smollm2", "trainer.eval_every=1", "task.name=jsonl", f"task.train_file={train}")
    with pytest.raises(ConfigError, match="trainer.eval_every"):
        task_data.load_validation_problems(cfg, task_data.load_problems(cfg))


@pytest.mark.parametrize("override, key", [("trainer.eval_every=-1", "trainer.eval_every"),
                                           ("trainer.eval_prompts=0", "trainer.eval_prompts")])
def test_eval_settings_are_validated(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


# -- greedy evaluation ----------------------------------------------------------------------------

def test_evaluate_is_greedy_batched_and_checks_answers(tiny_model):
    from engine.trainers.model_cache import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model)
    model.train()
    problems = [{"prompt": f"What is {i} + 2?", "ground_truth": str(i + 2)} for i in range(5)]
    one_batch = evaluate(model, tok, problems, system_prompt=None, max_new_tokens=6, batch_size=8)
    batched = evaluate(model, tok, problems, system_prompt=None, max_new_tokens=6, batch_size=2)
    assert model.training  # the trainer's mode is restored
    assert one_batch.texts == batched.texts  # greedy: deterministic and independent of the batching
    assert len(one_batch.texts) == 5 and all(1 <= n <= 6 for n in one_batch.lengths)
    assert one_batch.correct == [check_answer(t, p["ground_truth"]) for t, p in zip(one_batch.texts, problems)]
    # correctness really is checked against the ground truth: an answer's own final number passes
    own = [{"prompt": p["prompt"], "ground_truth": t} for p, t in zip(problems, one_batch.texts)]
    again = evaluate(model, tok, own, system_prompt=None, max_new_tokens=6, batch_size=8)
    assert again.correct == [check_answer(t, t) for t in one_batch.texts]
    m = one_batch.metrics()
    assert 0.0 <= m["val/accuracy"] <= 1.0 and m["val/response_length"] == sum(one_batch.lengths) / 5
    assert m["time/eval"] >= 0.0
    # progress: tokens of the running batch, then prompts done after each batch
    seen: list[tuple[int, int]] = []
    evaluate(model, tok, problems, system_prompt=None, max_new_tokens=6, batch_size=2,
             progress=lambda done, tokens: seen.append((done, tokens)))
    assert [d for d, t in seen if t == 0] == [2, 4, 5]
    assert (0, 1) in seen and all(t <= 6 for _, t in seen)


# -- in training ----------------------------------------------------------------------------------

def test_validation_runs_every_n_steps_and_at_the_last(tmp_path, tiny_model, store):
    cfg = make_cfg(tmp_path, tiny_model, "trainer.eval_every=2", "trainer.eval_prompts=3")
    run = new_run(store, cfg)
    lines: list[str] = []
    result = embedded.run(cfg, store, run, log=lines.append)
    assert result.status == "finished" and result.last_step == 3
    acc = dict(store.metric_series(run.id, "val/accuracy"))
    assert sorted(acc) == [2, 3]  # step 2 (every 2) and step 3 (the last)
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert sorted(dict(store.metric_series(run.id, "val/response_length"))) == [2, 3]
    assert sorted(dict(store.metric_series(run.id, "time/eval"))) == [2, 3]
    # the step's training metrics are still there next to the validation ones
    assert sorted(dict(store.metric_series(run.id, "reward/mean"))) == [1, 2, 3]
    assert [s["step"] for s in store.steps(run.id)] == [1, 2, 3]
    evals = [ln for ln in lines if ln.startswith("eval after step")]
    assert len(evals) == 2 and "/3 held-out prompts" in evals[0]
    assert "eval" in store.progress([run.id])[run.id]["totals"]  # evaluating is timed as its own phase


def test_no_validation_metrics_when_eval_is_off(tmp_path, tiny_model, store):
    cfg = make_cfg(tmp_path, tiny_model, "trainer.steps=1")
    run = new_run(store, cfg)
    assert embedded.run(cfg, store, run, log=lambda _m: None).status == "finished"
    assert not [k for k in store.metric_keys(run.id) if k.startswith("val/") or k == "time/eval"]


def test_a_bad_val_file_fails_the_run_before_the_model_loads(tmp_path, store):
    path = write_jsonl(tmp_path / "val.jsonl", [{"prompt": "What is 1 + 1?"}])
    cfg = make_cfg(tmp_path, tmp_path / "no-model-here", "trainer.eval_every=1", f"task.val_file={path}")
    run = new_run(store, cfg)
    with pytest.raises(ConfigError, match=f"{path}:1"):
        embedded.run(cfg, store, run, log=lambda _m: None)


# -- the TUI's accuracy panel -----------------------------------------------------------------------

def test_run_screen_accuracy_panel_draws_validation_next_to_training(tmp_path, store):
    from ropd_tui.screens.views import PANELS, panel_lines

    run = store.create_run("v", "embedded", {})
    for step in (1, 2, 3):
        store.write_step(run.id, step, {"accuracy": 0.1 * step})
    store.write_metrics(run.id, 3, {"val/accuracy": 0.5})
    panel = next(p for p in PANELS if p.title == "accuracy")
    lines = panel_lines(store, run.id, list(store.metric_keys(run.id)), panel, "v")
    assert [(s.label, s.steps, s.values) for s in lines] == [
        ("train", [1.0, 2.0, 3.0], pytest.approx([0.1, 0.2, 0.3])), ("val", [3.0], [0.5])]
    # a run with validation accuracy only still gets its curve
    only = store.create_run("w", "embedded", {})
    store.write_metrics(only.id, 1, {"val/accuracy": 0.25})
    lines = panel_lines(store, only.id, list(store.metric_keys(only.id)), panel, "w")
    assert [(s.label, s.values) for s in lines] == [("val", [0.25])]
