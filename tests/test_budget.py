"""judge.budget_usd in a real embedded run: a tiny Llama trained with an LLM judge over HTTP (the
loopback server), priced per role; the run stops cleanly (checkpoint, exit code 5, status stopped)
before its judge cost would pass the budget, and resumes with a higher one."""

from __future__ import annotations

import pytest

from engine.judging.cost import EXIT_BUDGET
from engine.runs.worker import run_worker
from engine.store import RunStore
from engine.trainers import embedded
from engine.trainers.embedded import latest_checkpoint
from loopback_server import LoopbackJudgeServer

PRICES = ["judge.rubricator.price_in_per_mtok=1000", "judge.rubricator.price_out_per_mtok=4000",
          "judge.verifier.price_in_per_mtok=500", "judge.verifier.price_out_per_mtok=2000"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def judge():
    with LoopbackJudgeServer() as srv:
        yield srv


def _cfg(tmp_path, tiny_model, srv, *extra):
    from engine.config import load_config

    return load_config(None, [
        f"trainer.model={tiny_model}", "trainer.prompts_per_step=2", "trainer.rollouts=2", "trainer.max_new_tokens=6",
        "trainer.learning_rate=1e-3", "trainer.threads=1", "task.num_prompts=4", "trainer.save_every=100",
        f"teacher.index={tmp_path / 'teacher.jsonl'}", "templates.watch=false", "scorer.k=2", "judge.mode=llm",
        f"judge.rubricator.base_url={srv.base_url}", f"judge.verifier.base_url={srv.base_url}",
        "judge.rubricator.model=judge", "judge.verifier.model=judge", *PRICES, *extra])


def test_run_stops_at_its_budget_with_a_checkpoint_and_exit_code_5_then_resumes(tmp_path, tiny_model, judge):
    store = RunStore(tmp_path / "runs" / "ropd.db")
    try:
        # what one step costs with these prices (same seed, same prompts: the same judge requests)
        probe_cfg = _cfg(tmp_path, tiny_model, judge, "trainer.steps=1")
        probe = store.create_run("probe", "embedded", probe_cfg.to_dict())
        assert embedded.run(probe_cfg, store, probe, log=lambda _m: None).status == "finished"
        step_usd = dict(store.metric_series(probe.id, "cost/step_usd"))[1]
        assert step_usd > 0

        # a budget of 1.5 steps: step 1 fits, step 2 would pass it -> stop after step 1, before spending more
        cfg = _cfg(tmp_path, tiny_model, judge, "trainer.steps=3", f"judge.budget_usd={1.5 * step_usd}")
        cfg.run.name = "capped"
        run = store.create_run("capped", "embedded", cfg.to_dict())
        assert run_worker(str(store.path), "capped", False) == EXIT_BUDGET
        rec = store.get_run(run.id)
        assert rec.status == "stopped" and rec.exit_code == EXIT_BUDGET
        assert "judge budget reached after step 1" in rec.cause and "--budget-usd" in rec.cause
        assert [s["step"] for s in store.steps(run.id)] == [1]
        total = dict(store.metric_series(run.id, "cost/total_usd"))[1]
        assert total <= cfg.judge.budget_usd
        assert latest_checkpoint(rec).name == "checkpoint-1"  # save_every=100: saved because of the budget
        assert "budget_reached" in [e["kind"] for e in store.events(run.id)]

        # resumed with the same budget: it stops again at once, without spending on another step
        assert run_worker(str(store.path), "capped", True) == EXIT_BUDGET
        assert [s["step"] for s in store.steps(run.id)] == [1]

        # a higher budget (as `resume --budget-usd` records it): the run continues from step 2 to the end
        from ropd_tui.commands.resume import set_budget

        set_budget(store, rec, 10 * step_usd)
        assert store.get_run(run.id).config["judge"]["budget_usd"] == pytest.approx(10 * step_usd)
        assert run_worker(str(store.path), "capped", True) == 0
        assert [s["step"] for s in store.steps(run.id)] == [1, 2, 3]
        totals = dict(store.metric_series(run.id, "cost/total_usd"))
        assert totals[3] > totals[2] > totals[1] == pytest.approx(total)
    finally:
        store.close()
