"""The ROPD scorer end to end against the loopback judge server (real HTTP through the openai SDK)."""

from __future__ import annotations

import asyncio

import pytest

from engine.config import load_config
from engine.errors import ScoringFailureRateError
from engine.scoring.scorer import REFERENCE_LABEL, Scorer, strip_reasoning, truncate, weighted_reward
from engine.templates.render import Template
from engine.types import GroupInput, to_jsonable
from loopback_server import ANSWER_RE, loopback_config


def make_groups(n: int = 3, rollouts: int = 4, k: int = 2, *, slow: set[int] = frozenset()) -> list[GroupInput]:
    """Groups 'What is a + b?' with unique teacher answers and a mix of right and wrong rollouts."""
    groups = []
    for g in range(n):
        a, b = 10 + g, 20 + 3 * g
        right = a + b
        teachers = [f"Teacher {g}.{t}: {a} + {b} = {right}. The answer is {right}." for t in range(k)]
        rolls = []
        for i in range(rollouts):
            if i % 2 == 0:
                rolls.append(f"Student {g}.{i}: {a} + {b} = {right}. The answer is {right}.")
            else:
                rolls.append(f"Student {g}.{i}: I guess {right + i}.")
        q = f"What is {a} + {b}?" + (" SLOW" if g in slow else "")
        groups.append(GroupInput(prompt=q, rollouts=rolls, ground_truth=str(right), teacher_answers=teachers,
                                 uid=f"g{g}"))
    return groups


def score(cfg, groups, **kw):
    return Scorer(cfg, **kw).score_batch_sync(groups)


def verifier_answers(req) -> list[str]:
    return [text for _, text in ANSWER_RE.findall(req.prompt)]


# -- unit helpers ------------------------------------------------------------------------------

def test_reward_is_recomputed_weighted_pass_rate_clamped():
    assert weighted_reward([5, 3, 2], [True, False, True], 1e-6) == pytest.approx(7 / 10, rel=1e-5)
    assert weighted_reward([5], [True], 0.0) == 1.0
    assert weighted_reward([1, 1], [False, False], 1e-6) == 0.0


def test_strip_reasoning_and_truncate():
    assert strip_reasoning("<think>a</think>b</think> final") == "final"
    assert strip_reasoning("no think") == "no think"
    text, cut = truncate("x" * 50, 10)
    assert cut and text.startswith("x" * 10) and "truncated: 40 more characters" in text
    assert truncate("short", 10) == ("short", False)


# -- the normal path ---------------------------------------------------------------------------

def test_shared_rubric_scores_every_answer(judge_server):
    judge_server.final_score_offset = 100  # the judge's own arithmetic is wrong: it must not matter
    cfg = loopback_config(judge_server, "scorer.k=2")
    batch = score(cfg, make_groups(3))
    assert len(batch.groups) == 3 and batch.failure_rate == 0
    for g in batch.groups:
        assert g.status == "ok" and g.judge_kind == "llm"
        assert len(g.rubric.criteria) == 4
        points = [c.points for c in g.rubric.criteria]
        for a in g.answers:
            assert len(a.verdicts) == 4
            assert a.reward == pytest.approx(weighted_reward(points, a.verdicts, cfg.scorer.eps))
            assert 0.0 <= a.reward <= 1.0
            assert a.judge_score >= 100  # recorded, never used
        rewards = g.student_rewards
        assert rewards[0] > rewards[1]  # right answers beat wrong guesses
        assert [a.correct for a in g.student_answers] == [True, False, True, False]
        assert all(a.correct for a in g.teacher_answers)
        assert sorted(a.pool_position for a in g.answers) == list(range(1, 7))
        assert [c.role for c in g.calls] == ["rubricator", "verifier"]
        assert all(c.prompt_tokens and c.completion_tokens and c.raw_reply for c in g.calls)
        assert g.template_versions == {"rubricator": Template.default("rubricator").sha256,
                                       "verifier": Template.default("verifier").sha256}
        assert g.wall_s > 0
    to_jsonable(batch)  # everything is plain data


