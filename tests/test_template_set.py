"""Live template reload into a running scorer (real file changes picked up by watchfiles)."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from engine.config import Config
from engine.errors import TemplateError
from engine.scoring.scorer import Scorer
from engine.store import RunStore
from engine.templates.watched import TemplateSet
from engine.templates.render import PROMPTS_DIR, Template
from engine.types import GroupInput
from loopback_server import LoopbackJudgeServer

POLL_LIMIT_S = 20.0  # generous upper bound for a slow, shared CI machine; the poll exits as soon as it holds


def wait_for(cond, what: str):
    deadline = time.monotonic() + POLL_LIMIT_S
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def save_atomically(path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture
def setup(tmp_path):
    tdir = tmp_path / "prompts"
    tdir.mkdir()
    for role in ("rubricator", "verifier"):
        shutil.copy(PROMPTS_DIR / f"{role}.txt", tdir / f"{role}.txt")
    store = RunStore(tmp_path / "ropd.db")
    cfg = Config()
    cfg.templates.rubricator = str(tdir / "rubricator.txt")
    cfg.templates.verifier = str(tdir / "verifier.txt")
    run = store.create_run("live", "embedded", cfg.to_dict())
    with LoopbackJudgeServer() as srv:
        cfg.judge.mode = "llm"
        for ep in (cfg.judge.rubricator, cfg.judge.verifier):
            ep.model, ep.base_url = "judge-m", srv.base_url
        yield cfg, store, run, srv, tdir
    store.close()


def group(i: int) -> GroupInput:
    return GroupInput(prompt=f"What is {i} + 2?", rollouts=[f"{i} + 2 = {i + 2}. The answer is {i + 2}.", "7"],
                      ground_truth=str(i + 2), teacher_answers=[f"{i} + 2 = {i + 2}. The answer is {i + 2}."] * 4,
                      uid=f"g{i}")


class RunningScorer:
    """Scores one batch after another on a background thread, like a trainer does."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.batches = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        i = 0
        while not self.stop.is_set():
            self.batches.append(self.scorer.score_batch_sync([group(i), group(i + 1)]))
            i += 2

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


def test_edit_is_picked_up_by_a_running_scorer_and_recorded(setup):
    cfg, store, run, srv, tdir = setup
    ts = TemplateSet(cfg, store, run.id).start()
    try:
        v0 = ts.current("verifier").sha256
        with RunningScorer(Scorer(cfg, templates=ts)) as rs:
            wait_for(lambda: len(rs.batches) >= 1, "a first batch")
            assert all(g.template_versions["verifier"] == v0 for g in rs.batches[0].groups)
            ts.step = 7
            text = (tdir / "verifier.txt").read_text(encoding="utf-8")
            save_atomically(tdir / "verifier.txt", text.replace("You are a strict grader.",
                                                                "You are a strict grader. EDIT-1."))
            v1 = wait_for(lambda: ts.current("verifier").sha256 != v0 and ts.current("verifier").sha256,
                          "the new version to become current")
            n = len(rs.batches)
            wait_for(lambda: len(rs.batches) >= n + 2, "batches scored after the change")
        later = rs.batches[-1].groups
        assert all(g.status == "ok" and g.template_versions["verifier"] == v1 for g in later)
        assert all(g.template_versions["rubricator"] == ts.current("rubricator").sha256 for g in later)
        assert "EDIT-1" in srv.requests_for("verifier")[-1].prompt
        events = store.events(run.id, kinds=["template_changed"])
        assert len(events) == 1 and events[0]["step"] == 7
        assert events[0]["data"] == {"role": "verifier", "file": str((tdir / "verifier.txt").resolve()),
                                     "sha256": v1, "previous_sha256": v0}
        assert store.template(v1)["text"].count("EDIT-1") == 1
        used = {t["sha"]: t for t in store.templates(run.id, role="verifier")}
        assert set(used) == {v0, v1} and used[v1]["first_step"] == 7
    finally:
        ts.stop()
    assert not ts.watching


def test_invalid_edit_is_rejected_and_the_old_version_keeps_working(setup):
    cfg, store, run, srv, tdir = setup
    ts = TemplateSet(cfg, store, run.id).start()
    try:
        v0 = ts.current("verifier").sha256
        scorer = Scorer(cfg, templates=ts)
        text = (tdir / "verifier.txt").read_text(encoding="utf-8")
        broken = text.replace("{answers}", "{answer}")  # a typo: unknown placeholder, required one missing
        broken_line = text[: text.index("{answers}")].count("\n") + 1
        save_atomically(tdir / "verifier.txt", broken)
        wait_for(lambda: ts.last_error("verifier"), "the rejection")
        assert ts.current("verifier").sha256 == v0
        batch = scorer.score_batch_sync([group(1)])
        assert batch.groups[0].status == "ok" and batch.groups[0].template_versions["verifier"] == v0
        events = wait_for(lambda: store.events(run.id, kinds=["template_rejected"]), "the rejection event")
        assert len(events) == 1
        data = events[0]["data"]
        assert data["role"] == "verifier" and data["placeholder"] == "answer" and data["line"] == broken_line
        assert data["kept_sha256"] == v0 and "unknown placeholder" in data["error"]
        assert "stays in use" in events[0]["message"]
        # Fixing the file makes the fixed text current again.
        save_atomically(tdir / "verifier.txt", text + "\nFIXED\n")
        wait_for(lambda: ts.current("verifier").sha256 != v0, "the fixed version")
        assert ts.last_error("verifier") is None
        assert [c.accepted for c in ts.changes] == [False, True]
    finally:
        ts.stop()


def test_reload_without_watcher_and_bad_initial_template(tmp_path):
    good = tmp_path / "verifier.txt"
    shutil.copy(PROMPTS_DIR / "verifier.txt", good)
    ts = TemplateSet({"verifier": good})
    assert ts.reload("verifier") is None  # unchanged
    good.write_text(good.read_text() + "\nmore\n", encoding="utf-8")
    change = ts.reload("verifier")
    assert change.accepted and ts.history("verifier") == [change.previous_sha256, change.sha256]
    good.unlink()
    change = ts.reload("verifier")
    assert not change.accepted and "removed" in change.error
    assert ts.current("verifier").sha256 == ts.history("verifier")[-1]
    bad = tmp_path / "bad_verifier.txt"
    bad.write_text("{question} {rubrics}", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"missing the required placeholder\(s\) \{answers\}"):
        TemplateSet({"verifier": bad})
    fixed = TemplateSet({"verifier": Template.default("verifier")})
    assert fixed.current("verifier").sha256 == Template.default("verifier").sha256
    with pytest.raises(TemplateError, match="no rubricator template"):
        fixed.current("rubricator")
