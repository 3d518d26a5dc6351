"""The run's task as verl parquet files.

verl's ``RLHFDataset`` reads rows with ``data_source``, ``prompt`` (chat messages), ``reward_model``
(``ground_truth``) and ``extra_info``. We add to ``extra_info``:

- ``ropd_split``: ``train`` or ``val`` - the validation marker the reward manager uses (verl does not
  tell a reward manager whether it is validating). It is set on EVERY row of the validation file verl
  reads, whatever its source: the task's validation problems, a user's ``verl.val_files``, or (when that
  is unset) a copy of ``verl.train_files``; so a validation rollout is never mistaken for a training one
  (which would wait for ``rollout.n`` siblings that never come);
- ``split``: the same value, for people reading the parquet (verl's own example datasets use it too);
- ``ropd_prompt``: the task's original prompt as JSON, the key of the teacher index (the chat form
  verl feeds the policy may carry a system prompt);
- ``ropd_data_source``: the task's data source before the ``/`` replacement below (verl's
  ``default_compute_score`` knows sources such as ``openai/gsm8k`` by that name).

``data_source`` values have ``/`` replaced by ``_``: verl's validation metric keys
``val-core/<data_source>/acc/mean@N`` are split on ``/``. (A user's own parquet is left as it is.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ConfigError

DEMO_VAL_SEED_OFFSET = 1000
SPLIT_KEY = "ropd_split"
VAL_SPLIT = "val"
TRAIN_SPLIT = "train"


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
    original_source = str(problem.get("data_source") or "ropd")
    return {
        "data_source": original_source.replace("/", "_"),
        "prompt": messages,
        "ability": "ropd",
        "reward_model": {"style": "rule", "ground_truth": None if gt is None else str(gt)},
        "extra_info": {**(problem.get("extra_info") or {}), "index": index, "split": split, SPLIT_KEY: split,
                       "ropd_prompt": json.dumps(prompt, ensure_ascii=False), "ropd_data_source": original_source},
    }


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def read_parquet_rows(path: str, what: str) -> list[dict[str, Any]]:
    """A local parquet file as a list of row dicts (ConfigError naming the key when it cannot be read)."""
    import pandas as pd

    p = Path(path).expanduser()
    if _is_remote(path):
        raise ConfigError(f"{what}: {path} is a remote path; validation rows are marked in a local copy",
                          hint="copy the file to a local (or shared) path and point the setting at it")
    if not p.exists():
        raise ConfigError(f"{what}: {p} does not exist")
    try:
        return pd.read_parquet(p).to_dict("records")
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise ConfigError(f"{what}: {p} is not a readable parquet file ({type(e).__name__}: {e})") from None


def mark_validation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with ``extra_info.ropd_split = val`` (and ``split``), whatever they carried before."""
    out = []
    for row in rows:
        row = dict(row)
        info = row.get("extra_info")
        info = dict(info) if isinstance(info, dict) else {}
        info[SPLIT_KEY] = VAL_SPLIT
        info["split"] = VAL_SPLIT
        row["extra_info"] = info
        out.append(row)
    return out


def ground_truth_of(row: dict[str, Any]) -> Any:
    rm = row.get("reward_model")
    return rm.get("ground_truth") if isinstance(rm, dict) else None


def validation_source(cfg: Config) -> tuple[str, str]:
    """(path, config key) of the user's parquet the validation rows come from (verl.train_files mode)."""
    if cfg.verl.val_files:
        return cfg.verl.val_files, "verl.val_files"
    return cfg.verl.train_files, "verl.train_files (used for validation because verl.val_files is not set)"


def validation_problems(cfg: Config) -> tuple[list[dict[str, Any]], str]:
    """The validation rows verl will read (task problems or the user's parquet rows) and where they come
    from, without writing anything."""
    if cfg.verl.train_files:
        path, what = validation_source(cfg)
        return read_parquet_rows(path, what), what
    train, val = task_problems(cfg)
    if val:
        return val, "task.val_file" if cfg.task.name == "jsonl" else "the demo task's held-out problems"
    return train[: max(1, len(train) // 4)], "task.train_file (a slice used for validation: task.val_file is not set)"


def check_validation_ground_truth(cfg: Config) -> int:
    """Validation is scored rule-based against the ground truth (no judge): every validation row needs
    one. Returns the number of validation rows; ConfigError naming the source otherwise."""
    rows, what = validation_problems(cfg)
    missing = [i for i, r in enumerate(rows)
               if (ground_truth_of(r) if cfg.verl.train_files else r.get("ground_truth")) in (None, "")]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(rows)} validation rows from {what} have no ground truth (first: row "
            f"{missing[0] + 1}); ROPD scores validation rule-based against the ground truth, without the judge",
            hint="give every validation row a ground truth (reward_model.ground_truth in parquet, ground_truth in "
                 "JSONL), point the validation setting at rows that have one, or turn validation off with "
                 "verl.overrides='[trainer.val_before_train=false, trainer.test_freq=-1]'")
    return len(rows)


def prepare_data(cfg: Config, out_dir: Path) -> tuple[str, str]:
    """The train/val parquet paths for this run. ``verl.train_files`` is passed to verl as it is; the
    validation file is always written here (``out_dir/val.parquet``) with every row marked as validation:
    from ``verl.val_files`` when set, else from ``verl.train_files``, else from the task."""
    if cfg.verl.train_files:
        path, what = validation_source(cfg)
        val_path = write_parquet(mark_validation(read_parquet_rows(path, what)), out_dir / "val.parquet")
        return cfg.verl.train_files, str(val_path)
    train, val = task_problems(cfg)
    sp = cfg.task.system_prompt
    train_path = write_parquet([to_row(p, i, TRAIN_SPLIT, sp) for i, p in enumerate(train)], out_dir / "train.parquet")
    val_rows = [to_row(p, i, VAL_SPLIT, sp) for i, p in enumerate(val or train[: max(1, len(train) // 4)])]
    val_path = write_parquet(val_rows, out_dir / "val.parquet")
    if cfg.task.name == "demo_math" and cfg.teacher.build_if_missing and cfg.teacher.index:
        from engine.tasks.demo_math import ensure_teacher_index

        ensure_teacher_index(cfg.teacher.index, train, cfg.scorer.k)
    return str(train_path), str(val_path)