def test_teacher_answers_are_unlabelled_and_pool_is_shuffled_reproducibly(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=2")
    groups = make_groups(4)
    score(cfg, groups)
    orders = []
    for req in judge_server.requests_for("verifier"):
        answers = verifier_answers(req)
        assert len(answers) == 6
        teacher_texts = [a for a in answers if a.startswith("Teacher")]
        assert len(teacher_texts) == 2  # present, verbatim, with nothing added
        assert "reference" not in req.prompt.lower().split("## answers")[-1]
        orders.append([a.split(":")[0] for a in answers])
    # students-then-teachers is not the order sent (for at least one group)
    assert any(o != sorted(o, key=lambda s: (s.startswith("Teacher"), s)) for o in orders)
    # same seed -> same order; another seed -> another order
    judge_server.reset()
    score(cfg, groups)
    again = [[a.split(":")[0] for a in verifier_answers(r)] for r in judge_server.requests_for("verifier")]
    assert sorted(map(tuple, again)) == sorted(map(tuple, orders))
    judge_server.reset()
    score(loopback_config(judge_server, "scorer.k=2", "scorer.shuffle_seed=7"), groups)
    other = [[a.split(":")[0] for a in verifier_answers(r)] for r in judge_server.requests_for("verifier")]
    assert sorted(map(tuple, other)) != sorted(map(tuple, orders))


def test_blind_off_labels_teacher_answers(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=2", "scorer.blind=false")
    batch = score(cfg, make_groups(1))
    assert batch.groups[0].status == "ok"
    answers = verifier_answers(judge_server.requests_for("verifier")[0])
    labelled = [a for a in answers if a.startswith(REFERENCE_LABEL.strip())]
    assert len(labelled) == 2 and all("Teacher" in a for a in labelled)


def test_teacher_not_in_pool_verifies_rollouts_only(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=2", "scorer.teacher_in_pool=false")
    g = score(cfg, make_groups(1))[0] if False else score(cfg, make_groups(1)).groups[0]
    assert g.status == "ok"
    assert len(verifier_answers(judge_server.requests_for("verifier")[0])) == 4
    assert all(a.reward is not None for a in g.student_answers)
    assert all(a.reward is None and a.verdicts is None for a in g.teacher_answers)
    # the rubricator still saw the teacher answers
    assert "Teacher 0.0" in judge_server.requests_for("rubricator")[0].prompt


def test_pair_scope_rewards_are_means_over_pairs(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=2", "scorer.rubric_scope=pair")
    g = score(cfg, make_groups(1, rollouts=3)).groups[0]
    assert g.status == "ok"
    assert len(judge_server.requests_for("rubricator")) == 6
    assert len(judge_server.requests_for("verifier")) == 6
    pairs = g.meta["pairs"]
    assert len(pairs) == 6
    for st in g.student_answers:
        mine = [p["student_reward"] for p in pairs if p["student"] == st.index]
        assert len(mine) == 2 and st.reward == pytest.approx(sum(mine) / 2)
    for t in g.teacher_answers:
        assert t.reward == pytest.approx(sum(p["teacher_reward"] for p in pairs if p["teacher"] == t.index) / 3)
    # each rubricator call saw one teacher answer and one rollout
    rp = judge_server.requests_for("rubricator")[0].prompt
    assert rp.count("<teacher_answer id=") == 1 and rp.count("<student_answer id=") == 1


def test_scalar_judge_mode(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=2", "scorer.reward_mode=scalar_judge")
    g = score(cfg, make_groups(1)).groups[0]
    assert g.status == "ok" and g.reward_mode == "scalar_judge" and g.rubric is None
    assert [r.role for r in judge_server.requests] == ["scalar_judge"]
    assert g.student_rewards == [0.9, 0.2, 0.9, 0.2]
    assert [a.judge_score for a in g.student_answers] == [9.0, 2.0, 9.0, 2.0]


def test_verifier_chunks_use_the_same_rubric(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=4", "scorer.verifier_chunk_size=5")
    g = score(cfg, make_groups(1, rollouts=8, k=4)).groups[0]
    assert g.status == "ok"
    reqs = judge_server.requests_for("verifier")
    assert sorted(len(verifier_answers(r)) for r in reqs) == [2, 5, 5]
    rubric_blocks = {r.prompt.split("## Rubric")[1].split("## Answers")[0] for r in reqs}
    assert len(rubric_blocks) == 1
    assert all(a.verdicts is not None and a.reward is not None for a in g.answers)


def test_reasoning_is_stripped_and_long_answers_truncated(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=1", "scorer.answer_char_budget=200")
    grp = make_groups(1, rollouts=2, k=1)[0]
    grp.rollouts = ["<think>secret chain of thought</think>10 + 20 = 30. The answer is 30.", "y" * 500]
    g = score(cfg, [grp]).groups[0]
    assert g.status == "ok"
    prompt = judge_server.requests_for("verifier")[0].prompt
    assert "secret chain of thought" not in prompt
    assert "truncated: 300 more characters" in prompt and "y" * 201 not in prompt
    assert [a.truncated for a in g.student_answers] == [False, True]
    assert g.rollouts_raw[0].startswith("<think>")  # the raw rollout is kept for the log


# -- re-asking ---------------------------------------------------------------------------------

def test_malformed_rubric_is_reasked_with_the_error(judge_server):
    judge_server.malformed_next(1, role="rubricator")
    cfg = loopback_config(judge_server, "scorer.k=2")
    g = score(cfg, make_groups(1)).groups[0]
    assert g.status == "recovered"
    first, second = judge_server.requests_for("rubricator")
    assert len(second.messages) == 3
    assert second.messages[1] == {"role": "assistant", "content": first.reply}
    reask = second.messages[2]["content"]
    assert "could not be used" in reask and "JSON" in reask
    rub_calls = [c for c in g.calls if c.role == "rubricator"]
    assert [c.status for c in rub_calls] == ["error", "ok"]
    assert rub_calls[0].error_class == "ReplyFormatError" and rub_calls[0].error in reask
    assert rub_calls[0].raw_reply == first.reply


def test_wrong_answer_count_is_reasked(judge_server):
    judge_server.wrong_count_next(1)
    cfg = loopback_config(judge_server, "scorer.k=2")
    g = score(cfg, make_groups(1)).groups[0]
    assert g.status == "recovered"
    reqs = judge_server.requests_for("verifier")
    assert len(reqs) == 2
    assert "5 answer entries but 6 answers" in reqs[1].messages[-1]["content"]
    assert all(len(a.verdicts) == 4 for a in g.answers)


def test_reasks_exhausted_fail_the_group_at_its_stage(judge_server):
    judge_server.malformed_next(10, role="rubricator")
    cfg = loopback_config(judge_server, "scorer.k=2", "judge.reask_attempts=1")
    g = score(cfg, make_groups(1)).groups[0]
    assert g.status == "failed" and g.failure_stage == "rubricator"
    assert "still invalid after 2 attempt(s)" in g.failure_cause
    assert g.student_rewards == [None] * 4
    assert len(g.calls) == 2 and all(c.status == "error" for c in g.calls)


# -- transport faults --------------------------------------------------------------------------

def test_server_errors_then_success_recover(judge_server):
    judge_server.fail_next(2, status=500, role="verifier")
    g = score(loopback_config(judge_server, "scorer.k=2"), make_groups(1)).groups[0]
    assert g.status == "recovered"
    (vcall,) = [c for c in g.calls if c.role == "verifier"]
    assert vcall.attempts == 3 and vcall.status == "ok"


def test_rate_limited_then_success_recovers(judge_server):
    judge_server.rate_limit_next(1, retry_after=0.05, role="rubricator")
    g = score(loopback_config(judge_server, "scorer.k=2"), make_groups(1)).groups[0]
    assert g.status == "recovered"


def test_timeout_fails_the_group_at_the_verifier(judge_server):
    judge_server.hang_next(5, seconds=3, role="verifier")
    cfg = loopback_config(judge_server, "scorer.k=2", "judge.verifier.timeout_s=0.3", "judge.max_retries=1")
    g = score(cfg, make_groups(1)).groups[0]
    assert g.status == "failed" and g.failure_stage == "verifier"
    assert "did not reply within" in g.failure_cause
    assert g.rubric is not None  # what was done before the failure is kept for the log
    assert [c.status for c in g.calls] == ["ok", "error"]


def test_dead_server_fails_every_group_and_the_batch(judge_server):
    port = judge_server.port
    judge_server.stop()
    cfg = loopback_config(judge_server, "scorer.k=2", "judge.max_retries=1")
    scorer = Scorer(cfg)
    batch = scorer.score_batch_sync(make_groups(3))
    assert batch.failure_rate == 1.0
    for g in batch.groups:
        assert g.failure_stage == "rubricator" and f"127.0.0.1:{port}" in g.failure_cause
        assert "connection refused" in g.failure_cause.lower()
    with pytest.raises(ScoringFailureRateError) as ei:
        scorer.check_failure_rate(batch)
    assert "3 of 3 groups" in str(ei.value) and "connection refused" in str(ei.value).lower()


LLAMA_CPP_VALIDATION = ("1 validation error:\n  {'type': 'missing', 'loc': ('body', 'messages', 0, 'content'), "
                        "'msg': 'Field required', 'input': {'role': 'user'}}\n")


def test_failure_summary_keeps_the_reason_of_a_multi_line_server_error(judge_server):
    """llama-cpp-python's 500s are several lines; the summary used to keep only '... 1 validation error:'."""
    judge_server.fail_next(50, status=500, role="rubricator", message=LLAMA_CPP_VALIDATION)
    cfg = loopback_config(judge_server, "scorer.k=2", "judge.max_retries=1")
    scorer = Scorer(cfg)
    batch = scorer.score_batch_sync(make_groups(3))
    with pytest.raises(ScoringFailureRateError) as ei:
        scorer.check_failure_rate(batch)
    msg = ei.value.message
    assert "HTTP 500 after 2 attempt(s): validation error at body.messages.0.content: Field required" in msg
    assert "(x3)" in msg and "Error code: 500" not in msg and "\n" not in msg


def test_cause_summary_is_one_line_and_keeps_the_hint():
    from engine.scoring.failures import cause_summary

    assert cause_summary("a judge error\n  hint: raise judge.verifier.timeout_s") == \
        "a judge error hint: raise judge.verifier.timeout_s"
    assert cause_summary("x" * 1000).endswith("...") and len(cause_summary("x" * 1000)) == 400
    assert cause_summary(None) == "unknown"


def test_failure_threshold(judge_server):
    groups = make_groups(4)
    groups[0].teacher_answers = None  # not in any index -> fails at the teacher stage
    cfg = loopback_config(judge_server, "scorer.k=2", "teacher.index=null")
    scorer = Scorer(cfg)
    batch = scorer.score_batch_sync(groups)
    assert [g.status for g in batch.groups] == ["failed", "ok", "ok", "ok"]
    assert batch.groups[0].failure_stage == "teacher"
    assert scorer.check_failure_rate(batch) == 0.25  # 0.25 <= 0.5: training goes on
    strict = Scorer(loopback_config(judge_server, "scorer.k=2", "scorer.failure_threshold=0.2"))
    with pytest.raises(ScoringFailureRateError) as ei:
        strict.check_failure_rate(batch)
    assert "teacher:" in str(ei.value) and "scorer.failure_threshold" in str(ei.value)


def test_teacher_index_lookup_and_miss(judge_server, tmp_path):
    from engine.teacher.index import IndexWriter, make_row

    groups = make_groups(2)
    path = tmp_path / "index.jsonl"
    with IndexWriter(path) as w:
        w.write(make_row(groups[0].prompt, groups[0].teacher_answers, {"model": "t"}))
    for g in groups:
        g.teacher_answers = None
    cfg = loopback_config(judge_server, "scorer.k=2", f"teacher.index={path}")
    batch = score(cfg, groups)
    ok, missed = batch.groups
    assert ok.status == "ok" and ok.meta["teacher_source"] == "index"
    assert [a.text for a in ok.teacher_answers] == [f"Teacher 0.{t}: 10 + 20 = 30. The answer is 30." for t in range(2)]
    assert missed.status == "failed" and missed.failure_stage == "teacher"
    assert str(path) in missed.failure_cause and "What is 11 + 23?" in missed.failure_cause
    assert missed.student_rewards == [None] * 4


def test_missing_index_file_names_the_file(judge_server, tmp_path):
    groups = make_groups(1)
    groups[0].teacher_answers = None
    cfg = loopback_config(judge_server, "scorer.k=2", f"teacher.index={tmp_path / 'nope.jsonl'}")
    g = score(cfg, groups).groups[0]
    assert g.failure_stage == "teacher" and "nope.jsonl" in g.failure_cause


# -- pipelining and concurrency ----------------------------------------------------------------

def test_a_group_verifies_as_soon_as_its_rubric_arrives(judge_server):
    def latency(rec):
        return 1.0 if rec.role == "rubricator" and "SLOW" in rec.prompt else 0.02

    judge_server.latency_fn = latency
    cfg = loopback_config(judge_server, "scorer.k=2")
    batch = score(cfg, make_groups(3, slow={0}))
    assert all(g.status == "ok" for g in batch.groups)
    slow_rubric = next(r for r in judge_server.requests_for("rubricator") if "SLOW" in r.prompt)
    fast_verifies = [r for r in judge_server.requests_for("verifier") if "SLOW" not in r.prompt]
    assert len(fast_verifies) == 2
    # the fast groups' verifier requests reached the server while the slow rubric was still being written
    assert all(r.t_start < slow_rubric.t_end for r in fast_verifies)
    # and every group's rubricator request was in flight at once at the start
    starts = sorted(r.t_start for r in judge_server.requests_for("rubricator"))
    assert starts[-1] < slow_rubric.t_end


def test_concurrency_limit_bounds_requests_in_flight(judge_server):
    judge_server.latency_s = 0.05
    cfg = loopback_config(judge_server, "scorer.k=2", "judge.concurrency=2")
    batch = score(cfg, make_groups(6))
    assert all(g.status == "ok" for g in batch.groups)
    assert judge_server.max_in_flight == 2


def test_score_batch_sync_inside_a_running_loop(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=2")
    scorer = Scorer(cfg)

    async def caller():
        return scorer.score_batch_sync(make_groups(1))  # sync call from async code

    batch = asyncio.run(caller())
    assert batch.groups[0].status == "ok"


def test_live_templates_are_read_per_group(judge_server):
    class Live:
        def __init__(self):
            self.verifier = Template.default("verifier")
            self.rubricator = Template.default("rubricator")

        def current(self, role):
            return getattr(self, role)

    live = Live()
    cfg = loopback_config(judge_server, "scorer.k=2")
    scorer = Scorer(cfg, templates=live)
    first = scorer.score_batch_sync(make_groups(1)).groups[0]
    live.verifier = Template.from_text(live.verifier.text + "\nBe strict.\n", "verifier")
    second = scorer.score_batch_sync(make_groups(1)).groups[0]
    assert first.template_versions["verifier"] != second.template_versions["verifier"]
    assert second.template_versions["verifier"] == live.verifier.sha256
    assert judge_server.requests_for("verifier")[-1].prompt.rstrip().endswith("Be strict.")


def test_responses_api_end_to_end(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=2", "judge.api=responses")
    g = score(cfg, make_groups(1)).groups[0]
    assert g.status == "ok"
    assert {r.path for r in judge_server.requests} == {"/v1/responses"}


def test_offline_judge_when_no_llm_is_configured():
    cfg = load_config(None, ["scorer.k=2"])
    assert not cfg.judge_is_llm()
    batch = Scorer(cfg).score_batch_sync(make_groups(2))
    for g in batch.groups:
        assert g.judge_kind == "offline" and g.status == "ok"
        assert g.student_rewards[0] > g.student_rewards[1]


def test_progress_is_reported_as_each_group_finishes_and_clipped_flags_reach_the_answers():
    cfg = load_config(None, ["scorer.k=2"])
    groups = make_groups(3)
    groups[0].clipped = [True, False, False, True]
    seen: list[tuple[int, int]] = []
    batch = Scorer(cfg).score_batch_sync(groups, on_group_done=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert [a.clipped for a in batch.groups[0].student_answers] == [True, False, False, True]
    assert all(a.clipped is None for a in batch.groups[1].answers)  # not known: not guessed


def test_preflight_names_a_dead_judge(judge_server):
    from engine.errors import JudgeError

    assert Scorer(loopback_config(judge_server)).preflight_sync()[0]["url"] == judge_server.base_url
    judge_server.stop()
    with pytest.raises(JudgeError) as ei:
        Scorer(loopback_config(judge_server)).preflight_sync()
    assert judge_server.base_url in str(ei.value)
    assert Scorer(load_config(None, [])).preflight_sync() == []  # offline judge: nothing to check


def test_one_failed_chunk_fails_the_group_and_keeps_every_call(judge_server):
    judge_server.malformed_next(1, role="verifier", text="not json at all")
    cfg = loopback_config(judge_server, "scorer.k=2", "scorer.verifier_chunk_size=3", "judge.reask_attempts=0")
    g = score(cfg, make_groups(1)).groups[0]
    assert g.status == "failed" and g.failure_stage == "verifier"
    assert "still invalid after 1 attempt(s)" in g.failure_cause
    assert sorted((c.role, c.status) for c in g.calls) == [("rubricator", "ok"), ("verifier", "error"),
                                                           ("verifier", "ok")]
    assert all(a.reward is None for a in g.answers)


def test_pair_scope_failure_is_recorded_with_its_stage(judge_server):
    judge_server.malformed_next(1, role="rubricator", text="no json")
    cfg = loopback_config(judge_server, "scorer.k=1", "scorer.rubric_scope=pair", "judge.reask_attempts=0")
    g = score(cfg, make_groups(1, rollouts=2, k=1)).groups[0]
    assert g.status == "failed" and g.failure_stage == "rubricator"
    assert g.student_rewards == [None, None]
    assert len([c for c in g.calls if c.role == "rubricator"]) == 2  # the failed pair's call and the other pair's


def test_scalar_judge_is_the_teacher_model_with_judging_settings(judge_server):
    cfg = loopback_config(judge_server, "scorer.k=2", "scorer.reward_mode=scalar_judge",
                          "judge.teacher.model=teacher-model")
    g = score(cfg, make_groups(1)).groups[0]
    assert g.status == "ok"
    (req,) = judge_server.requests
    assert req.model == "teacher-model"
    assert req.body["temperature"] == 0.0  # the verifier's, not the teacher's sampling temperature
    assert [c.model for c in g.calls] == ["teacher-model"]
