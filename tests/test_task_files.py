"""Task data from the files users have: JSONL, Parquet and CSV through `datasets`, column mapping,
verl-format parquet as it is (both backends), and the messages for a missing column, an empty split and
rows without a ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.teacher.index import append_rows
from engine.trainers import data as task_data
from engine.trainers.preflight import preflight

pd = pytest.importorskip("pandas")

VERL_ROWS = [
    {"data_source": "openai/gsm8k",
     "prompt": [{"role": "system", "content": "Think step by step."},
                {"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. How many in all?"}],
     "ability": "math", "reward_model": {"style": "rule", "ground_truth": "72"},
     "extra_info": {"index": 0, "split": "train", "answer": "48 + 24 = 72"}},
    {"data_source": "openai/gsm8k",
     "prompt": [{"role": "user", "content": "What is one half as a fraction?"}],
     "ability": "math", "reward_model": {"style": "rule", "ground_truth": r"\frac{1}{2}"},
     "extra_info": {"index": 1, "split": "train"}},
]


def verl_parquet(path: Path, rows=VERL_ROWS) -> Path:
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def cfg_for(tmp_path: Path, *extra: str):
    return load_config(None, ["task.name=file", "judge.mode=offline", "trainer.prompts_per_step=2",
                              "trainer.model=smollm2", f"teacher.index={tmp_path / 'teacher.jsonl'}", *extra])


def test_verl_format_parquet_is_read_as_it_is(tmp_path):
    src = verl_parquet(tmp_path / "gsm8k.parquet")
    problems = task_data.load_problems(cfg_for(tmp_path, f"task.train_file={src}"))
    assert [p["prompt"] for p in problems] == [r["prompt"] for r in VERL_ROWS]  # chat messages, nothing added
    assert [p["ground_truth"] for p in problems] == ["72", r"\frac{1}{2}"]
    assert [p["data_source"] for p in problems] == ["openai/gsm8k"] * 2
    # Parquet gives every struct every field (None where a row had none); the task keeps what the row had
    assert problems[1]["extra_info"] == {"index": 1, "split": "train"}


def test_the_embedded_preflight_runs_on_verl_parquet_with_an_index_of_its_prompts(tmp_path):
    src = verl_parquet(tmp_path / "gsm8k.parquet")
    cfg = cfg_for(tmp_path, f"task.train_file={src}", "scorer.k=2")
    append_rows(tmp_path / "teacher.jsonl", [{"prompt": r["prompt"], "answers": ["a", "b"]} for r in VERL_ROWS])
    notes = preflight(cfg, env={}, live=False)
    assert any("task: file, 2 prompts" in n and "2 with a ground truth" in n for n in notes)
    assert any("teacher index" in n and "2 prompts" in n for n in notes)


def test_verl_backend_writes_the_users_parquet_rows_with_their_extra_info(tmp_path):
    from engine.verl_backend.data import prepare_data  # imports no verl

    src = verl_parquet(tmp_path / "gsm8k.parquet")
    cfg = cfg_for(tmp_path, f"task.train_file={src}", f"task.val_file={src}")
    train, val = prepare_data(cfg, tmp_path / "data")
    rows = pd.read_parquet(train).to_dict("records")
    assert rows[0]["data_source"] == "openai_gsm8k"
    assert rows[0]["reward_model"]["ground_truth"] == "72"
    assert rows[0]["extra_info"]["answer"] == "48 + 24 = 72" and rows[0]["extra_info"]["split"] == "train"
    assert json.loads(rows[0]["extra_info"]["ropd_prompt"]) == VERL_ROWS[0]["prompt"]
    assert pd.read_parquet(val).to_dict("records")[1]["extra_info"]["split"] == "val"


def test_csv_with_mapped_columns_keeps_answers_as_written(tmp_path):
    src = tmp_path / "aime.csv"
    messages = json.dumps([{"role": "user", "content": "Find the remainder."}])
    src.write_text("id,problem,answer,source\n"
                   '1,"Find x, given x + 1 = 74.",073,aime24\n'
                   f'2,"{messages.replace(chr(34), chr(34) * 2)}",1000,aime25\n', encoding="utf-8")
    cfg = cfg_for(tmp_path, f"task.train_file={src}", "task.prompt_key=problem", "task.answer_key=answer",
                  "task.data_source_key=source")
    problems = task_data.load_problems(cfg)
    assert problems[0] == {"prompt": "Find x, given x + 1 = 74.", "ground_truth": "073", "data_source": "aime24"}
    assert problems[1]["prompt"] == [{"role": "user", "content": "Find the remainder."}]  # JSON messages in a cell


def test_jsonl_with_nested_keys_and_mixed_value_types(tmp_path):
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"q": {"text": "What is 2 + 2?"}, "label": 4},
        {"q": {"text": "What is 1/2 + 1/2?"}, "label": r"\frac{2}{2}"},
    ]) + "\n")
    cfg = cfg_for(tmp_path, f"task.train_file={src}", "task.prompt_key=q.text", "task.answer_key=label",
                  "task.system_prompt=Answer briefly.")
    problems = task_data.load_problems(cfg)
    assert [(p["prompt"], p["ground_truth"], p["data_source"]) for p in problems] == [
        ("What is 2 + 2?", "4", "mixed"), ("What is 1/2 + 1/2?", r"\frac{2}{2}", "mixed")]
    assert task_data.chat_messages(problems[0]["prompt"], cfg.task.system_prompt)[0] == {
        "role": "system", "content": "Answer briefly."}


def test_a_missing_column_names_the_columns_the_file_has(tmp_path):
    src = verl_parquet(tmp_path / "gsm8k.parquet")
    with pytest.raises(ConfigError, match=r"no column 'question'; its columns: ability, data_source, extra_info, "
                                          r"prompt, reward_model \(task.prompt_key\)") as err:
        task_data.load_problems(cfg_for(tmp_path, f"task.train_file={src}", "task.prompt_key=question"))
    assert "set task.prompt_key" in str(err.value)
    with pytest.raises(ConfigError, match=r"column 'reward_model' has no field 'answer'; its fields: ground_truth, "
                                          r"style \(task.answer_key\)"):
        task_data.load_problems(cfg_for(tmp_path, f"task.train_file={src}", "task.answer_key=reward_model.answer"))


def test_empty_splits_are_errors(tmp_path):
    csv_file = tmp_path / "empty.csv"
    csv_file.write_text("prompt,ground_truth\n")
    with pytest.raises(ConfigError, match=r"task.train_file .*empty.csv: no rows \(an empty split\)"):
        task_data.load_problems(cfg_for(tmp_path, f"task.train_file={csv_file}"))
    parquet = verl_parquet(tmp_path / "empty.parquet", rows=[])
    with pytest.raises(ConfigError, match="no rows"):
        task_data.load_problems(cfg_for(tmp_path, f"task.train_file={parquet}"))
    jsonl = tmp_path / "empty.jsonl"
    jsonl.write_text("\n")
    with pytest.raises(ConfigError, match="no rows"):
        task_data.load_problems(cfg_for(tmp_path, f"task.train_file={jsonl}"))


def test_rows_without_ground_truth(tmp_path):
    rows = [dict(VERL_ROWS[0]), {**VERL_ROWS[1], "reward_model": {"style": "rule", "ground_truth": None}}]
    src = verl_parquet(tmp_path / "partial.parquet", rows)
    # training: allowed (ROPD needs no ground truth), accuracy is measured on the rows that have one
    assert [p["ground_truth"] for p in task_data.load_problems(cfg_for(tmp_path, f"task.train_file={src}"))] == [
        "72", None]
    # validation needs one on every row
    cfg = cfg_for(tmp_path, f"task.train_file={src}", f"task.val_file={src}", "trainer.eval_every=1")
    with pytest.raises(ConfigError, match=r"partial.parquet row 2: this task.val_file row has no ground truth "
                                          r"\('reward_model.ground_truth'\); validation accuracy"):
        task_data.load_validation_problems(cfg, [])
    # so does an explicit answer_key, and a python: checker
    with pytest.raises(ConfigError, match=r"row 2: .*no ground truth.*task.answer_key is set"):
        task_data.load_problems(cfg_for(tmp_path, f"task.train_file={src}",
                                        "task.answer_key=reward_model.ground_truth"))
    with pytest.raises(ConfigError, match=r"task.checker python:m:f checks every answer"):
        task_data.load_problems(cfg_for(tmp_path, f"task.train_file={src}", "task.checker=python:m:f"))


def test_a_bad_parquet_file_is_named(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ConfigError, match=r"bad.parquet: cannot read it as parquet"):
        task_data.load_problems(cfg_for(tmp_path, f"task.train_file={bad}"))


def test_an_unknown_task_name(tmp_path):
    with pytest.raises(ConfigError, match="use demo_math or file"):
        task_data.load_problems(cfg_for(tmp_path, "task.name=parquet"))
