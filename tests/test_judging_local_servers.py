"""The LLM judge against local servers scripted to behave as vLLM and llama-cpp-python did (issue 11):
per-request schemas, replies cut at max_tokens, re-asks that stay small, placeholder and copied criteria."""

from __future__ import annotations

import json

import pytest

from engine.judging.client import forget_unsupported_params
from engine.judging.parsing import example_criteria, parse_rubric, parse_scalar_batch, parse_verifier
from engine.scoring.scorer import Scorer
from engine.templates.render import Template
from engine.types import GroupInput
from loopback_server import ANSWER_RE, LoopbackJudgeServer, loopback_config


@pytest.fixture
def serve():
    started = []
    forget_unsupported_params()

    def start(srv=None):
        srv = srv or LoopbackJudgeServer()
        started.append(srv.start())
        return srv

    yield start
    for srv in started:
        srv.stop()
    forget_unsupported_params()


def groups(n: int = 1, rollouts: int = 4, k: int = 2) -> list[GroupInput]:
    out = []
    for g in range(n):
        a, b = 10 + g, 20 + g
        teachers = [f"Teacher {t}: {a} + {b} = {a + b}. The answer is {a + b}." for t in range(k)]
        rolls = [f"Student {i}: {a} + {b} = {a + b + i % 2}. The answer is {a + b + i % 2}." for i in range(rollouts)]
        out.append(GroupInput(prompt=f"What is {a} + {b}?", rollouts=rolls, ground_truth=str(a + b),
                              teacher_answers=teachers, uid=f"g{g}"))
    return out


def score(cfg, gs):
    return Scorer(cfg).score_batch_sync(gs)


def schema_of(req) -> dict:
    rf = req.body["response_format"]
    assert rf["type"] == "json_schema"
    return rf["json_schema"]["schema"]


# -- structured output: the schema sent matches the request -------------------------------------

def test_each_request_sends_a_schema_with_its_exact_shape(serve):
    srv = serve()
    cfg = loopback_config(srv, "scorer.k=2", "scorer.min_criteria=4", "scorer.max_criteria=6",
                          "scorer.verifier_chunk_size=4", "judge.rubricator.response_format=json_schema",
                          "judge.verifier.response_format=json_schema")
    g = score(cfg, groups(1, rollouts=5)).groups[0]
    assert g.status == "ok"
    (rub,) = srv.requests_for("rubricator")
    rs = schema_of(rub)["properties"]["rubrics"]
    assert (rs["minItems"], rs["maxItems"]) == (4, 6)
    assert rs["items"]["properties"]["points"] == {"type": "integer", "minimum": 1, "maximum": 5}
    n_criteria = len(g.rubric.criteria)
    sizes = []
    for req in srv.requests_for("verifier"):
        n = len(ANSWER_RE.findall(req.prompt))
        answers = schema_of(req)["properties"]["answers"]
        assert answers["minItems"] == answers["maxItems"] == n
        item = answers["items"]["properties"]
        assert item["answer_index"] == {"type": "integer", "enum": list(range(1, n + 1))}
        assert item["judgement"]["minItems"] == item["judgement"]["maxItems"] == n_criteria
        assert item["judgement"]["items"] == {"type": "boolean"}
        sizes.append(n)
    assert sorted(sizes) == [3, 4]  # 7 answers in chunks of 4


def test_scalar_judge_schema_pins_the_answer_count(serve):
    srv = serve()
    cfg = loopback_config(srv, "scorer.k=1", "scorer.reward_mode=scalar_judge",
                          "judge.verifier.response_format=json_schema")
    assert score(cfg, groups(1, rollouts=3, k=1)).groups[0].status == "ok"
    (req,) = srv.requests
    answers = schema_of(req)["properties"]["answers"]
    assert answers["minItems"] == answers["maxItems"] == 4
    assert answers["items"]["properties"]["answer_index"]["enum"] == [1, 2, 3, 4]


def test_prompts_state_the_exact_counts(serve):
    srv = serve()
    cfg = loopback_config(srv, "scorer.k=2", "scorer.min_criteria=5", "scorer.max_criteria=7")
    srv.rubric_fn = lambda prompt: {"rubrics": [{"criterion_id": f"c{i}", "category": "task fulfilment",
                                                 "criterion": f"The answer mentions the number {i}.", "points": 2}
                                                for i in range(1, 6)]}
    score(cfg, groups(1, rollouts=4))
    (rub,) = srv.requests_for("rubricator")
    assert "Write between 5 and 7 criteria" in rub.prompt
    (ver,) = srv.requests_for("verifier")
    assert "exactly 6 entries" in ver.prompt and "exactly 5 true or false values" in ver.prompt


