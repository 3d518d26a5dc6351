"""Judge cost: prices per role, the cost/* metrics the store derives per step, display, settings checks.

Every expected number is computed by hand in the test (USD per million tokens)."""

from __future__ import annotations

import re

import pytest

from dummy_trainers.payloads import make_step
from engine.config import load_config
from engine.errors import ConfigError
from engine.judging.cost import (Pricing, RolePrice, budget_stop_reason, check_cost_settings, describe_cost,
                                 format_usd, pricing_from_config)
from engine.store import RunStore
from engine.types import JudgeCall

PRICED = ["judge.mode=llm", "judge.rubricator.model=r", "judge.verifier.model=v",
          "judge.rubricator.price_in_per_mtok=3", "judge.rubricator.price_out_per_mtok=15",
          "judge.rubricator.price_cached_in_per_mtok=0.3",
          "judge.verifier.price_in_per_mtok=0.5", "judge.verifier.price_out_per_mtok=1.5"]


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs" / "ropd.db")
    yield s
    s.close()


def test_a_call_costs_input_cached_input_and_output_at_their_prices():
    p = RolePrice(input=3.0, output=15.0, cached_input=0.3)
    # 1,000 prompt tokens of which 400 cached, 200 completion tokens:
    # 600 * 3 + 400 * 0.3 + 200 * 15 = 1800 + 120 + 3000 = 4920 per million -> 0.00492 USD
    assert p.usd(1000, 200, 400) == pytest.approx(0.00492)
    # no cached price: cached tokens are billed as input -> (1000 * 3 + 200 * 15) / 1e6
    assert RolePrice(3.0, 15.0).usd(1000, 200, 400) == pytest.approx(0.006)
    # unknown usage costs nothing; more cached than prompt tokens is clamped
    assert p.usd(None, None, None) == 0.0
    assert p.usd(100, 0, 500) == pytest.approx(100 * 0.3 / 1e6)


def test_roles_bill_to_their_endpoint_and_scalar_judge_to_the_teacher_when_it_has_a_model():
    cfg = load_config(None, PRICED + ["judge.teacher.price_in_per_mtok=10", "judge.teacher.price_out_per_mtok=30"])
    pricing = pricing_from_config(cfg)
    assert pricing.for_call("rubricator") == RolePrice(3.0, 15.0, 0.3)
    assert pricing.for_call("scalar_judge") == pricing.for_call("verifier")  # no teacher model
    with_teacher = pricing_from_config(load_config(None, PRICED + [
        "judge.teacher.model=t", "judge.teacher.price_in_per_mtok=10", "judge.teacher.price_out_per_mtok=30"]))
    assert with_teacher.for_call("scalar_judge") == RolePrice(10.0, 30.0)
    # the stored (dict) form of the config gives the same prices
    assert pricing_from_config(cfg.to_dict()) == pricing


def test_pricing_states_and_how_costs_are_shown():
    assert pricing_from_config(load_config(None, [])).state == "unpriced"
    assert pricing_from_config(load_config(None, PRICED)).state == "priced"
    assert pricing_from_config(load_config(None, ["judge.mode=offline"])).state == "offline"
    free = pricing_from_config(load_config(None, [f"judge.{r}.price_{d}_per_mtok=0" for r in ("rubricator", "verifier")
                                                  for d in ("in", "out")]))
    assert free.state == "free" and not free.positive
    partial = pricing_from_config(load_config(None, ["judge.rubricator.price_in_per_mtok=1"]))
    assert partial.state == "partial" and partial.unpriced_roles == ["verifier"]
    # a judge nobody priced is never shown as "$0.00"
    assert describe_cost(None, "unpriced") == "-"
    assert describe_cost(0.0, "free") == "free"
    assert describe_cost(None, "offline") == "free (offline judge)"
    assert describe_cost(1.234, "priced") == "$1.23"
    assert describe_cost(0.01234, "partial") == "$0.0123+"
    assert format_usd(1234.5) == "$1,234" and format_usd(None) == "-"


