"""The per-endpoint circuit breaker of the judge client, against a real HTTP server on 127.0.0.1
(tests/loopback_server.py): a judge that stops answering is cut short, a probe reply closes the
circuit again, replies and short hiccups never open it. ``score`` against a judge that hangs after
the preflight: tests/test_score_faults.py."""

from __future__ import annotations

import asyncio

import pytest

from engine.judging.client import JudgeCallError, JudgeClient
from loopback_server import LoopbackJudgeServer, loopback_config, run_closing_clients as run

PROMPT = [{"role": "user", "content": "What is 2 + 3? Reply as JSON."}]


def client(srv: LoopbackJudgeServer, *overrides: str) -> JudgeClient:
    cfg = loopback_config(srv, *overrides)
    return JudgeClient(cfg.judge.verifier, cfg.judge, "verifier")


def strict(srv: LoopbackJudgeServer, *overrides: str) -> JudgeClient:
    """No retries (so no quiet time), two failures in a row open the circuit, a probe after 0.3 s."""
    return client(srv, "judge.max_retries=0", "judge.circuit_breaker_failures=2", "judge.circuit_open_s=0.3",
                  *overrides)


async def failing(c: JudgeClient) -> JudgeCallError:
    with pytest.raises(JudgeCallError) as ei:
        await c.complete(PROMPT)
    return ei.value


def test_an_open_circuit_fails_requests_at_once_and_a_probe_reply_closes_it(judge_server):
    judge_server.drop_next(2)  # then the server is healthy again
    c = strict(judge_server)

    async def work():
        errors = [await failing(c) for _ in range(3)]
        sent = len(judge_server.requests)
        await asyncio.sleep(0.4)  # judge.circuit_open_s passes: the next request goes through as the probe
        probe = await c.complete(PROMPT)
        after = await c.complete(PROMPT)
        return errors, sent, probe, after

    errors, sent, probe, after = run(work())
    assert [e.kind for e in errors] == ["connection", "connection", "unreachable"]
    assert sent == 2  # the third request never reached the server
    msg = str(errors[2])
    assert judge_server.base_url in msg and "2 request(s) to it in a row failed with no reply" in msg
    assert "Server disconnected" in msg  # the last failure, in words
    assert "judge.verifier.timeout_s" in msg and "judge.circuit_open_s" in msg and "circuit_breaker_failures=0" in msg
    assert "answer is 5" in probe.text.lower() and "answer is 5" in after.text.lower()
    assert len(judge_server.requests) == 4  # the probe closed the circuit: the next request was sent too


def test_a_failed_probe_opens_the_circuit_again(judge_server):
    judge_server.drop_next(3)
    c = strict(judge_server)

    async def work():
        first = [await failing(c) for _ in range(2)]
        await asyncio.sleep(0.4)
        probe = await failing(c)  # dropped too
        cut = await failing(c)  # open again: not sent
        return first, probe, cut

    first, probe, cut = run(work())
    assert [e.kind for e in first] == ["connection", "connection"]
    assert probe.kind == "connection" and cut.kind == "unreachable"
    assert len(judge_server.requests) == 3


def test_requests_sleeping_before_a_retry_fail_at_once_when_the_circuit_opens(judge_server):
    # 4 requests at a judge that hangs: all 4 time out together after 1 s, longer than one request's retries
    # wait (0.5 s); the 4th failure opens the circuit and ends the other three's backoff sleeps at once:
    # 4 requests sent instead of 4 x (1 + 1).
    judge_server.hang_next(100, seconds=30)
    c = client(judge_server, "judge.circuit_breaker_failures=4", "judge.verifier.timeout_s=1", "judge.max_retries=1",
               "judge.retry_initial_delay_s=0.5", "judge.retry_max_delay_s=0.5")

    async def work():
        return await asyncio.gather(*(c.complete(PROMPT) for _ in range(4)), return_exceptions=True)

    results = run(work())
    assert all(isinstance(r, JudgeCallError) and r.kind == "unreachable" for r in results), results
    assert "4 request(s) to it in a row failed with no reply" in str(results[0])
    assert "last: no reply within 1 s" in str(results[0])
    assert len(judge_server.requests) == 4


