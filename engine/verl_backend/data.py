"""The run's task as verl parquet files.

verl's ``RLHFDataset`` reads rows with ``data_source``, ``prompt`` (chat messages), ``reward_model``
(``ground_truth``) and ``extra_info``. We add to ``extra_info``:

- ``split``: ``train`` or ``val`` - the validation marker the reward manager uses (verl does not tell a
  reward manager whether it is validating);
- ``ropd_prompt``: the task's original prompt as JSON, the key of the teacher index (the chat form
  verl feeds the policy may carry a system prompt).

``data_source`` values have ``/`` replaced by ``_``: verl's validation metric keys
``val-core/<data_source>/acc/mean@N`` are split on ``/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ConfigError

DEMO_VAL_SEED_OFFSET = 1000


def task_problems(cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, val) problems of the configured task: dicts with prompt, ground_truth, data_source."""
    t = cfg.task
    if t.name == "demo_math":
        from engine.tasks.demo_math import make_problems

        train = make_problems(t.num_prompts, t.seed)
        val = make_problems(max(8, t.num_prompts // 4), t.seed + DEMO_VAL_SEED_OFFSET)
        return train, val
    if t.name in ("file", "jsonl"):  # the user's JSONL, Parquet or CSV (verl-format parquet as it is)
        from engine.tasks.files import task_file_problems

        if not t.train_file:
            raise ConfigError(f"task.name is {t.name} but task.train_file is not set")
        train = task_file_problems(t, t.train_file, what="task.train_file")
        val = task_file_problems(t, t.val_file, what="task.val_file") if t.val_file else []
        return train, val
    raise ConfigError(f"task.name '{t.name}' is not known to the verl backend", hint="use demo_math or file")


def to_row(problem: dict[str, Any], index: int, split: str, system_prompt: str | None) -> dict[str, Any]:
    prompt = problem["prompt"]
    messages = [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    if system_prompt and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    gt = problem.get("ground_truth")
    source = str(problem.get("data_source") or "ropd").replace("/", "_")
    return {
        "data_source": source,
        "prompt": messages,
        "ability": "ropd",
        "reward_model": {"style": "rule", "ground_truth": None if gt is None else str(gt)},
        "extra_info": {**(problem.get("extra_info") or {}), "index": index, "split": split,
                       "ropd_prompt": json.dumps(prompt, ensure_ascii=False)},
    }


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def prepare_data(cfg: Config, out_dir: Path) -> tuple[str, str]:
    """The train/val parquet paths for this run: ``verl.train_files``/``val_files`` when set (the user's
    own parquet, which must carry ``extra_info.split`` on validation rows for rule-based validation),
    otherwise written from the task into ``out_dir``."""
    if cfg.verl.train_files:
        return cfg.verl.train_files, cfg.verl.val_files or cfg.verl.train_files
    train, val = task_problems(cfg)
    sp = cfg.task.system_prompt
    train_path = write_parquet([to_row(p, i, "train", sp) for i, p in enumerate(train)], out_dir / "train.parquet")
    val_rows = [to_row(p, i, "val", sp) for i, p in enumerate(val or train[: max(1, len(train) // 4)])]
    val_path = write_parquet(val_rows, out_dir / "val.parquet")
    if cfg.task.name == "demo_math" and cfg.teacher.build_if_missing and cfg.teacher.index:
        from engine.tasks.demo_math import ensure_teacher_index

        ensure_teacher_index(cfg.teacher.index, train, cfg.scorer.k)
    return str(train_path), str(val_path)
