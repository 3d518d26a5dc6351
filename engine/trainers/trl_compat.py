"""What the embedded trainer needs from TRL, checked before a run starts.

:class:`~engine.trainers.embedded.RopdGRPOTrainer` overrides private methods of TRL's ``GRPOTrainer``
and rewrites keys of the batch its loss reads. TRL may rename any of them in a release without notice;
the override would then never run, or write a key nobody reads, and failed groups would silently
return to the loss (its token normaliser grows by their tokens). :func:`check_trl` makes that a clear
error at preflight and at trainer start instead.

It checks the names and parameters of the overridden hooks, and that the batch keys the override
rewrites are both produced by ``_generate_and_score_completions`` and read by ``_compute_loss``
(string literals in their source). It does not prove the maths: ``tests/test_trainer_embedded.py``
checks the loss of a step with a failed group against the loss of its kept rows on the installed TRL.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

from engine.errors import DependencyError

# The TRL releases the trainer is tested against; pyproject.toml's `trainer` extra pins the same
# range (tests/test_trl_compat.py keeps the two equal).
SUPPORTED_TRL = ">=1.16,<1.17"

# hook -> the parameter names it must take (self first)
HOOKS: dict[str, tuple[str, ...]] = {
    "_generate": ("self", "prompts"),
    "_generate_and_score_completions": ("self", "inputs"),
    "_compute_loss": ("self", "model", "inputs"),
    "training_step": ("self", "model", "inputs", "num_items_in_batch"),
    "_save_checkpoint": ("self", "model", "trial"),
}

# batch keys the override rewrites (or reads) and the loss must consume
BATCH_KEYS = ("completion_ids", "completion_mask", "advantages", "num_items_in_batch")
# function -> the batch keys that must appear in it as string literals
KEYS_IN: dict[str, tuple[str, ...]] = {
    "_generate_and_score_completions": BATCH_KEYS + ("tool_mask",),
    "_compute_loss": ("completion_mask", "advantages", "num_items_in_batch", "tool_mask"),
}

_HINT = (f"install a supported TRL: pip install 'trl{SUPPORTED_TRL}' (or reinstall the trainer extra: "
         "pip install -e '.[trainer]')")


def check_trl(grpo_trainer: Any = None) -> str:
    """Raise :class:`DependencyError` unless the installed TRL has every hook and batch key the embedded
    trainer relies on; return a one-line note for the preflight. ``grpo_trainer``: the class to check
    (default: ``trl.GRPOTrainer``)."""
    version = _trl_version()
    if grpo_trainer is None:
        try:
            from trl import GRPOTrainer as grpo_trainer
        except Exception as err:  # ImportError, or a TRL that fails on import
            raise DependencyError(f"the embedded trainer needs TRL ({SUPPORTED_TRL}), which cannot be imported: "
                                  f"{type(err).__name__}: {err}", hint=_HINT) from None
    problems = _hook_problems(grpo_trainer) + _key_problems(grpo_trainer)
    if problems:
        raise DependencyError(
            f"the installed TRL {version or '(unknown version)'} does not have what the embedded trainer relies on "
            f"(supported: trl{SUPPORTED_TRL}): " + "; ".join(problems), hint=_HINT)
    if version is not None and not _in_range(version):
        return (f"trl {version}: outside the tested range {SUPPORTED_TRL}; the trainer's hooks and batch keys "
                "match, but training with it is untested")
    return f"trl {version or '(unknown version)'} (tested range {SUPPORTED_TRL}; hooks and batch keys checked)"


def _trl_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version("trl")
    except PackageNotFoundError:
        return None


def _in_range(version: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - packaging comes with transformers
        return True
    try:
        return Version(version) in SpecifierSet(SUPPORTED_TRL)
    except InvalidVersion:
        return False


def _hook_problems(cls: Any) -> list[str]:
    out = []
    for name, expected in HOOKS.items():
        fn = getattr(cls, name, None)
        if fn is None or not callable(fn):
            out.append(f"GRPOTrainer.{name} is missing")
            continue
        try:
            params = tuple(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            out.append(f"the signature of GRPOTrainer.{name} cannot be read")
            continue
        if params != expected:
            out.append(f"GRPOTrainer.{name}{_fmt(params)} has changed (expected {name}{_fmt(expected)})")
    return out


def _key_problems(cls: Any) -> list[str]:
    out = []
    for name, keys in KEYS_IN.items():
        fn = getattr(cls, name, None)
        if fn is None:
            continue  # reported by _hook_problems
        literals = _string_literals(fn)
        if literals is None:
            out.append(f"the source of GRPOTrainer.{name} cannot be read, so its batch keys cannot be checked")
            continue
        missing = [k for k in keys if k not in literals]
        if missing:
            verb = "produces" if name == "_generate_and_score_completions" else "reads"
            out.append(f"GRPOTrainer.{name} no longer {verb} the batch key(s) {', '.join(repr(k) for k in missing)}")
    return out


def _string_literals(fn: Any) -> set[str] | None:
    """The string constants in a function's source (comments and docstrings of other code excluded)."""
    try:
        src = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _fmt(params: tuple[str, ...]) -> str:
    return "(" + ", ".join(params) + ")"
