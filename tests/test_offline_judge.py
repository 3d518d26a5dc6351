"""The offline (rule-based) judge: rubric induction, verification, scalar scores."""

from __future__ import annotations

import asyncio
import json

import pytest

from engine.config import load_config
from engine.judging.offline import OfflineJudge, criterion_check
from engine.judging.parsing import parse_rubric, parse_verifier
from engine.tasks import demo_math
from engine.types import Criterion, Rubric, prompt_text

PROBLEM = {"prompt": [{"role": "user", "content": "Sam has 9 apples. Sam gives away 5 apples. How many apples does "
                                                  "Sam have left? Answer with just the number."}],
           "ground_truth": "4", "data_source": "demo_math"}
QUESTION = prompt_text(PROBLEM["prompt"])
TEACHERS = ["9 - 5 = 4\n4", "Taking 5 away from 9 leaves 4.\n4", "We start with 9 apples and 5 go away, so 9 - 5 = 4.\n4",
            "Step 1: start with 9.\nStep 2: subtract 5.\nResult: 4.\n4"]
STUDENTS = [
    "9 - 5 = 4\n4",                                              # ideal
    "4",                                                          # right, no working
    "9 - 5 = 3\n3",                                               # wrong
    "9 + 5 = 14\n4",                                              # right number, wrong working
    "Sam had some apples. Sam had some apples. Sam had some apples. The answer is 4",  # rambling
    "Let me think about how many apples Sam",                     # cut off
]


def run(coro):
    return asyncio.run(coro)


def rewards(judge, rubric, answers):
    matrix, scores, _ = run(judge.verify(QUESTION, rubric, answers))
    total = rubric.total_points
    return [sum(c.points for c, v in zip(rubric.criteria, row) if v) / total for row in matrix], matrix, scores


def test_rubric_shape_and_ranking_of_answers():
    judge = OfflineJudge(load_config())
    rubric, calls = run(judge.rubricate(QUESTION, TEACHERS, STUDENTS, ground_truth="4"))
    assert 4 <= len(rubric.criteria) <= 12
    assert [c.id for c in rubric.criteria] == [f"c{i}" for i in range(1, len(rubric.criteria) + 1)]
    assert all(1 <= c.points <= 5 and c.text and c.category for c in rubric.criteria)
    assert rubric.criteria[0].text == "The final answer is 4." and rubric.criteria[0].points == 5
    assert rubric.maximum_score == rubric.total_points
    # the call record looks like an LLM call, and its raw reply is a valid reference-schema rubric
    (call,) = calls
    assert (call.role, call.model, call.endpoint, call.status, call.template_sha) == (
        "rubricator", "offline", "offline", "ok", None)
    reparsed = parse_rubric(call.raw_reply, min_criteria=4, max_criteria=12)
    assert [c.text for c in reparsed.criteria] == [c.text for c in rubric.criteria]

    r, matrix, scores = rewards(judge, rubric, STUDENTS + TEACHERS)
    ideal, bare, wrong, bad_work, rambling, cut = r[:6]
    assert all(t == 1.0 for t in r[6:])  # teachers pass everything they share
    assert ideal == 1.0
    # the question asks for just the number: the bare correct answer is exactly that, it does not lose
    # to the teachers' working
    assert bare == ideal > wrong
    assert bad_work < ideal and bad_work > wrong
    assert rambling < bare and cut < bare
    assert len(set(round(x, 3) for x in r[:6])) >= 4  # rewards vary across the group
    assert scores == [sum(c.points for c, v in zip(rubric.criteria, row) if v) for row in matrix]


def test_every_criterion_is_shared_by_teachers_and_discriminative():
    judge = OfflineJudge()
    rubric = judge.build_rubric(QUESTION, TEACHERS, STUDENTS, "4")
    for c in rubric.criteria:
        check = criterion_check(c.text)
        assert all(check(t) for t in TEACHERS), c.text
        assert any(not check(s) for s in STUDENTS), c.text