def test_the_store_derives_step_cost_running_total_and_cost_per_1000_rollouts(store):
    cfg = load_config(None, PRICED)
    rec = store.create_run("priced", "embedded", cfg.to_dict())
    # make_step: per group a rubricator call (900 in, 300 out) and a verifier call (3000 in, 500 out)
    step1 = make_step(1, 2, students=4, teachers=1, criteria=2)
    step1[0].calls[0].cached_prompt_tokens = 500  # 500 of the first rubricator call's 900 were cached
    store.write_step(rec.id, 1, {"loss": 1.0}, step1)
    rubricator = (900 * 3 + 300 * 15) / 1e6  # 0.0072
    rubricator_cached = (400 * 3 + 500 * 0.3 + 300 * 15) / 1e6  # 0.00585
    verifier = (3000 * 0.5 + 500 * 1.5) / 1e6  # 0.00225
    step1_usd = rubricator_cached + rubricator + 2 * verifier
    m = {k: v for k, v in store.latest_metrics([rec.id])[rec.id].items() if k.startswith("cost/")}
    assert m["cost/step_usd"] == pytest.approx(step1_usd)
    assert m["cost/total_usd"] == pytest.approx(step1_usd)
    assert m["cost/per_1k_rollouts_usd"] == pytest.approx(step1_usd / 8 * 1000)  # 2 groups x 4 rollouts
    with store.connection as c:
        cached = [r[0] for r in c.execute("SELECT cached_prompt_tokens FROM judge_calls ORDER BY seq")]
    assert cached == [500, None, None, None]

    step2 = make_step(2, 1, students=4, teachers=1, criteria=2)
    step2.append(make_step(2, 1, students=4, teachers=1, criteria=2)[0])
    step2[1].calls = [JudgeCall(role="verifier", model="v", status="ok", latency_s=0.1, cached=True,
                                prompt_tokens=10_000, completion_tokens=10_000)]  # a replay-cache hit: free
    store.write_step(rec.id, 2, {}, step2)
    step2_usd = rubricator + verifier
    series = dict(store.metric_series(rec.id, "cost/total_usd"))
    assert series[1] == pytest.approx(step1_usd) and series[2] == pytest.approx(step1_usd + step2_usd)
    assert dict(store.metric_series(rec.id, "cost/step_usd"))[2] == pytest.approx(step2_usd)
    assert dict(store.metric_series(rec.id, "cost/per_1k_rollouts_usd"))[2] == pytest.approx(
        (step1_usd + step2_usd) / 16 * 1000)


def test_a_step_scored_in_several_batches_adds_its_calls_up(store):
    rec = store.create_run("append", "verl", load_config(None, PRICED).to_dict())
    first, second = make_step(1, 2, students=2, teachers=1, criteria=2)
    store.write_step(rec.id, 1, {}, [first])
    second.group_index = 1
    store.write_step(rec.id, 1, {}, [second], append=True)
    one_group = (900 * 3 + 300 * 15 + 3000 * 0.5 + 500 * 1.5) / 1e6
    assert dict(store.metric_series(rec.id, "cost/step_usd"))[1] == pytest.approx(2 * one_group)
    assert dict(store.metric_series(rec.id, "cost/total_usd"))[1] == pytest.approx(2 * one_group)


def test_no_cost_metrics_without_a_price_or_without_usage(store):
    unpriced = store.create_run("unpriced", "embedded", load_config(None, []).to_dict())
    store.write_step(unpriced.id, 1, {}, make_step(1, 1, students=2, teachers=1, criteria=2))
    assert not [k for k in store.metric_keys(unpriced.id) if k.startswith("cost/")]
    priced = store.create_run("no-usage", "embedded", load_config(None, PRICED).to_dict())
    groups = make_step(1, 1, students=2, teachers=1, criteria=2)
    for call in groups[0].calls:  # e.g. the offline judge, or a server that reports no usage
        call.prompt_tokens = call.completion_tokens = None
    store.write_step(priced.id, 1, {}, groups)
    assert not [k for k in store.metric_keys(priced.id) if k.startswith("cost/")]


def test_budget_rule_stops_before_the_next_step_would_pass_the_budget():
    assert budget_stop_reason(0.4, 0.2, 1.0, 2) is None  # 0.4 + 0.2 <= 1.0
    reason = budget_stop_reason(0.9, 0.2, 1.0, 3)
    assert reason and "after step 3" in reason and "$0.90" in reason and "$1.00" in reason
    assert budget_stop_reason(1.2, 0.0, 1.0, 4)  # already past it
    assert budget_stop_reason(5.0, 5.0, None, 1) is None  # no budget


def test_cost_settings_are_checked():
    # a price or budget out of range is refused when the config loads (engine.config.RANGES)
    with pytest.raises(ConfigError, match="'judge.verifier.price_out_per_mtok' must be >= 0"):
        load_config(None, ["judge.verifier.price_out_per_mtok=-1"])
    with pytest.raises(ConfigError, match="no judge price is set") as e:
        check_cost_settings(load_config(None, ["judge.budget_usd=5"]))
    assert "judge.rubricator and judge.verifier" in e.value.hint
    with pytest.raises(ConfigError, match="'judge.budget_usd' must be > 0"):
        load_config(None, PRICED + ["judge.budget_usd=0"])
    check_cost_settings(load_config(None, PRICED + ["judge.budget_usd=2.5"]))
    assert isinstance(pricing_from_config({}), Pricing)


