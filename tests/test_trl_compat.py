"""The start-up check of what the embedded trainer needs from TRL: a TRL whose hooks or batch keys
changed fails at preflight and at trainer start with the supported range named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trl

from engine.config import load_config
from engine.errors import DependencyError, UserError
from engine.trainers import trl_compat
from engine.trainers.preflight import preflight
from engine.trainers.trl_compat import SUPPORTED_TRL, check_trl

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_trl_has_every_hook_and_key():
    note = check_trl()
    assert trl.__version__ in note and SUPPORTED_TRL in note
    assert "outside" not in note


def test_the_trainer_extra_pins_the_checked_range():
    text = (ROOT / "pyproject.toml").read_text()
    trainer = re.search(r"^trainer = \[(.*?)^\]", text, re.S | re.M).group(1)
    pins = re.findall(r'"trl([^"]*)"', trainer)
    assert pins == [SUPPORTED_TRL]


def _assert_names_the_range(err: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(err.value)
    assert isinstance(err.value, UserError) and err.value.exit_code == 2
    assert f"trl{SUPPORTED_TRL}" in msg and "pip install" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_a_changed_hook_signature_is_named(monkeypatch):
    def _generate(self, prompts, images):  # a release that adds a parameter
        raise AssertionError("never called")

    monkeypatch.setattr(trl.GRPOTrainer, "_generate", _generate)
    with pytest.raises(DependencyError) as err:
        check_trl()
    _assert_names_the_range(err, "GRPOTrainer._generate(self, prompts, images) has changed",
                            "expected _generate(self, prompts)")


def test_a_renamed_hook_is_named(monkeypatch):
    monkeypatch.delattr(trl.GRPOTrainer, "_generate_and_score_completions")
    with pytest.raises(DependencyError) as err:
        check_trl()
    _assert_names_the_range(err, "GRPOTrainer._generate_and_score_completions is missing")


def test_a_loss_that_no_longer_reads_the_token_normaliser_is_named(monkeypatch):
    def _compute_loss(self, model, inputs):  # the normaliser renamed: our rewrite would go unread
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["tool_mask"]
        return (inputs["advantages"] * mask).sum() / inputs["num_tokens"]

    monkeypatch.setattr(trl.GRPOTrainer, "_compute_loss", _compute_loss)
    with pytest.raises(DependencyError) as err:
        check_trl()
    _assert_names_the_range(err, "GRPOTrainer._compute_loss no longer reads the batch key(s) 'num_items_in_batch'")


def test_a_class_passed_in_is_checked():
    class Bare:
        def _generate(self, prompts):
            pass

    with pytest.raises(DependencyError) as err:
        check_trl(Bare)
    _assert_names_the_range(err, "_generate_and_score_completions is missing", "_compute_loss is missing")
    assert "GRPOTrainer._generate " not in str(err.value)  # that one matches


def test_a_matching_trl_outside_the_range_is_a_note(monkeypatch):
    monkeypatch.setattr(trl_compat, "_trl_version", lambda: "1.17.0")
    note = check_trl()
    assert "trl 1.17.0: outside the tested range" in note and SUPPORTED_TRL in note


def _embedded_cfg(tmp_path):
    from tiny_llama import build_tiny_llama

    model = build_tiny_llama(tmp_path / "model")
    return load_config(None, [f"trainer.model={model}", "trainer.steps=1", "trainer.prompts_per_step=2",
                              "trainer.rollouts=2", "task.num_prompts=2", "judge.mode=offline",
                              f"teacher.index={tmp_path / 'teacher.jsonl'}", "templates.watch=false"])


def test_preflight_and_trainer_start_refuse_a_changed_trl(tmp_path, monkeypatch):
    from engine.store import RunStore
    from engine.trainers import embedded

    cfg = _embedded_cfg(tmp_path)
    notes = preflight(cfg, env={}, live=False)
    assert any(n.startswith(f"trl {trl.__version__}") for n in notes)

    def _generate_and_score_completions(self, inputs, mode):
        raise AssertionError("never called")

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_and_score_completions", _generate_and_score_completions)
    with pytest.raises(DependencyError, match=re.escape(f"trl{SUPPORTED_TRL}")):
        preflight(cfg, env={}, live=False)
    store = RunStore(tmp_path / "runs" / "ropd.db")
    try:
        run = store.create_run("t", "embedded", cfg.to_dict())
        loaded = []
        monkeypatch.setattr(embedded, "load_model_and_tokenizer", lambda *a, **k: loaded.append(a))
        with pytest.raises(DependencyError, match="_generate_and_score_completions"):
            embedded.run(cfg, store, run, log=lambda _m: None)
        assert loaded == []  # refused before the model was loaded
        assert "trainer_started" not in [e["kind"] for e in store.events(run.id)]
    finally:
        store.close()
