"""The demo math task: problems, rule-based answer checking, deterministic teacher answers."""

from __future__ import annotations

import pytest

from engine.tasks import check_answer, final_number
from engine.tasks import demo_math
from engine.teacher.index import TeacherIndex
from engine.types import prompt_text


def test_problems_are_deterministic_distinct_and_easy():
    a, b = demo_math.make_problems(40, seed=3), demo_math.make_problems(40, seed=3)
    assert a == b
    assert a != demo_math.make_problems(40, seed=4)
    texts = [prompt_text(p["prompt"]) for p in a]
    assert len(set(texts)) == 40
    ops = {p["extra_info"]["op"] for p in a}
    assert ops == {"add", "sub", "mul"}
    for p in a:
        assert p["data_source"] == "demo_math"
        assert p["prompt"][-1]["role"] == "user"
        assert p["prompt"][-1]["content"].endswith("Answer with just the number.")
        gt = int(p["ground_truth"])
        assert 0 < gt <= 25
        info = p["extra_info"]
        assert str(info["a"]) in texts[a.index(p)] and str(info["b"]) in texts[a.index(p)]
        # the question can be solved back from its text
        assert demo_math.solve_question(texts[a.index(p)])["answer"] == gt


@pytest.mark.parametrize("text,gt,ok", [
    ("7", "7", True), ("3 + 4 = 7\n7", "7", True), ("The answer is 7.", "7", True),
    ("The answer is 7. I hope this helps with 2 things", "7", True), ("\\boxed{12}", "12", True),
    ("8", "7", False), ("seven", "7", False), ("", "7", False), ("7.0", "7", True), ("1,000", "1000", True),
    ("<think>maybe 9</think>\n7", "7", True), ("It is Paris.", "paris", True), ("Paris.", "Paris", True),
    ("Paris is not it; Lyon", "Paris", False), ("The capital of France is Paris.", "Paris", True),
])
def test_check_answer(text, gt, ok):
    assert check_answer(text, gt) is ok


def test_final_number_prefers_boxed_then_stated_answer():
    assert final_number("x = 3, so \\boxed{5} and 9") == 5
    assert final_number("answer: 12 because 3 * 4") == 12
    assert final_number("no numbers") is None


@pytest.mark.parametrize("k", [1, 4, 7])
def test_teacher_answers_varied_correct_and_deterministic(k):
    for p in demo_math.make_problems(12, seed=1):
        answers = demo_math.teacher_answers(p, k)
        assert answers == demo_math.teacher_answers(p, k)
        assert len(answers) == k and len(set(answers)) == k
        for t in answers:
            assert check_answer(t, p["ground_truth"])
            assert t.strip().splitlines()[-1] == p["ground_truth"]


def test_teacher_answers_without_extra_info_uses_the_prompt_text():
    p = demo_math.make_problems(1, seed=0)[0]
    bare = {"prompt": p["prompt"], "ground_truth": p["ground_truth"]}
    assert demo_math.teacher_answers(bare, 4) == demo_math.teacher_answers(p, 4)
    with pytest.raises(ValueError):
        demo_math.teacher_answers({"prompt": "What is the capital of France?"}, 2)


def test_ensure_teacher_index_creates_and_tops_up(tmp_path):
    path = tmp_path / "idx" / "demo.jsonl"
    probs = demo_math.make_problems(5, seed=0)
    demo_math.ensure_teacher_index(path, probs[:3], 2)
    idx = TeacherIndex.load(path)
    assert len(idx) == 3
    assert idx.lookup(probs[0]["prompt"], 2) == demo_math.teacher_answers(probs[0], 2)
    size = path.stat().st_size
    demo_math.ensure_teacher_index(path, probs[:3], 2)  # nothing to do
    assert path.stat().st_size == size
    demo_math.ensure_teacher_index(path, probs, 4)  # tops up to 4, adds the two new prompts
    idx = TeacherIndex.load(path)
    assert len(idx) == 5
    assert all(len(idx.lookup(p["prompt"], 4)) == 4 for p in probs)