# ---------------------------------------------------------------------------------------------
# the preflight's first-step estimate

def _estimate_setup(tmp_path, *extra):
    import json

    from engine.teacher.index import append_rows, make_row

    (tmp_path / "rub.txt").write_text("Q:{question}\nT:{teacher_response}\nS:{student_response}", encoding="utf-8")
    (tmp_path / "ver.txt").write_text("Q:{question}\nR:{rubrics}\nA:{answers}", encoding="utf-8")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"prompt": p, "ground_truth": g}) + "\n"
                                                  for p, g in (("1+1?", "2"), ("2+5?", "7"))), encoding="utf-8")
    append_rows(tmp_path / "teacher.jsonl", [make_row("1+1?", ["It is 2.", "2"]), make_row("2+5?", ["7", "Seven: 7"])])
    return load_config(None, [
        "task.name=jsonl", f"task.train_file={tmp_path / 'train.jsonl'}", f"teacher.index={tmp_path / 'teacher.jsonl'}",
        f"templates.rubricator={tmp_path / 'rub.txt'}", f"templates.verifier={tmp_path / 'ver.txt'}",
        "trainer.prompts_per_step=2", "trainer.rollouts=2", "trainer.max_new_tokens=5", "trainer.steps=10",
        "scorer.k=2", "scorer.max_criteria=4", "scorer.min_criteria=4", "scorer.verifier_chunk_size=3",
        "judge.mode=llm", "judge.rubricator.model=r", "judge.verifier.model=v",
        "judge.rubricator.base_url=http://127.0.0.1:9/v1", "judge.verifier.base_url=http://127.0.0.1:9/v1",
        "judge.rubricator.price_in_per_mtok=2", "judge.rubricator.price_out_per_mtok=8",
        "judge.verifier.price_in_per_mtok=1", "judge.verifier.price_out_per_mtok=4", *extra])


