"""Task data from the files users already have: JSON Lines, Parquet and CSV, with column mapping.

:func:`read_rows` reads a local file by its extension: ``.parquet`` / ``.pq`` and ``.csv`` / ``.tsv``
through Hugging Face ``datasets`` (its local Parquet and CSV builders, no hub access; CSV cells stay
strings, so an answer ``073`` keeps its zero), anything else as JSON Lines, read line by line so that
a bad line is named and a column may hold numbers in one row and text in another (``datasets``' JSON
reader refuses both).

:func:`task_problems_from_file` maps columns to the task's fields:

- the prompt (``task.prompt_key``, default ``prompt``): a string, or chat messages (a list of
  ``{"role", "content"}``; in CSV a JSON list in the cell);
- the ground truth (``task.answer_key``; default ``ground_truth``, else verl's ``reward_model.ground_truth``);
- the data source (``task.data_source_key``; default ``data_source`` when present, else the file name);
- verl's ``extra_info`` is kept as it is.

Dotted keys reach into nested columns (``reward_model.ground_truth``), so verl-format parquet
(``data_source``, ``prompt`` as chat messages, ``reward_model.ground_truth``, ``extra_info``) works
unchanged. A missing column names the columns the file has; an empty file and rows without a ground
truth where one is required are errors naming the file and the row.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

from engine.errors import ConfigError
from engine.types import Prompt

__all__ = ["read_rows", "task_problems_from_file", "normalise_prompt", "get_field", "MISSING", "file_format",
           "DEFAULT_ANSWER_KEYS"]

PARQUET = (".parquet", ".pq")
CSV = (".csv", ".tsv")
DEFAULT_ANSWER_KEYS = ("ground_truth", "reward_model.ground_truth")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def file_format(path: Path) -> str:
    """``parquet``, ``csv`` or ``jsonl`` (every other extension: JSON Lines)."""
    ext = path.suffix.lower()
    return "parquet" if ext in PARQUET else "csv" if ext in CSV else "jsonl"


# ---------------------------------------------------------------------------------------------
# reading rows

def read_rows(path: str | Path, *, what: str) -> list[tuple[str, dict[str, Any]]]:
    """``[(where, row)]`` of a local file (``where``: ``"PATH:LINE"`` for JSON Lines, ``"PATH row N"``
    otherwise). ConfigError for a missing, unreadable or empty file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}", hint="check the path (relative to where you run)")
    fmt = file_format(path)
    rows = _read_jsonl(path) if fmt == "jsonl" else _read_with_datasets(path, fmt, what)
    if not rows:
        raise ConfigError(f"{what} {path}: no rows (an empty split)",
                          hint="point it at a file with at least one row")
    return rows


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({err.msg})",
                                  hint="one JSON object per line (JSON Lines); .parquet and .csv files are read "
                                       "by their extension") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            rows.append((f"{path}:{lineno}", row))
    return rows


def _read_with_datasets(path: Path, fmt: str, what: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{what} {path}: reading {fmt} files needs the datasets package",
                          hint="pip install 'datasets>=3.0' (installed with ropd-tui)") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    kwargs: dict[str, Any] = {}
    if fmt == "parquet" and _parquet_rows(path) == 0:
        return []  # datasets' parquet reader fails on a file without rows
    if fmt == "csv":
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        header = _csv_header(path, sep)
        if not header:
            raise ConfigError(f"{what} {path}: no rows (an empty split)", hint="the file has no header line")
        # every column as text: an answer "073" or "1,000" stays as written; empty cells are None
        kwargs = {"sep": sep, "features": datasets.Features({c: datasets.Value("string") for c in header})}
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path.resolve()), split="train", **kwargs)
    except Exception as err:  # noqa: BLE001 - arrow/pandas errors: name the file and the cause
        if "corresponds to no data" in str(err):  # datasets' word for a split without rows
            return []
        cause = " ".join(str(err).split())[:300]
        raise ConfigError(f"{what} {path}: cannot read it as {fmt} ({type(err).__name__}: {cause})",
                          hint=f"check that it is a valid .{path.suffix.lstrip('.').lower()} file") from None
    return [(f"{path} row {i}", dict(row)) for i, row in enumerate(ds, 1)]


def _parquet_rows(path: Path) -> int | None:
    """Rows in a Parquet file by its footer (None when there is no readable footer: datasets says why)."""
    try:
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - not parquet: the datasets reader below names the problem
        return None


def _csv_header(path: Path, sep: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh, delimiter=sep):
            if row:
                return row
    return []


# ---------------------------------------------------------------------------------------------
# fields

def get_field(row: dict[str, Any], key: str) -> Any:
    """``row[key]``, following dots into nested mappings (``reward_model.ground_truth``); MISSING if absent."""
    if key in row:
        return row[key]
    cur: Any = row
    for part in key.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return MISSING
    return cur


def _present(rows: Iterable[dict[str, Any]], key: str) -> bool:
    return any(get_field(r, key) is not MISSING for r in rows)


def missing_column_error(source: str, rows: list[dict[str, Any]], key: str, setting: str, what: str) -> ConfigError:
    """'the file has no column K (setting); its columns: ...' (or the fields of the parent column)."""
    columns = sorted({str(k) for r in rows for k in r})
    head, _, _ = key.rpartition(".")
    if head and _present(rows, head):
        fields = sorted({str(k) for r in rows for k in (get_field(r, head) or {}) if isinstance(get_field(r, head), dict)})
        detail = f"column {head!r} has no field {key.rpartition('.')[2]!r}; its fields: {', '.join(fields) or '(none)'}"
    else:
        detail = f"no column {key!r}; its columns: {', '.join(columns) or '(none)'}"
    return ConfigError(f"{what} {source}: {detail} ({setting})",
                       hint=f"set {setting} to the column that holds {_ROLE.get(setting, 'it')} "
                            "(dots reach into nested columns, e.g. reward_model.ground_truth)")