def test_ground_truth_optional_uses_teacher_majority():
    judge = OfflineJudge()
    rubric = judge.build_rubric(QUESTION, TEACHERS[:3] + ["5"], STUDENTS, None)
    assert rubric.criteria[0].text == "The final answer is 4."


def test_min_and_max_criteria_respected():
    cfg = load_config(None, ["scorer.min_criteria=2", "scorer.max_criteria=3"])
    rubric = OfflineJudge(cfg).build_rubric(QUESTION, TEACHERS, STUDENTS, "4")
    assert len(rubric.criteria) == 3 and rubric.criteria[0].points == 5
    # when all students are perfect few checks discriminate; the minimum is still met
    cfg = load_config(None, ["scorer.min_criteria=6"])
    rubric = OfflineJudge(cfg).build_rubric(QUESTION, TEACHERS, [TEACHERS[0]] * 3, "4")
    assert len(rubric.criteria) >= 6


def test_deterministic():
    judge = OfflineJudge()
    a = judge.build_rubric(QUESTION, TEACHERS, STUDENTS, "4")
    b = judge.build_rubric(QUESTION, TEACHERS, STUDENTS, "4")
    assert a == b
    assert judge.judge_matrix(a, STUDENTS) == judge.judge_matrix(b, STUDENTS)


def test_verify_raw_reply_matches_reference_schema():
    judge = OfflineJudge()
    rubric = judge.build_rubric(QUESTION, TEACHERS, STUDENTS, "4")
    matrix, _, calls = run(judge.verify(QUESTION, rubric, STUDENTS))
    parsed = parse_verifier(calls[0].raw_reply, n_answers=len(STUDENTS), n_criteria=len(rubric.criteria))
    assert [p[0] for p in parsed] == matrix


def test_foreign_rubric_is_verified_heuristically():
    judge = OfflineJudge()
    rubric = Rubric([Criterion("c1", "States that 9 - 5 equals 4", 5), Criterion("c2", "Talks about apples", 1)])
    matrix, _, _ = run(judge.verify(QUESTION, rubric, ["9 - 5 = 4", "I have apples: 3", "nothing"]))
    assert matrix == [[True, False], [False, True], [False, False]]


def test_text_ground_truth():
    judge = OfflineJudge()
    rubric = judge.build_rubric("What is the capital of France?", ["It is Paris.\nParis", "Paris"],
                                ["Paris", "Lyon"], "Paris")
    assert len(rubric.criteria) >= 4
    matrix = judge.judge_matrix(rubric, ["Paris", "Lyon"])
    assert matrix[0][0] is True and matrix[1][0] is False


def test_no_checkable_answer_fails_clearly():
    judge = OfflineJudge()
    with pytest.raises(Exception, match="checkable final answer"):
        run(judge.rubricate("Write a poem.", [], ["roses"]))