def test_a_request_waiting_for_its_slot_after_a_backoff_sends_nothing_once_the_circuit_is_open(judge_server):
    # concurrency 1: A times out and sleeps; B takes the slot and times out too, which opens the circuit; A,
    # done sleeping and waiting for the slot meanwhile, must not send its retry when it gets the slot back.
    judge_server.hang_next(100, seconds=30)
    c = client(judge_server, "judge.concurrency=1", "judge.circuit_breaker_failures=2", "judge.verifier.timeout_s=1",
               "judge.max_retries=1", "judge.retry_initial_delay_s=0.1", "judge.retry_max_delay_s=0.1")

    async def work():
        return await asyncio.gather(c.complete(PROMPT), c.complete(PROMPT), return_exceptions=True)

    results = run(work())
    assert all(isinstance(r, JudgeCallError) and r.kind == "unreachable" for r in results), results
    assert len(judge_server.requests) == 2


def test_replies_reset_the_count_even_when_they_are_unusable_or_4xx(judge_server):
    # two failures in a row open the circuit; a reply between them (prose the parser will reject, a 404)
    # shows the server is there, so it never opens and every request reaches the server
    judge_server.drop_next(1)
    judge_server.fail_next(1, status=404, message="no such route")
    judge_server.drop_next(1)
    judge_server.reply_next("I cannot do that.")
    judge_server.drop_next(1)
    c = strict(judge_server)

    async def work():
        kinds = []
        for _ in range(5):
            try:
                comp = await c.complete(PROMPT)
                kinds.append(comp.text)
            except JudgeCallError as e:
                kinds.append(e.kind)
        kinds.append((await c.complete(PROMPT)).text[:10])
        return kinds

    kinds = run(work())
    assert kinds[:5] == ["connection", "not_found", "connection", "I cannot do that.", "connection"]
    assert len(judge_server.requests) == 6


def test_a_hiccup_shorter_than_the_retries_wait_is_ridden_out(judge_server):
    # 8 requests in flight all lose their connection at once (8 failures in a row, the threshold), but the
    # endpoint has not been silent for as long as one request's retries wait (0.1 + 0.2 + 0.2 s): the circuit
    # stays closed and every request succeeds on its retry.
    judge_server.drop_next(8)
    c = client(judge_server, "judge.concurrency=8", "judge.circuit_breaker_failures=8",
               "judge.retry_initial_delay_s=0.1", "judge.retry_max_delay_s=0.2")

    async def work():
        return await asyncio.gather(*(c.complete(PROMPT) for _ in range(8)))

    comps = run(work())
    assert all("answer is 5" in comp.text.lower() and comp.attempts == 2 for comp in comps)
    assert len(judge_server.requests) == 16


def test_a_training_batch_ended_by_the_breaker_is_exit_3_and_still_an_aborted_step(judge_server):
    # train: Scorer.check_failure_rate after each step's scoring; the worker exits with the error's code
    from engine.errors import JudgeUnreachableError, ScoringFailureRateError
    from engine.scoring.scorer import Scorer
    from test_fault_injection import fault_groups

    judge_server.hang_next(10_000, seconds=60)
    cfg = loopback_config(judge_server, "judge.rubricator.timeout_s=1", "judge.verifier.timeout_s=1", "scorer.k=2",
                          "judge.max_retries=4")
    scorer = Scorer(cfg)
    batch = scorer.score_batch_sync(fault_groups(8))
    assert all(g.status == "failed" and all(r is None for r in g.student_rewards) for g in batch.groups)
    with pytest.raises(ScoringFailureRateError) as ei:  # what the trainer catches to record the aborted step
        scorer.check_failure_rate(batch)
    err = ei.value
    assert isinstance(err, JudgeUnreachableError) and err.exit_code == 3
    assert err.message.startswith("the judge stopped answering: 8 of 8 groups failed to score")
    assert "circuit breaker is open" in err.message and "timeout_s" in (err.hint or "")
    assert len(judge_server.requests) <= 16  # 8 x (1 + 4) without the breaker


def test_the_breaker_can_be_turned_off(judge_server):
    judge_server.drop_next(3)
    c = strict(judge_server, "judge.circuit_breaker_failures=0")

    async def work():
        return [(await failing(c)).kind for _ in range(3)]

    assert run(work()) == ["connection"] * 3
    assert len(judge_server.requests) == 3