# -- the shipped templates' examples are valid for the constraints they illustrate ---------------

def _example(template_role: str) -> str:
    text = Template.default(template_role).literal_text
    line = next(ln for ln in text.splitlines() if ln.startswith('{"schema_version"'))
    return line


def test_rubricator_example_is_a_valid_rubric_for_the_default_bounds():
    rubric = parse_rubric(_example("rubricator"), min_criteria=4, max_criteria=12)
    assert len(rubric.criteria) >= 4 and rubric.maximum_score == rubric.total_points
    assert all("..." not in c.text for c in rubric.criteria)


def test_verifier_and_scalar_examples_are_valid_for_the_shape_they_state():
    text = Template.default("verifier").literal_text
    assert "with 2 answers and a rubric of 3\ncriteria worth 5, 3 and 2 points" in text
    parsed = parse_verifier(_example("verifier"), n_answers=2, n_criteria=3)
    points = [5, 3, 2]
    for verdicts, final in parsed:  # its final_score is what it says: the points of the criteria judged true
        assert final == sum(p for p, v in zip(points, verdicts) if v)
    assert "with 2 answers" in Template.default("scalar_judge").literal_text
    assert parse_scalar_batch(_example("scalar_judge"), n_answers=2) == [8.0, 3.0]


# -- placeholder and copied criteria are rejected --------------------------------------------------

RUBRIC = {"schema_version": "ropd.rubric.v1"}


def _rubric(*texts: str) -> str:
    return json.dumps(RUBRIC | {"rubrics": [{"criterion_id": f"c{i}", "category": "task fulfilment",
                                             "criterion": t, "points": 2} for i, t in enumerate(texts, 1)]})


GOOD = ["The answer gives 30 as the result.", "The answer adds 10 and 20.", "The answer shows 10 + 20 = 30.",
        "The answer ends with 'The answer is 30.'"]


@pytest.mark.parametrize("bad,words", [
    ("...", "has no words"),
    ("…", "has no words"),
    ("The answer states that the final result is ...", "trails off in '...'"),
    ("<criterion>", "is a placeholder"),
    ("criterion text", "is a placeholder"),
])
def test_placeholder_criteria_are_rejected(bad, words):
    from engine.judging.parsing import ReplyFormatError

    with pytest.raises(ReplyFormatError) as ei:
        parse_rubric(_rubric(*GOOD[:3], bad))
    assert f"criterion 4 (c4) {words}" in str(ei.value) and "write out the concrete" in str(ei.value)


def test_duplicate_criteria_are_rejected():
    from engine.judging.parsing import ReplyFormatError

    with pytest.raises(ReplyFormatError, match="criteria 1 and 4 have the same text"):
        parse_rubric(_rubric(*GOOD[:3], "the answer gives 30 as the result"))


def test_a_criterion_copied_from_the_template_example_is_rejected():
    from engine.judging.parsing import ReplyFormatError

    examples = example_criteria(Template.default("rubricator").literal_text)
    assert "the answer gives 12 square centimetres as the area" in examples
    copied = "The answer gives 12 square centimetres as the area."
    assert parse_rubric(_rubric(*GOOD), example_texts=examples)  # a real rubric passes
    with pytest.raises(ReplyFormatError, match="copies the example in the reply format"):
        parse_rubric(_rubric(*GOOD[:3], copied), example_texts=examples)


def test_a_judge_copying_the_example_is_reasked_and_fails_visibly(serve):
    """A 0.5B model copied the example in 100% of calls, re-asks included."""
    srv = serve()
    example = json.loads(_example("rubricator"))
    srv.rubric_fn = lambda prompt: example
    cfg = loopback_config(srv, "scorer.k=2", "judge.reask_attempts=1")
    g = score(cfg, groups(1)).groups[0]
    assert g.status == "failed" and g.failure_stage == "rubricator"
    assert "copies the example in the reply format" in g.failure_cause
    first, second = srv.requests_for("rubricator")
    assert "copies the example" in second.messages[-1]["content"]


# -- replies cut at max_tokens: finish_reason, the message, short re-asks within the context ------