def test_scalar_scores():
    judge = OfflineJudge()
    scores, calls = run(judge.scalar_score(QUESTION, ["9 - 5 = 4\n4", "4", "3", "9 + 5 = 14\n4", "The apples"]))
    assert scores[0] == scores[1] == 10.0
    assert scores[2] < scores[3] < scores[1]
    assert all(0 <= s <= 10 for s in scores)
    assert json.loads(calls[0].raw_reply)["schema_version"] == "ropd.scalar_judge.v1"
    # without a recognisable question, the ground truth (or the pool majority) is the reference
    s2, _ = run(judge.scalar_score("Compute it.", ["5", "5", "6"], ground_truth="6"))
    assert s2[2] > s2[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_rewards_vary_on_demo_problems(seed):
    judge = OfflineJudge()
    for p in demo_math.make_problems(6, seed=seed):
        gt = int(p["ground_truth"])
        students = [str(gt), str(gt + 1), f"The answer is {gt}.", "I am not sure."]
        teachers = demo_math.teacher_answers(p, 4)
        q = prompt_text(p["prompt"])
        rubric, _ = run(judge.rubricate(q, teachers, students, ground_truth=p["ground_truth"]))
        matrix, scores, _ = run(judge.verify(q, rubric, students))
        assert scores[0] > scores[1] and scores[0] > scores[3]
        assert len(set(scores)) >= 3


def test_truncation_marker_is_not_read_as_the_answer():
    from engine.scoring.scorer import TRUNCATION_MARKER

    judge = OfflineJudge()
    rubric = judge.build_rubric(QUESTION, TEACHERS, STUDENTS, "4")
    cut = "9 - 5 = 4\n4" + TRUNCATION_MARKER.format(n=1234)
    assert judge.judge_matrix(rubric, [cut])[0][0] is True  # "The final answer is 4." still holds


# -- answers with no result, and the requested format ----------------------------------------------

FREE_QUESTION = "Sam has 9 apples. Sam gives away 5 apples. How many apples does Sam have left?"
NO_RESULT = ["I cannot provide that answer.", "", "   ", "I'm sorry, I can't help with apples."]


def test_result_criteria_fail_when_there_is_no_result():
    judge = OfflineJudge()
    rubric = judge.build_rubric(QUESTION, TEACHERS, STUDENTS + NO_RESULT, "4")
    result_criteria = [i for i, c in enumerate(rubric.criteria)
                       if c.text.startswith(("The final answer", "The answer gives no result", "Every number",
                                             "The answer writes the final value", "The answer ends with a line"))]
    assert len(result_criteria) >= 3
    matrix = judge.judge_matrix(rubric, NO_RESULT)
    for row in matrix:
        assert not any(row[i] for i in result_criteria), row
    r, _, _ = rewards(judge, rubric, STUDENTS + NO_RESULT)
    correct = [r[0], r[1]]
    refusal, empty, blank, apology = r[len(STUDENTS):]
    assert empty == blank == 0.0  # an empty answer earns nothing, not even for brevity
    assert max(refusal, apology) <= 0.25 < min(correct) - 0.5
    # the consistency criterion itself: no number at all is not "no result other than 4"
    consistent = criterion_check("The answer gives no result other than 4: its final number and every value "
                                 "after '=' or 'answer is' equal 4.")
    assert not consistent("I cannot provide that answer.") and consistent("9 - 5 = 4\n4")


def test_working_is_rewarded_only_when_the_format_was_not_prescribed():
    judge = OfflineJudge()
    free = judge.build_rubric(FREE_QUESTION, TEACHERS, STUDENTS, "4")
    bare_asked = judge.build_rubric(QUESTION, TEACHERS, STUDENTS, "4")
    assert any("quantity" in c.text or "intermediate" in c.text for c in free.criteria)
    assert not any("quantity" in c.text or "intermediate" in c.text for c in bare_asked.criteria)
    r, _, _ = rewards(judge, free, STUDENTS)
    assert r[0] > r[1]  # nobody asked for the bare number: the teachers' working counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_problems_bare_correct_answers_are_not_beaten_by_verbosity(seed):
    judge = OfflineJudge()
    for p in demo_math.make_problems(8, seed=seed):
        gt = int(p["ground_truth"])
        q = prompt_text(p["prompt"])
        teachers = demo_math.teacher_answers(p, 4)
        students = [str(gt), teachers[-1], f"The answer is {gt}.", str(gt + 1), "I cannot provide that answer.", ""]
        rubric, _ = run(judge.rubricate(q, teachers, students, ground_truth=p["ground_truth"]))
        matrix, scores, _ = run(judge.verify(q, rubric, students))
        r = [s / rubric.total_points for s in scores]
        bare, verbose, sentence, wrong, refusal, empty = r
        assert bare >= verbose and bare >= sentence, (q, r)
        assert min(bare, verbose) > max(wrong, refusal, empty), (q, r)
        assert empty == 0.0 and refusal < 0.3, (q, r)
