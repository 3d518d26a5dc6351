"""Training prompts for a run: the task's problems and the teacher index that goes with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ConfigError, TeacherIndexError
from engine.tasks.files import task_file_problems
from engine.types import Prompt, prompt_hash
# the demo's held-out problems use the verl backend's demo validation seed offset (a constant; the
# module imports nothing heavy)
from engine.verl_backend.data import DEMO_VAL_SEED_OFFSET


TASK_FILE_NAMES = ("file", "jsonl")  # jsonl: the older name of file (any format, by extension)


def load_problems(cfg: Config) -> list[dict[str, Any]]:
    """``[{"prompt": str | messages, "ground_truth": str | None, "data_source": str}]`` for ``cfg.task``."""
    task = cfg.task
    if task.name == "demo_math":
        from engine.tasks import demo_math

        return [dict(p) for p in demo_math.make_problems(task.num_prompts, task.seed)]
    if task.name in TASK_FILE_NAMES:
        if not task.train_file:
            raise ConfigError(f"task.name is '{task.name}' but task.train_file is not set",
                              hint="set task.train_file to a JSONL, Parquet or CSV file with a prompt column")
        return task_file_problems(task, Path(task.train_file), what="task.train_file")
    raise ConfigError(f"task.name: unknown task '{task.name}'", hint="use demo_math or file")


def load_validation_problems(cfg: Config, train_problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The held-out prompts (with ground truth) evaluated every ``trainer.eval_every`` steps, at most
    ``trainer.eval_prompts``; ``[]`` when evaluation is off.

    ``task.val_file`` when set (rows as in the train file, a ground truth required); else, for
    ``demo_math``, problems from another seed that are not training prompts.
    """
    t, task = cfg.trainer, cfg.task
    if t.eval_every <= 0:
        return []
    if task.val_file:
        rows = task_file_problems(task, Path(task.val_file), what="task.val_file", validation=True)
    elif task.name == "demo_math":
        rows = demo_heldout_problems(train_problems, t.eval_prompts, task.seed)
    else:
        raise ConfigError(f"trainer.eval_every is {t.eval_every} but task '{task.name}' has no validation set",
                          hint="set task.val_file to a file of held-out rows with a prompt and a ground truth "
                               "(JSONL, Parquet or CSV), or trainer.eval_every=0")
    return rows[:t.eval_prompts]


def demo_heldout_problems(train_problems: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` demo problems, deterministic in ``seed``, none of which is a training prompt."""
    from engine.tasks import demo_math

    train = {prompt_hash(p["prompt"]) for p in train_problems}
    # at most len(train) candidates can be training prompts, so n + len(train) distinct ones suffice
    candidates = demo_math.make_problems(n + len(train), seed + DEMO_VAL_SEED_OFFSET)
    return [dict(p) for p in candidates if prompt_hash(p["prompt"]) not in train][:n]


def chat_messages(prompt: Prompt, system_prompt: str | None) -> list[dict[str, Any]]:
    """The prompt as chat messages for the policy's chat template (a string becomes one user turn)."""
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = [dict(m) for m in prompt]
    if system_prompt and not any(m.get("role") == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def teacher_index_for(cfg: Config, problems: list[dict[str, Any]], *, build: bool = True, log=print):
    """Load the teacher index (building it first for the demo task when allowed)."""
    from engine.teacher.index import TeacherIndex

    if cfg.scorer.k == 0:  # no teacher answers wanted
        return None
    if not cfg.teacher.index:
        raise TeacherIndexError("teacher.index is not set",
                                hint="build one with `ropd-tui --headless index build ...` and set teacher.index")
    path = Path(cfg.teacher.index)
    if cfg.task.name == "demo_math" and cfg.teacher.build_if_missing and build:
        from engine.tasks import demo_math

        if not path.exists():
            log(f"building the demo teacher index at {path} ...")
        demo_math.ensure_teacher_index(path, problems, cfg.scorer.k)
    if not path.exists():
        raise TeacherIndexError(f"teacher index not found: {path}",
                                hint="build it with `ropd-tui --headless index build` (see README) or fix teacher.index")
    return TeacherIndex.load(path)