def test_first_step_estimate_renders_the_prompts_and_prices_them_by_hand(tmp_path):
    from engine.judging.cost_estimate import estimate_first_step

    cfg = _estimate_setup(tmp_path)
    est = estimate_first_step(cfg)
    rub, ver = est.roles["rubricator"], est.roles["verifier"]
    # one rubricator call per prompt; the pool of 2 rollouts + 2 teacher answers in chunks of 3: 2 calls per prompt
    assert (rub.calls, ver.calls) == (2, 4)
    # the first rubricator prompt, rendered by hand: student answers are max_new_tokens * 4 = 20 characters
    s = "x" * 20
    prompt1 = ("Q:1+1?\nT:" + '<teacher_answer id="1">\nIt is 2.\n</teacher_answer>\n\n<teacher_answer id="2">\n2\n'
               "</teacher_answer>\nS:" + f'<student_answer id="1">\n{s}\n</student_answer>\n\n'
               f'<student_answer id="2">\n{s}\n</student_answer>')
    prompt2 = prompt1.replace("1+1?", "2+5?").replace("It is 2.", "7").replace("\n2\n</teacher", "\nSeven: 7\n</teacher")
    assert rub.prompt_tokens == (len(prompt1) // 4 + 4) + (len(prompt2) // 4 + 4)
    # prices: rubricator $2 in / $8 out, verifier $1 in / $4 out per million tokens
    by_hand = (rub.prompt_tokens * 2 + rub.completion_tokens * 8 + ver.prompt_tokens * 1 + ver.completion_tokens * 4) / 1e6
    assert est.usd == pytest.approx(by_hand)
    assert 0 < est.usd < 0.01
    text = est.describe(10)
    assert "first step (estimate)" in text and "characters / 4" in text and "10 steps" in text


def test_preflight_prints_the_estimate_and_refuses_a_budget_below_the_first_step(tmp_path):
    from engine.judging.cost_estimate import estimate_first_step
    from engine.trainers.preflight import _check_cost

    cfg = _estimate_setup(tmp_path, "judge.budget_usd=1")
    notes = _check_cost(cfg, {})
    assert notes[0].startswith("judge cost, first step (estimate): $")
    assert "judge budget: $1.00" in notes[1] and "exit code 5" in notes[1]
    step = estimate_first_step(cfg).usd
    with pytest.raises(ConfigError, match="more than judge.budget_usd") as e:
        _check_cost(_estimate_setup(tmp_path, f"judge.budget_usd={step / 2}"), {})
    assert "raise judge.budget_usd" in e.value.hint
    # an unpriced LLM judge says how to price it; an offline judge says nothing (it is free)
    unpriced = load_config(None, ["judge.mode=llm", "judge.rubricator.model=r", "judge.verifier.model=v"])
    assert "not priced" in _check_cost(unpriced, {})[0]
    assert _check_cost(load_config(None, ["judge.mode=offline"]), {}) == []


# ---------------------------------------------------------------------------------------------
# where costs are shown: status, runs, export, the Runs and Run screens

def _priced_store(tmp_path):
    store = RunStore(tmp_path / "runs" / "ropd.db")
    cfg = load_config(None, PRICED + ["judge.budget_usd=1"])
    priced = store.create_run("priced", "embedded", cfg.to_dict())
    for step in (1, 2):
        store.write_step(priced.id, step, {"loss": 1.0}, make_step(step, 2, students=4, teachers=1, criteria=2))
    store.create_run("unpriced", "embedded", load_config(None, []).to_dict())
    store.create_run("offline", "embedded", load_config(None, ["judge.mode=offline"]).to_dict())
    return store, priced


ONE_GROUP = (900 * 3 + 300 * 15 + 3000 * 0.5 + 500 * 1.5) / 1e6  # 0.00945 USD: rubricator + verifier call


def test_status_runs_and_export_show_the_cost(tmp_path, capsys):
    import csv
    import io
    import json

    from ropd_tui.cli import main

    store, priced = _priced_store(tmp_path)
    store.close()
    db = str(tmp_path / "runs" / "ropd.db")
    assert main(["--headless", "--store", db, "status", "priced"]) == 0
    out = capsys.readouterr().out
    # 2 steps x 2 groups: total 4 x 0.00945 = 0.0378; last step 0.0189; per 1,000 of 16 rollouts: 2.3625
    assert re.search(r"judge cost +\$0\.0378 total · \$0\.0189 last step · \$2\.36 per 1,000 rollouts · budget \$1\.00 "
                     r"\(4% used\)", out), out
    assert main(["--headless", "--store", db, "status", "priced", "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)["cost"]
    assert cost["total_usd"] == pytest.approx(4 * ONE_GROUP) and cost["pricing"] == "priced"
    assert main(["--headless", "--store", db, "status", "unpriced"]) == 0
    assert re.search(r"judge cost +- \(not priced", capsys.readouterr().out)
    assert main(["--headless", "--store", db, "runs"]) == 0
    table = capsys.readouterr().out
    assert "JUDGE COST" in table and "$0.0378" in table and "free (offline judge)" in table
    assert "0.00" not in table.split("JUDGE COST")[1].replace("$0.0378", "")  # nothing unpriced shown as $0.00

    assert main(["--headless", "--store", db, "export", "priced", "--what", "cost", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["step"], r["role"], r["calls"]) for r in rows] == [("1", "rubricator", "2"), ("1", "verifier", "2"),
                                                                  ("2", "rubricator", "2"), ("2", "verifier", "2")]
    assert float(rows[0]["usd"]) == pytest.approx(2 * (900 * 3 + 300 * 15) / 1e6)
    assert sum(float(r["usd"]) for r in rows) == pytest.approx(4 * ONE_GROUP)
    assert main(["--headless", "--store", db, "export", "unpriced", "--what", "cost"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["--headless", "--store", db, "export", "priced", "--what", "metrics"]) == 0
    keys = {json.loads(line)["key"] for line in capsys.readouterr().out.splitlines()}
    assert {"cost/step_usd", "cost/total_usd", "cost/per_1k_rollouts_usd"} <= keys


def test_runs_screen_rows_and_the_run_screen_cost_curve(tmp_path):
    from ropd_tui.screens.views import PANELS, panel_lines, run_row

    store, priced = _priced_store(tmp_path)
    try:
        rows = {r.name: r for r in (run_row(d) for d in store.list_runs())}
        assert rows["priced"].cost == "$0.0378" and rows["unpriced"].cost == "-" and rows["offline"].cost == "free"
        panel = next(p for p in PANELS if p.keys == ("cost/total_usd",))
        total, per_step = panel_lines(store, priced.id, store.metric_keys(priced.id), panel, "priced")
        assert total.label == "total" and total.steps == [1.0, 2.0]
        assert total.values == pytest.approx([2 * ONE_GROUP, 4 * ONE_GROUP])
        assert per_step.label == "per step" and per_step.values == pytest.approx([2 * ONE_GROUP, 2 * ONE_GROUP])
    finally:
        store.close()
