"""The task becomes parquet that verl's own RLHFDataset reads, with the validation marker and the
teacher-index key in extra_info; a user's JSONL task too."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402

from engine.config import load_config  # noqa: E402
from engine.errors import ConfigError  # noqa: E402
from engine.teacher.index import TeacherIndex  # noqa: E402
from engine.verl_backend.data import prepare_data  # noqa: E402


def dataset(path, tok):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    return RLHFDataset(data_files=[path], tokenizer=tok, config=OmegaConf.create(
        {"filter_overlong_prompts": False, "return_raw_chat": True, "max_prompt_length": 512}))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from test_verl_reward import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_demo_task_parquet_reads_in_verl_with_split_marker_and_teacher_key(tmp_path, tok):
    index = tmp_path / "ti.jsonl"
    cfg = load_config(None, ["task.num_prompts=6", f"teacher.index={index}", "task.system_prompt=Be brief.",
                             "scorer.k=2"])
    train, val = prepare_data(cfg, tmp_path / "data")
    tr, va = dataset(train, tok), dataset(val, tok)
    assert len(tr) == 6 and len(va) >= 1
    row = tr[0]
    assert row["raw_prompt"][0] == {"role": "system", "content": "Be brief."}
    assert row["extra_info"]["ropd_split"] == "train" and va[0]["extra_info"]["ropd_split"] == "val"
    assert row["reward_model"]["ground_truth"]
    # the teacher index (built for the demo task) is keyed by the task prompt carried in extra_info
    ti = TeacherIndex.load(index)
    assert len(ti.lookup(json.loads(row["extra_info"]["ropd_prompt"]), 2)) == 2


def test_jsonl_task_and_bad_rows(tmp_path, tok):
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"prompt": "Name a prime.", "data_source": "my/set"}) + "\n"
                   + json.dumps({"prompt": [{"role": "user", "content": "2+2?"}], "ground_truth": 4}) + "\n")
    cfg = load_config(None, ["task.name=jsonl", f"task.train_file={src}"])
    train, val = prepare_data(cfg, tmp_path / "data")
    rows = [dataset(train, tok)[i] for i in range(2)]
    assert rows[0]["data_source"] == "my_set"  # '/' would make verl's metric keys ambiguous
    assert rows[0]["reward_model"]["ground_truth"] is None and rows[1]["reward_model"]["ground_truth"] == "4"
    assert dataset(val, tok)[0]["extra_info"]["ropd_split"] == "val"  # no val_file: a slice of train, marked val
    src.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"train.jsonl:2: not valid JSON"):
        prepare_data(cfg, tmp_path / "data2")


def verl_style_parquet(path, rows):
    """Rows like verl's own example preprocessors write (examples/data_preprocess/gsm8k.py)."""
    import pandas as pd

    pd.DataFrame([{"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": q}], "ability": "math",
                   "reward_model": {"style": "rule", "ground_truth": gt},
                   "extra_info": {"split": split, "index": i}} for i, (q, gt, split) in enumerate(rows)]
                 ).to_parquet(path, index=False)
    return path


def test_users_parquet_validation_rows_are_marked_whatever_their_source(tmp_path, tok):
    train = verl_style_parquet(tmp_path / "train.parquet", [("What is 1 + 1?", "2", "train"),
                                                              ("What is 2 + 2?", "4", "train")])
    base = ["run.backend=verl", f"verl.model_path={tmp_path}", f"verl.train_files={train}"]
    # no verl.val_files: verl validates on the train file, so a marked copy of it is what verl reads
    tr, va = prepare_data(load_config(None, base), tmp_path / "d1")
    assert tr == str(train)
    assert [r["extra_info"]["ropd_split"] for r in dataset(va, tok)] == ["val", "val"]
    assert "ropd_split" not in dataset(tr, tok)[0]["extra_info"]  # training rows are left as they are
    # verl's test split carries split=test; marked too, data_source kept for verl's default_compute_score
    test = verl_style_parquet(tmp_path / "test.parquet", [("What is 3 + 3?", "6", "test")])
    _, va = prepare_data(load_config(None, base + [f"verl.val_files={test}"]), tmp_path / "d2")
    (row,) = [dataset(va, tok)[i] for i in range(1)]
    assert row["extra_info"]["ropd_split"] == "val" and row["extra_info"]["index"] == 0
    assert row["data_source"] == "openai/gsm8k" and row["reward_model"]["ground_truth"] == "6"


def test_validation_rows_without_ground_truth_are_refused_with_a_clear_message(tmp_path):
    from engine.verl_backend.data import check_validation_ground_truth

    nogt = verl_style_parquet(tmp_path / "val.parquet", [("Name a prime.", None, "test"), ("2+2?", "4", "test")])
    ok = verl_style_parquet(tmp_path / "train.parquet", [("What is 1 + 1?", "2", "train")])
    cfg = load_config(None, ["run.backend=verl", f"verl.model_path={tmp_path}", f"verl.train_files={ok}",
                             f"verl.val_files={nogt}"])
    with pytest.raises(ConfigError, match=r"1 of 2 validation rows from verl.val_files have no ground truth") as ei:
        check_validation_ground_truth(cfg)
    assert "trainer.test_freq=-1" in ei.value.hint
    assert check_validation_ground_truth(load_config(None, ["run.backend=verl", f"verl.train_files={ok}"])) == 1
    src = tmp_path / "task.jsonl"
    src.write_text(json.dumps({"prompt": "Name a prime."}) + "\n")
    with pytest.raises(ConfigError, match=r"task.train_file .*no ground truth|no ground truth"):
        check_validation_ground_truth(load_config(None, ["task.name=jsonl", f"task.train_file={src}"]))
