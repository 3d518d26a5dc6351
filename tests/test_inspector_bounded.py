"""The Rubric inspector reads what it shows: a step's group summaries, and one group (the shown prompt) in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fixtures_store import BASE_TIME, build_store, make_group
from tui_pilot import FROZEN_NOW, wait_for, wait_screen

from engine.errors import StoreError
from engine.store import RunStore
from ropd_tui.app import RopdApp
from ropd_tui.screens import base
from ropd_tui.screens.inspector import InspectorScreen
from ropd_tui.widgets.answers import AnswerCard

ROOT = Path(__file__).resolve().parents[1]
GROUPS = 40  # a wide step: reading all of it would read 40 groups' answers, criteria and verdicts
STEP = 11  # demo-baseline's last step


class CountingStore:
    """A RunStore that records the calls of the readers the inspector may use."""

    WATCHED = ("step_groups", "group", "step_group_summaries")

    fail_once: set[int] = set()  # group ids whose next read fails (as if the step had been rewritten)

    def __init__(self, store: RunStore, calls: list[tuple[str, Any]]) -> None:
        self._store, self._calls = store, calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in self.WATCHED:
            return attr

        def wrapped(*args: Any, **kw: Any) -> Any:
            self._calls.append((name, args[0] if name == "group" else args[1] if len(args) > 1 else None))
            if name == "group" and args[0] in self.fail_once:
                self.fail_once.discard(args[0])
                raise StoreError(f"no group {args[0]}")
            return attr(*args, **kw)

        return wrapped


@pytest.fixture
def wide(tmp_path, monkeypatch) -> tuple[Path, int, list[tuple[str, Any]]]:
    path = tmp_path / "ropd.db"
    run_id = build_store(path)["demo-baseline"]
    with RunStore(path) as s:  # the last step again, with GROUPS prompts of 6 answers each
        s.write_step(run_id, STEP, {"loss": 1.0}, [make_group(STEP, gi) for gi in range(GROUPS)],
                     wall_time=BASE_TIME + STEP * 30.0)
    calls: list[tuple[str, Any]] = []
    opened = base.StoreGateway._open

    def _open(self):
        if self._store is None:
            self._store = CountingStore(opened(self), calls)
        return self._store

    monkeypatch.setattr(base.StoreGateway, "_open", _open)
    return path, run_id, calls


def inspector_app(path: Path, run_id: int) -> RopdApp:
    """The app opened straight on demo-baseline's Rubric inspector."""
    return RopdApp(path, clock=lambda: FROZEN_NOW, supervise=False, configs_dir=ROOT / "configs",
                   start=("inspector", {"run_id": run_id, "name": "demo-baseline"}))


def answers_of(path: Path, run_id: int, group_index: int) -> list[str]:
    with RunStore(path) as s:
        g = [g for g in s.step_groups(run_id, STEP, include_calls=False) if g["group_index"] == group_index][0]
    return sorted(a["text"] for a in g["answers"])


async def test_inspector_reads_one_group_of_a_wide_step_and_the_next_prompt_on_n(wide):
    path, run_id, calls = wide
    app = inspector_app(path, run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        insp = await wait_screen(pilot, InspectorScreen)
        # the step's summaries and the shown group's details: no other group is read
        assert not any(c[0] == "step_groups" for c in calls)
        assert [c[0] for c in calls if c[0] != "step_group_summaries"] == ["group"]
        ids = [g.id for g in insp.data.groups]
        assert len(ids) == GROUPS and insp.group.group_index == 0 and calls[-1] == ("group", ids[0])
        assert "prompt 1/40" in str(insp.query_one("#insp-status").content)
        assert sorted(c.answer.text for c in insp.query(AnswerCard)) == answers_of(path, run_id, 0)
        await pilot.press("n")  # the next prompt: its answers, read now
        assert insp.group.group_index == 1
        assert "prompt 2/40" in str(insp.query_one("#insp-status").content)
        assert sorted(c.answer.text for c in insp.query(AnswerCard)) == answers_of(path, run_id, 1)
        assert [c for c in calls if c[0] == "group"] == [("group", ids[0]), ("group", ids[1])]
        await pilot.press("p")  # back: held, not read again
        assert insp.group.group_index == 0
        assert sorted(c.answer.text for c in insp.query(AnswerCard)) == answers_of(path, run_id, 0)
        insp.reload()  # a poll of the same step reads the summaries again, the shown group not
        n = len(calls)
        await wait_for(pilot, lambda: len(calls) > n and not insp._polling, what="a reload")
        assert [c for c in calls if c[0] == "group"] == [("group", ids[0]), ("group", ids[1])]
        assert not any(c[0] == "step_groups" for c in calls)


async def test_a_rewritten_step_rereads_the_shown_group(wide):
    path, run_id, calls = wide
    app = inspector_app(path, run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        insp = await wait_screen(pilot, InspectorScreen)
        await pilot.press("n")
        old = insp.group
        with RunStore(path) as s:  # the step written again (new groups, new texts), one prompt fewer
            s.write_step(run_id, STEP, {"loss": 1.0}, [make_group(STEP, gi, seed=7) for gi in range(GROUPS - 1)],
                         wall_time=BASE_TIME + STEP * 30.0)
        fresh = answers_of(path, run_id, 1)
        assert fresh != sorted(a.text for a in old.answers)
        await wait_for(pilot, lambda: sorted(c.answer.text for c in insp.query(AnswerCard)) == fresh,
                       what="the rewritten step's prompt 2")
        assert insp.group.group_index == 1 and insp.group is not old and len(insp.data.groups) == GROUPS - 1
        assert "prompt 2/39" in str(insp.query_one("#insp-status").content)
        assert [c[1] for c in calls if c[0] == "group"][-1] == insp.data.groups[1].id


def test_step_group_summaries_match_step_groups(wide):
    path, run_id, _ = wide
    with RunStore(path) as s:
        full = s.step_groups(run_id, STEP, include_calls=False)
        assert s.step_group_summaries(run_id, STEP) == [
            {"id": g["id"], "step": STEP, "group_index": g["group_index"], "status": g["status"]} for g in full]
        assert s.step_group_summaries(run_id, STEP + 100) == []


async def test_a_failed_read_of_the_next_prompt_is_read_again_and_drawn(wide, monkeypatch):
    path, run_id, calls = wide
    app = inspector_app(path, run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        insp = await wait_screen(pilot, InspectorScreen)
        ids = [g.id for g in insp.data.groups]
        monkeypatch.setattr(CountingStore, "fail_once", {ids[1]})
        await pilot.press("n")
        want = answers_of(path, run_id, 1)
        await wait_for(pilot, lambda: sorted(c.answer.text for c in insp.query(AnswerCard)) == want,
                       what="prompt 2 read again by the next load")
        assert insp.group.group_index == 1 and [c[1] for c in calls if c[0] == "group"] == [ids[0], ids[1], ids[1]]
        assert "prompt 2/40" in str(insp.query_one("#insp-status").content)