def runaway_verifier(prompt, answers, criteria):
    """SmolLM2 under a static schema: writes false until max_tokens."""
    return '{"answers": [{"answer_index": 1, "judgement": [' + "false, " * 5000


def test_reply_cut_at_max_tokens_says_so_with_the_fix_and_records_finish_reason(serve):
    srv = serve()
    srv.verifier_fn = runaway_verifier
    cfg = loopback_config(srv, "scorer.k=2", "judge.verifier.max_tokens=300", "judge.reask_attempts=2",
                          "scorer.verifier_chunk_size=16")
    g = score(cfg, groups(1)).groups[0]
    assert g.status == "failed" and g.failure_stage == "verifier"
    cause = g.failure_cause
    assert "the reply hit max_tokens=300 and was cut off" in cause and "Unterminated" not in cause.split("(")[0]
    assert "raise judge.verifier.max_tokens (now 300)" in cause and "scorer.verifier_chunk_size (now 16)" in cause
    assert "judge.verifier.response_format=json_schema" in cause
    vcalls = [c for c in g.calls if c.role == "verifier"]
    assert [c.finish_reason for c in vcalls] == ["length"] * 3
    assert all(c.response_format == "json_object" for c in vcalls)
    assert [c.finish_reason for c in g.calls if c.role == "rubricator"] == ["stop"]
    reqs = srv.requests_for("verifier")
    assert "cut off at the output limit of 300 tokens" in reqs[1].messages[-1]["content"]


def test_reasks_carry_a_short_excerpt_not_the_whole_reply(serve):
    srv = serve()
    srv.verifier_fn = runaway_verifier
    cfg = loopback_config(srv, "scorer.k=2", "judge.verifier.max_tokens=1000", "judge.reask_attempts=2")
    score(cfg, groups(1))
    first, *reasks = srv.requests_for("verifier")
    assert len(first.reply) == 4000 and len(reasks) == 2
    base = len(first.messages[0]["content"])
    for req in reasks:
        assert [m["role"] for m in req.messages] == ["user", "assistant", "user"]  # no growing conversation
        assert req.messages[0] == first.messages[0]
        excerpt = req.messages[1]["content"]
        assert len(excerpt) < 500 and "characters left out" in excerpt
        assert sum(len(m["content"]) for m in req.messages) < base + 1500


def test_reasks_stay_within_a_small_vllm_context(serve):
    """vLLM with max_model_len 2048: echoing each cut reply overflowed the context and failed every group."""
    srv = serve(LoopbackJudgeServer.like_vllm(2048))
    srv.verifier_fn = runaway_verifier
    cfg = loopback_config(srv, "scorer.k=2", "judge.reask_attempts=2")
    g = score(cfg, groups(1)).groups[0]
    verifier = srv.requests_for("verifier")
    refused = [r for r in verifier if r.status != 200]
    assert len([r for r in verifier if r.status == 200]) == 3  # every re-ask was served
    assert all("cannot be greater than max_model_len" in str(r.reply or "") or r.body["max_tokens"] == 4096
               for r in refused)  # only first tries with the configured max_tokens, before the context was known
    assert "hit max_tokens=" in g.failure_cause and "maximum context length" not in g.failure_cause
    assert "the server's context (2048 tokens) left only" in g.failure_cause  # raising max_tokens would not help
    assert "--max-model-len" in g.failure_cause


def test_cut_and_stored_calls_keep_finish_reason_and_format(serve, tmp_path):
    from engine.store import open_store

    srv = serve(LoopbackJudgeServer.like_llama_cpp_python(slots=None))
    srv.verifier_fn = runaway_verifier
    cfg = loopback_config(srv, "scorer.k=2", "judge.verifier.max_tokens=200", "judge.reask_attempts=0",
                          "judge.rubricator.response_format=json_schema", "judge.verifier.response_format=json_schema")
    batch = score(cfg, groups(1))
    store = open_store(str(tmp_path / "s.db"))
    run = store.create_run("r", "embedded", {})
    store.write_step(run.id, 1, {}, batch.groups)
    rows = {r["role"]: r for r in store.judge_calls(run.id)}
    assert rows["rubricator"]["finish_reason"] == "stop" and rows["rubricator"]["response_format"] == "json_object"
    assert rows["verifier"]["finish_reason"] == "length" and rows["verifier"]["response_format"] == "json_object"
