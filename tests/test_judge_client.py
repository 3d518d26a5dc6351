"""JudgeClient against a real HTTP server on 127.0.0.1 (tests/loopback_server.py), through the openai SDK."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from engine.errors import JudgeError
from engine.judging.client import JudgeCallError, JudgeClient, forget_unsupported_params, scrub
from loopback_server import LoopbackJudgeServer, loopback_config, run_closing_clients as run

PROMPT = [{"role": "user", "content": "What is 2 + 3? Reply as JSON."}]


def client(srv_or_cfg, *overrides, role="verifier"):
    cfg = loopback_config(srv_or_cfg, *overrides) if isinstance(srv_or_cfg, LoopbackJudgeServer) else srv_or_cfg
    return JudgeClient(getattr(cfg.judge, role), cfg.judge, role)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_normal_reply_records_usage_and_sends_json_mode(judge_server):
    c = client(judge_server)
    comp = run(c.complete(PROMPT))
    assert "answer is 5" in comp.text.lower()
    assert comp.attempts == 1
    assert comp.prompt_tokens and comp.completion_tokens
    assert comp.latency_s > 0
    assert comp.model == "loopback-judge"
    assert comp.endpoint == judge_server.base_url
    assert len(comp.request_sha) == 64
    (req,) = judge_server.requests
    assert req.path == "/v1/chat/completions"
    assert req.body["response_format"] == {"type": "json_object"}
    assert req.body["temperature"] == 0.0
    assert req.messages == PROMPT


def test_key_is_read_from_the_named_env_var_at_call_time(judge_server, monkeypatch):
    judge_server.api_key = "sk-first-key-0001"
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-first-key-0001")
    c = client(judge_server, "judge.verifier.api_key_env=MY_JUDGE_KEY")
    assert run(c.complete(PROMPT)).text
    # rotate the key in the environment: the same client picks it up on the next call
    judge_server.api_key = "sk-second-key-0002"
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-second-key-0002")
    assert run(c.complete(PROMPT)).text
    assert [r.authorization for r in judge_server.requests] == ["Bearer sk-first-key-0001",
                                                                "Bearer sk-second-key-0002"]


def test_bad_key_names_the_env_var_and_never_the_key(judge_server, monkeypatch):
    judge_server.api_key = "sk-right-key-123456"
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-wrong-key-987654")
    c = client(judge_server, "judge.verifier.api_key_env=MY_JUDGE_KEY")
    with pytest.raises(JudgeCallError) as ei:
        run(c.complete(PROMPT))
    msg = str(ei.value)
    assert "401" in msg and "MY_JUDGE_KEY" in msg and judge_server.base_url in msg
    assert "sk-wrong-key-987654" not in msg and "sk-right-key" not in msg
    assert ei.value.kind == "auth"
    assert len(judge_server.requests) == 1  # no retries on 401


def test_server_errors_then_success_are_retried_by_the_sdk(judge_server):
    judge_server.fail_next(2, status=500)
    comp = run(client(judge_server).complete(PROMPT))
    assert comp.attempts == 3
    assert [r.status for r in judge_server.requests] == [500, 500, 200]


def test_persistent_server_errors_fail_with_url_and_status(judge_server):
    judge_server.fail_next(10, status=503, message="overloaded")
    with pytest.raises(JudgeError) as ei:
        run(client(judge_server, "judge.max_retries=2").complete(PROMPT))
    assert "503" in str(ei.value) and judge_server.base_url in str(ei.value)
    assert ei.value.attempts == 3
    assert len(judge_server.requests) == 3


def test_429_retry_after_is_honoured(judge_server):
    judge_server.rate_limit_next(1, retry_after=0.3)
    # backoff base is 1 ms, so waiting ~0.3 s can only come from the Retry-After header
    comp = run(client(judge_server, "judge.retry_initial_delay_s=0.001").complete(PROMPT))
    assert comp.attempts == 2
    first, second = judge_server.requests
    assert first.status == 429 and second.status == 200
    assert second.t_start - first.t_end >= 0.25


@pytest.mark.parametrize("status", [400, 404])
def test_client_errors_are_not_retried(judge_server, status):
    judge_server.fail_next(1, status=status, message="no such thing")
    with pytest.raises(JudgeError) as ei:
        run(client(judge_server, "judge.verifier.response_format=none").complete(PROMPT))
    assert str(status) in str(ei.value)
    assert len(judge_server.requests) == 1


def test_unknown_model_names_the_model(judge_server):
    judge_server.models = ["served-model"]
    with pytest.raises(JudgeCallError) as ei:
        run(client(judge_server).complete(PROMPT))
    assert ei.value.kind == "not_found"
    assert "loopback-judge" in str(ei.value) and "judge.verifier.model" in str(ei.value)
    with pytest.raises(JudgeCallError) as ei:
        run(client(judge_server).preflight())
    assert "served-model" in str(ei.value)


def test_timeout_fails_with_timeout_error(judge_server):
    judge_server.hang_next(5, seconds=3)
    c = client(judge_server, "judge.verifier.timeout_s=0.3", "judge.max_retries=1")
    with pytest.raises(JudgeCallError) as ei:
        run(c.complete(PROMPT))
    assert ei.value.kind == "timeout"
    assert "did not reply within 0.3 s" in str(ei.value)
    assert ei.value.attempts == 2


def test_closed_port_fails_fast_naming_the_url():
    port = closed_port()
    from engine.config import load_config
    cfg = load_config(None, [f"judge.verifier.base_url=http://127.0.0.1:{port}/v1", "judge.verifier.model=m",
                             "judge.retry_initial_delay_s=0.001", "judge.max_retries=2"])
    c = client(cfg)
    with pytest.raises(JudgeCallError) as ei:
        run(c.complete(PROMPT))
    assert f"http://127.0.0.1:{port}/v1" in str(ei.value)
    assert "connection refused" in str(ei.value).lower()
    assert ei.value.kind == "connection"
    with pytest.raises(JudgeCallError) as ei:
        run(c.preflight())
    assert ei.value.attempts == 1  # preflight never retries


def test_missing_key_for_openai_fails_before_any_request():
    from engine.config import load_config
    cfg = load_config(None, ["judge.verifier.model=gpt-test"])
    with pytest.raises(JudgeCallError) as ei:
        run(client(cfg).complete(PROMPT))
    assert "OPENAI_API_KEY" in str(ei.value) and "api.openai.com" in str(ei.value)


def test_missing_model_is_a_config_error(judge_server):
    cfg = loopback_config(judge_server)
    cfg.judge.verifier.model = None
    with pytest.raises(JudgeCallError) as ei:
        run(client(cfg).complete(PROMPT))
    assert "ROPD_VERIFIER_MODEL" in str(ei.value)


def test_rejected_response_format_is_dropped_once_and_remembered(judge_server):
    judge_server.reject_response_format = True
    c = client(judge_server)
    assert run(c.complete(PROMPT)).attempts == 2
    assert run(c.complete(PROMPT)).attempts == 1
    bodies = [r.body for r in judge_server.requests]
    assert "response_format" in bodies[0]
    assert "response_format" not in bodies[1] and "response_format" not in bodies[2]


def test_json_schema_output(judge_server):
    schema = {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}
    run(client(judge_server, "judge.verifier.response_format=json_schema").complete(PROMPT, schema=schema))
    rf = judge_server.requests[0].body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == schema


def test_responses_api(judge_server):
    c = client(judge_server, "judge.api=responses", "judge.verifier.reasoning_effort=low")
    comp = run(c.complete(PROMPT))
    assert "answer is 5" in comp.text.lower()
    assert comp.prompt_tokens and comp.completion_tokens
    (req,) = judge_server.requests
    assert req.path == "/v1/responses"
    assert req.body["text"] == {"format": {"type": "json_object"}}
    assert req.body["reasoning"] == {"effort": "low"}
    assert req.body["store"] is False


def test_concurrency_is_bounded_per_endpoint_across_clients(judge_server):
    judge_server.latency_s = 0.05
    cfg = loopback_config(judge_server, "judge.concurrency=3")
    rub = JudgeClient(cfg.judge.rubricator, cfg.judge, "rubricator")
    ver = JudgeClient(cfg.judge.verifier, cfg.judge, "verifier")

    async def many():
        return await asyncio.gather(*[(rub if i % 2 else ver).complete(PROMPT) for i in range(12)])

    assert len(run(many())) == 12
    assert judge_server.max_in_flight == 3


def test_requests_per_minute_limit_holds_back_the_next_request(judge_server):
    c = client(judge_server, "judge.requests_per_minute=2")

    async def three():
        await c.complete(PROMPT)
        await c.complete(PROMPT)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.complete(PROMPT), 0.3)

    run(three())
    assert len(judge_server.requests) == 2


def test_scrub_removes_keys():
    text = "bad key sk-abcdef1234567890 and Bearer xyz123456789 and mysecretvalue"
    out = scrub(text, "mysecretvalue")
    assert "abcdef1234567890" not in out and "xyz123456789" not in out and "mysecretvalue" not in out


def test_error_text_echoing_the_key_is_scrubbed(judge_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "plainsecret-4242")
    judge_server.fail_next(1, status=400, message="invalid key plainsecret-4242")
    with pytest.raises(JudgeCallError) as ei:
        run(client(judge_server, "judge.verifier.response_format=none").complete(PROMPT))
    assert "plainsecret-4242" not in str(ei.value)
    assert "***" in str(ei.value)


def test_server_log_and_usage_are_json(judge_server):
    run(client(judge_server).complete(PROMPT))
    stats = judge_server.stats()
    assert stats["requests"] == 1 and stats["by_role"] == {"chat": 1}
    json.dumps(stats)


def test_max_tokens_is_renamed_when_the_server_asks_for_max_completion_tokens(judge_server):
    judge_server.fail_next(1, status=400, message="Unsupported parameter: 'max_tokens' is not supported with this "
                           "model. Use 'max_completion_tokens' instead.")
    comp = run(client(judge_server).complete(PROMPT))
    assert comp.attempts == 2
    first, second = judge_server.requests
    assert "max_tokens" in first.body and "max_completion_tokens" not in first.body
    assert second.body["max_completion_tokens"] == 4096 and "max_tokens" not in second.body
    assert second.body["response_format"] == {"type": "json_object"}  # only the named parameter changed


def test_non_json_200_is_retried_as_a_transient_transport_error(judge_server):
    judge_server.raw_next("<html>502 Bad Gateway (proxy)</html>", n=2)
    comp = run(client(judge_server).complete(PROMPT))
    assert "answer is 5" in comp.text.lower() and comp.attempts == 3
    assert [r.fault for r in judge_server.requests] == ["raw", "raw", None]


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_json_200_that_is_no_reply_of_the_api_is_retried_never_read_as_an_empty_reply(judge_server, api):
    # a proxy's {"detail": "upstream busy"} with status 200: was an empty reply (re-asked, costing a re-ask
    # attempt) on the chat API and a TypeError on the Responses API
    judge_server.add_fault("raw_json", 2, text='{"detail": "upstream busy"}')
    comp = run(client(judge_server, f"judge.api={api}").complete(PROMPT))
    assert "answer is 5" in comp.text.lower() and comp.attempts == 3
    assert [r.fault for r in judge_server.requests] == ["raw_json", "raw_json", None]


def test_a_json_body_that_is_never_a_reply_is_a_judge_error_after_the_retries(judge_server):
    judge_server.add_fault("raw_json", 100, text='{"detail": "upstream busy"}')
    with pytest.raises(JudgeCallError) as ei:
        run(client(judge_server).complete(PROMPT))
    assert ei.value.kind == "bad_response" and "JSON that is not a reply of the API after 4 attempt(s)" in str(ei.value)
    assert "upstream busy" in str(ei.value) and "no \"choices\"" in str(ei.value)


def test_a_body_that_is_never_json_is_a_judge_error_after_the_retries(judge_server):
    judge_server.raw_next("<html>login page</html>", n=100)
    with pytest.raises(JudgeCallError) as ei:
        run(client(judge_server).complete(PROMPT))  # judge.max_retries=3
    assert ei.value.kind == "bad_response" and "not JSON after 4 attempt(s)" in str(ei.value)
    assert "/v1" in str(ei.value) and len(judge_server.requests) == 4


def test_a_retrying_request_gives_its_slot_back_while_it_backs_off(judge_server):
    # concurrency 1: request A gets a 500 and sleeps before its retry; B must reach the server meanwhile.
    judge_server.fail_next(1, status=500)
    c = client(judge_server, "judge.concurrency=1", "judge.retry_initial_delay_s=0.5", "judge.retry_max_delay_s=0.5")
    a = [{"role": "user", "content": "request A: what is 1 + 1?"}]
    b = [{"role": "user", "content": "request B: what is 2 + 2?"}]

    async def both():
        return await asyncio.gather(c.complete(a), c.complete(b))

    ca, cb = run(both())
    assert ca.attempts == 2 and cb.attempts == 1
    order = [r.messages[0]["content"].split(":")[0] for r in judge_server.requests]
    assert order == ["request A", "request B", "request A"]
    assert judge_server.max_in_flight == 1  # the bound still holds


def test_requests_are_counted_in_the_current_progress_tracker(judge_server):
    from engine.progress import JudgeProgress, tracking

    judge_server.fail_next(1, status=503)
    judge_server.raw_next("<html>proxy</html>")
    prog = JudgeProgress("test")
    dead = loopback_config(judge_server, f"judge.verifier.base_url=http://127.0.0.1:{closed_port()}/v1",
                           "judge.max_retries=0")

    async def work():
        with tracking(prog):
            await asyncio.gather(*(client(judge_server).complete(PROMPT) for _ in range(3)))
            with pytest.raises(JudgeCallError):
                await client(dead).complete(PROMPT)

    run(work())
    snap = prog.snapshot()
    assert (snap.requests_done, snap.requests_failed, snap.requests_retried, snap.in_flight) == (3, 1, 2, 0)



def test_chat_reply_reader_is_lenient_about_shapes():
    from engine.judging.client import _chat_reply

    assert _chat_reply({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}]}) == \
        ("ab", None, None, None)
    assert _chat_reply({"choices": []}) == ("", None, None, None)
    assert _chat_reply({"choices": [{"message": {"content": None}, "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 0}}) == ("", 3, 0, "length")


def test_tokens_per_minute_limit_counts_reported_usage(judge_server):
    c = client(judge_server, "judge.tokens_per_minute=25")

    async def two():
        first = await c.complete(PROMPT)
        assert first.prompt_tokens + first.completion_tokens > 15  # the window now holds the real usage
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.complete(PROMPT), 0.3)

    run(two())
    assert len(judge_server.requests) == 1


# --- real servers' limits (issue 11): llama.cpp and vLLM, as they behaved -----------------------

@pytest.fixture
def serve():
    """Start a scripted loopback server (``serve(LoopbackJudgeServer.like_vllm(2048))``); stopped after."""
    started = []
    forget_unsupported_params()

    def start(srv):
        started.append(srv.start())
        return srv

    yield start
    for srv in started:
        srv.stop()
    forget_unsupported_params()


SCHEMA = {"title": "ropd_test", "type": "object", "properties": {"score": {"type": "number"}}}


def test_reply_cut_at_max_tokens_reports_finish_reason_length(judge_server):
    judge_server.chat_fn = lambda prompt: '{"answers": [' + "false, " * 500
    comp = run(client(judge_server, "judge.verifier.max_tokens=50").complete(PROMPT))
    assert comp.finish_reason == "length" and comp.max_tokens == 50
    assert len(comp.text) == 200  # 50 tokens of 4 characters: the server cut it there
    assert run(client(judge_server).complete(PROMPT)).finish_reason == "stop"


def test_responses_api_reply_cut_at_max_output_tokens_is_length(judge_server):
    judge_server.chat_fn = lambda prompt: "x" * 1000
    comp = run(client(judge_server, "judge.api=responses", "judge.verifier.max_tokens=20").complete(PROMPT))
    assert comp.finish_reason == "length"


def test_llama_cpp_python_json_schema_500_falls_back_once_without_retries(serve):
    """llama-cpp-python answers json_schema with HTTP 500 "Input should be 'text' or 'json_object'"."""
    srv = serve(LoopbackJudgeServer.like_llama_cpp_python(slots=None))
    c = client(srv, "judge.verifier.response_format=json_schema", "judge.max_retries=4")
    comp = run(c.complete(PROMPT, schema=SCHEMA))
    assert comp.attempts == 2 and comp.response_format == "json_object"  # no SDK retries of the 500
    first, second = srv.requests
    assert first.status == 500 and first.body["response_format"]["type"] == "json_schema"
    assert second.body["response_format"] == {"type": "json_object"}
    again = run(c.complete(PROMPT, schema=SCHEMA))  # remembered for the endpoint
    assert again.attempts == 1 and again.response_format == "json_object"
    assert srv.requests[2].body["response_format"] == {"type": "json_object"}


def test_format_rejections_step_down_to_no_response_format_each_once(serve):
    srv = serve(LoopbackJudgeServer(response_format_types=("text",), response_format_status=422))
    c = client(srv, "judge.verifier.response_format=json_schema")
    comp = run(c.complete(PROMPT, schema=SCHEMA))
    assert comp.response_format == "none" and comp.attempts == 3
    assert [r.body.get("response_format", {}).get("type") for r in srv.requests] == ["json_schema", "json_object", None]
    assert run(c.complete(PROMPT, schema=SCHEMA)).attempts == 1


def test_a_500_unrelated_to_the_format_is_still_retried_and_not_a_fallback(judge_server):
    judge_server.fail_next(1, status=500, message="CUDA error: out of memory")
    comp = run(client(judge_server).complete(PROMPT))
    assert comp.attempts == 2 and comp.response_format == "json_object"
    assert [r.body["response_format"] for r in judge_server.requests] == [{"type": "json_object"}] * 2


def test_vllm_max_tokens_over_max_model_len_is_refitted_and_remembered(serve, caplog):
    """vLLM --max-model-len 2048 with the default max_tokens 4096 rejected every call at once."""
    srv = serve(LoopbackJudgeServer.like_vllm(2048))
    c = client(srv)
    comp = run(c.complete(PROMPT))
    first, second = srv.requests
    assert first.status == 400 and first.body["max_tokens"] == 4096
    assert second.status == 200 and 64 <= second.body["max_tokens"] < 2048 and comp.max_tokens == second.body["max_tokens"]
    assert "context of 2048 tokens" in caplog.text
    run(c.complete(PROMPT))  # the context is known now: the next request fits at once
    assert srv.requests[2].status == 200 and srv.requests[2].body["max_tokens"] < 2048


def test_preflight_reads_vllm_max_model_len_so_the_first_request_fits(serve):
    srv = serve(LoopbackJudgeServer.like_vllm(2048, models=["loopback-judge"]))
    c = client(srv)
    info = run(c.preflight())
    assert info["context_len"] == 2048 and info["slots"] is None
    run(c.complete(PROMPT))
    (req,) = srv.requests
    assert req.status == 200 and req.body["max_tokens"] < 2048


def test_max_tokens_over_the_context_that_cannot_be_refitted_gets_the_max_tokens_hint(serve):
    srv = serve(LoopbackJudgeServer.like_vllm(2048))
    big = [{"role": "user", "content": "word " * 1700}]  # ~2100 tokens: no room left at all
    with pytest.raises(JudgeCallError) as ei:
        run(client(srv).complete(big))
    text = str(ei.value)
    assert "cannot be greater than max_model_len=2048" in text
    assert "judge.verifier.max_tokens (4096) does not fit the server's context (2048 tokens)" in text
    assert "--max-model-len" in text and "prompt may be too long" not in text


def test_prompt_too_long_for_the_context_gets_the_prompt_hint(serve):
    srv = serve(LoopbackJudgeServer.like_vllm(2048))
    big = [{"role": "user", "content": "word " * 1700}]
    with pytest.raises(JudgeCallError) as ei:
        run(client(srv, "judge.verifier.max_tokens=512").complete(big))
    text = str(ei.value)
    assert "maximum context length is 2048 tokens" in text
    assert "the prompt does not fit the server's context (2048 tokens)" in text
    assert "scorer.answer_char_budget" in text and "scorer.verifier_chunk_size" in text


def test_preflight_reads_llama_cpp_slots_and_concurrency_follows_them(serve, caplog):
    srv = serve(LoopbackJudgeServer.like_llama_cpp_python(slots=2, models=["loopback-judge"], latency_s=0.05))
    c = client(srv, "judge.concurrency=8")
    assert run(c.preflight())["slots"] == 2

    async def many():
        return await asyncio.gather(*[c.complete(PROMPT) for _ in range(6)])

    assert len(run(many())) == 6
    assert srv.max_in_flight == 2
    assert "works on 2 request(s) at a time" in caplog.text and "judge.concurrency=8" in caplog.text


def test_timeout_while_queued_behind_other_requests_says_queued(serve):
    srv = serve(LoopbackJudgeServer(slots=1))  # one slot; its capacity is not read (no preflight)
    srv.hang_next(1, seconds=5)  # the first request holds the only slot; the others wait in the queue
    c = client(srv, "judge.verifier.timeout_s=0.5", "judge.max_retries=0", "judge.concurrency=4")

    async def three():
        return await asyncio.gather(*[c.complete(PROMPT) for _ in range(3)], return_exceptions=True)

    errors = run(three())
    assert all(isinstance(e, JudgeCallError) and e.kind == "timeout" for e in errors)
    text = str(errors[-1])
    assert "2 other request(s) to it were in flight" in text and "waited in the server's queue" in text
    assert "lower judge.concurrency (now 4)" in text and "--parallel" in text


def test_timeout_with_nothing_else_in_flight_says_slow(judge_server):
    judge_server.hang_next(1, seconds=3)
    with pytest.raises(JudgeCallError) as ei:
        run(client(judge_server, "judge.verifier.timeout_s=0.3", "judge.max_retries=0").complete(PROMPT))
    text = str(ei.value)
    assert "no other request of ours in flight" in text and "the server itself is that slow" in text
    assert "queue" not in text


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_cached_prompt_tokens_are_read_from_the_usage_details(judge_server, api):
    # the server caches prompt prefixes the way OpenAI does (blocks of 128 tokens from 1024 on), and
    # reports them as usage.prompt_tokens_details.cached_tokens (chat) / input_tokens_details (responses)
    judge_server.prompt_caching = True
    judge_server.prompt_cache_min_tokens, judge_server.prompt_cache_block_tokens = 16, 8
    shared = "You are a strict grader. " * 20  # 500 characters: 125 tokens of shared prefix
    c = client(judge_server, f"judge.api={api}")
    first = run(c.complete([{"role": "user", "content": shared + "Question one?"}]))
    second = run(c.complete([{"role": "user", "content": shared + "Question two, longer?"}]))
    assert first.cached_prompt_tokens == 0
    assert second.cached_prompt_tokens == judge_server.requests[1].cached_tokens > 0
    assert second.cached_prompt_tokens <= 125 < second.prompt_tokens


def test_usage_without_details_leaves_cached_tokens_unknown():
    from engine.judging.client import cached_prompt_tokens

    assert cached_prompt_tokens({"prompt_tokens": 5, "completion_tokens": 2}) is None
    assert cached_prompt_tokens({"prompt_tokens_details": {"cached_tokens": 3}}) == 3
    assert cached_prompt_tokens({"prompt_tokens_details": None, "input_tokens_details": {"cached_tokens": 4}}) == 4