_ROLE = {"task.prompt_key": "the prompt", "task.answer_key": "the ground truth",
         "task.data_source_key": "the data source", "--prompt-key": "the prompt", "--response-key": "the responses"}


def normalise_prompt(value: Any) -> Prompt | None:
    """A prompt as the task uses it: a non-empty string, or chat messages (``[{"role", "content", ...}]``,
    keys whose value is None dropped: Parquet gives every message every field). A CSV cell holding a JSON
    list of messages becomes messages. None when ``value`` is neither."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            messages = normalise_prompt(parsed) if isinstance(parsed, list) else None
            if messages is not None:
                return messages
        return value if text else None
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(m, dict) and m.get("role") is not None and "content" in m for m in value):
        return [{str(k): v for k, v in m.items() if v is not None} for m in value]
    return None


def normalise_ground_truth(value: Any) -> str | None:
    if value is None or value is MISSING:
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False) \
        if isinstance(value, (list, dict)) else str(value)
    return text if text.strip() else None


# ---------------------------------------------------------------------------------------------
# task problems

def task_problems_from_file(path: str | Path, *, what: str, prompt_key: str = "prompt",
                            answer_key: str | None = None, data_source_key: str | None = None,
                            require_ground_truth: bool = False, require_reason: str = "") -> list[dict[str, Any]]:
    """``[{"prompt", "ground_truth", "data_source"[, "extra_info"]}]`` from a task file.

    ``require_ground_truth``: every row needs one (``require_reason`` says why, in the error). An
    explicitly set ``answer_key`` must exist as a column; the default looks for ``ground_truth``, then
    ``reward_model.ground_truth``, and rows may lack one.
    """
    path = Path(path)
    located = read_rows(path, what=what)
    rows = [r for _, r in located]
    if not _present(rows, prompt_key):
        raise missing_column_error(str(path), rows, prompt_key, "task.prompt_key", what)
    if answer_key:
        if not _present(rows, answer_key):
            raise missing_column_error(str(path), rows, answer_key, "task.answer_key", what)
        gt_key: str | None = answer_key
    else:
        gt_key = next((k for k in DEFAULT_ANSWER_KEYS if _present(rows, k)), None)
    if data_source_key and not _present(rows, data_source_key):
        raise missing_column_error(str(path), rows, data_source_key, "task.data_source_key", what)
    ds_key = data_source_key or ("data_source" if _present(rows, "data_source") else None)
    problems: list[dict[str, Any]] = []
    missing_gt: list[str] = []
    for where, row in located:
        raw_prompt = get_field(row, prompt_key)
        prompt = normalise_prompt(raw_prompt)
        if prompt is None:
            got = "nothing" if raw_prompt is MISSING or raw_prompt is None else f"a {type(raw_prompt).__name__}"
            raise ConfigError(f"{where}: the prompt ({prompt_key!r}) must be a non-empty string or a list of chat "
                              f"messages with role and content, got {got}",
                              hint="fix the row, or point task.prompt_key at the prompt column")
        gt = normalise_ground_truth(get_field(row, gt_key)) if gt_key else None
        if gt is None:
            missing_gt.append(where)
        source = get_field(row, ds_key) if ds_key else MISSING
        problem: dict[str, Any] = {"prompt": prompt, "ground_truth": gt,
                                   "data_source": str(source) if source not in (MISSING, None, "") else path.stem}
        extra = row.get("extra_info")
        if isinstance(extra, dict):
            problem["extra_info"] = {k: v for k, v in extra.items() if v is not None}
        problems.append(problem)
    if require_ground_truth and missing_gt:
        key = gt_key or " or ".join(repr(k) for k in DEFAULT_ANSWER_KEYS)
        key = repr(key) if gt_key else key
        raise ConfigError(f"{missing_gt[0]}: this {what} row has no ground truth ({key})"
                          + (f", and {len(missing_gt) - 1} more rows" if len(missing_gt) > 1 else "")
                          + (f"; {require_reason}" if require_reason else ""),
                          hint="add a ground truth to every row, or set task.answer_key to the column that "
                               "holds it")
    return problems


def task_file_problems(task: Any, path: str | Path, *, what: str, validation: bool = False) -> list[dict[str, Any]]:
    """The problems of ``task.train_file`` / ``task.val_file`` with the task's column mapping.

    Every row needs a ground truth for validation (accuracy is checked against it), when
    ``task.answer_key`` is set explicitly, and with a ``python:`` checker; otherwise training rows may
    have none (ROPD's reward needs no ground truth; accuracy is then not measured for them).
    """
    checker = str(getattr(task, "checker", "") or "")
    answer_key = getattr(task, "answer_key", None)
    if validation:
        reason = "validation accuracy checks each answer against it"
    elif answer_key:
        reason = "task.answer_key is set"
    elif checker.startswith("python:"):
        reason = f"task.checker {checker} checks every answer against it"
    else:
        reason = ""
    return task_problems_from_file(path, what=what, prompt_key=getattr(task, "prompt_key", None) or "prompt",
                                   answer_key=answer_key, data_source_key=getattr(task, "data_source_key", None),
                                   require_ground_truth=bool(reason), require_reason=reason)
