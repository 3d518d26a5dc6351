"""``index import``: teacher answers users already have (a teacher-output JSONL with 3 responses per
prompt, verl generation parquet, SFT conversations) into a teacher index, resumable and topping up, and
``index show`` reporting prompts with fewer than K answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from engine.teacher.importer import import_index
from engine.teacher.index import TeacherIndex, append_rows
from engine.trainers.preflight import preflight
from engine.types import prompt_hash
from ropd_tui.cli import main

QUESTIONS = ["What is 2 + 3?", "What is 7 - 4?", "What is 3 * 3?", "What is 10 / 2?"]
RESULTS = ["5", "3", "9", "5"]


def teacher_outputs(path: Path) -> Path:
    """Three responses per prompt, one row each (an earlier API run); the last prompt as chat messages."""
    rows = []
    for q, r in zip(QUESTIONS, RESULTS):
        prompt = [{"role": "user", "content": q}] if q == QUESTIONS[-1] else q
        for style in range(3):
            rows.append({"prompt": prompt, "response": f"<think>hmm</think>Working {style}: the result is {r}.\n{r}",
                         "model": "teacher-x"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_three_responses_per_prompt_become_one_row_per_prompt(tmp_path):
    out = tmp_path / "index.jsonl"
    summary = import_index(teacher_outputs(tmp_path / "teacher.jsonl"), out, teacher_model="teacher-x", k=4)
    assert (summary.rows, summary.prompts, summary.written, summary.answers_added) == (12, 4, 4, 12)
    index = TeacherIndex.load(out)
    assert len(index) == 4
    for q, r in zip(QUESTIONS, RESULTS):
        answers = index.lookup(q, 3)  # a string prompt also finds the chat spelling of the same question
        assert answers == [f"Working {s}: the result is {r}.\n{r}" for s in range(3)]  # reasoning stripped
    row = next(iter(index.rows.values()))
    assert row["key"] == prompt_hash(QUESTIONS[0])
    assert row["settings"] == {"source": "import", "file": "teacher.jsonl", "model": "teacher-x"}
    lines = "\n".join(summary.lines())
    assert "rows read: 12; prompts: 4 distinct, 4 written" in lines
    assert "4 of 4 prompts have fewer than k=4 answers" in lines


def test_importing_again_adds_nothing_and_an_interrupted_import_resumes(tmp_path):
    src, out = teacher_outputs(tmp_path / "teacher.jsonl"), tmp_path / "index.jsonl"
    import_index(src, out)
    size = out.stat().st_size
    again = import_index(src, out)
    assert (again.written, again.unchanged, again.duplicates) == (0, 4, 12)
    assert out.stat().st_size == size
    # an interrupted import: the last row half written
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 20])
    resumed = import_index(src, out)
    assert resumed.repaired and resumed.written == 1 and resumed.answers_added == 3
    assert all(len(r["answers"]) == 3 for r in TeacherIndex.load(out).rows.values())


def test_an_index_built_by_a_teacher_is_topped_up(tmp_path):
    out = tmp_path / "index.jsonl"
    built = {"model": "gpt-x", "temperature": 0.7, "max_tokens": 512, "reasoning_effort": None}
    append_rows(out, [{"prompt": QUESTIONS[0], "answers": ["Working 0: the result is 5.\n5", "It is 5."],
                       "settings": built}])
    summary = import_index(teacher_outputs(tmp_path / "teacher.jsonl"), out)
    assert summary.duplicates == 1 and summary.answers_added == 11
    row = TeacherIndex.load(out).row_for(QUESTIONS[0])
    assert row["answers"][:2] == ["Working 0: the result is 5.\n5", "It is 5."] and len(row["answers"]) == 4
    assert row["settings"] == {**built, "imported_from": "teacher.jsonl"}


def test_verl_generation_parquet_and_mapped_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    src = tmp_path / "gen.parquet"
    pd.DataFrame([{"question": [{"role": "user", "content": q}], "teacher_answers": [f"{r}", f"= {r}"]}
                  for q, r in zip(QUESTIONS, RESULTS)]).to_parquet(src)
    out = tmp_path / "index.jsonl"
    summary = import_index(src, out, prompt_key="question", response_key="teacher_answers", k=2)
    assert summary.answers_added == 8 and summary.short == []
    assert TeacherIndex.load(out).lookup([{"role": "user", "content": QUESTIONS[2]}], 2) == ["9", "= 9"]
    with pytest.raises(ConfigError, match=r"no column 'answer'; its columns: question, teacher_answers"):
        import_index(src, out, prompt_key="question", response_key="answer")


def test_sft_conversations_are_split_into_prompt_and_answer(tmp_path):
    src = tmp_path / "sft.jsonl"
    src.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": q},
                                                    {"role": "assistant", "content": r}]}) + "\n"
                           for q, r in zip(QUESTIONS, RESULTS)))
    out = tmp_path / "index.jsonl"
    import_index(src, out)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTIONS[1]}]
    assert TeacherIndex.load(out).answers_for(prompt) == ["3"]


def test_cli_import_show_and_train_preflight(tmp_path, capsys):
    src, out = teacher_outputs(tmp_path / "teacher.jsonl"), tmp_path / "index.jsonl"
    assert main(["--headless", "index", "import", "--from", str(src), "--out", str(out), "--k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "answers added: 12" in printed and "every prompt has at least k=3 answers" in printed
    append_rows(out, [{"prompt": "What is 1 + 1?", "answers": ["2"]}])
    assert main(["--headless", "index", "show", str(out), "--k", "3"]) == 0
    shown = capsys.readouterr().out
    assert "5 prompts" in shown and "1 of 5 prompts have fewer than k=3 answers" in shown
    assert "1 answer: 'What is 1 + 1?'" in shown
    # a run over those prompts finds its teacher answers
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": q, "ground_truth": r}) + "\n" for q, r in zip(QUESTIONS, RESULTS)))
    cfg = load_config(None, ["task.name=file", f"task.train_file={task}", f"teacher.index={out}", "scorer.k=3",
                             "judge.mode=offline", "trainer.prompts_per_step=2"])
    assert any(n.startswith("teacher index:") for n in preflight(cfg, env={}, live=False))
    # a missing column is exit code 2 with the columns named, no traceback
    assert main(["--headless", "index", "import", "--from", str(src), "--out", str(out),
                 "--response-key", "answer"]) == 2
    err = capsys.readouterr().err
    assert "no column 'answer'; its columns: model, prompt, response" in err and "Traceback" not in err


def test_index_build_reads_prompts_from_the_tasks_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    from engine.teacher.index import read_prompts

    src = tmp_path / "train.parquet"
    pd.DataFrame([{"prompt": [{"role": "user", "content": q}], "reward_model": {"ground_truth": r}}
                  for q, r in zip(QUESTIONS, RESULTS)]).to_parquet(src)
    assert read_prompts(src) == [[{"role": "user", "content": q}] for q in QUESTIONS]
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("problem\nWhat is 2 + 3?\n")
    assert read_prompts(csv_file, "problem") == ["What is 2 + 3?"]
    with pytest.raises(ConfigError, match=r"no column 'prompt'; its columns: problem \(--prompt-key\)"):
        read_prompts(csv_file)
