"""Headless run commands: runs, status, stop, resume, restart, logs, metrics, export, delete."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.store import RunStore
from engine.runs.supervisor import Supervisor
from ropd_tui.cli import build_parser, main

DUMMY = Path(__file__).resolve().parent / "dummy_trainers"
RUN_COMMANDS = ("runs", "status", "stop", "resume", "restart", "logs", "metrics", "export", "delete")


@pytest.fixture(autouse=True)
def _fast_monitor(monkeypatch):
    monkeypatch.setenv("ROPD_MONITOR_POLL_S", "0.1")


@pytest.fixture
def finished(tmp_path):
    """A store with one finished run of 3 steps (run by the supervisor, as `train` would)."""
    path = tmp_path / "runs" / "ropd.db"
    with RunStore(path) as store:
        rec = store.create_run("demo", "embedded", {"judge": {"verifier": {"api_key_env": "OPENAI_API_KEY"}}})
        argv = [sys.executable, str(DUMMY / "steps_ok.py"), "--store", str(path), "--run", str(rec.id), "--steps", "3"]
        sup = Supervisor(store)
        sup.launch(rec, argv, cwd=tmp_path)
        assert sup.wait(rec, timeout=30).status == "finished"
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_every_run_command_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in RUN_COMMANDS:
        assert name in sub.choices, name
        with pytest.raises(SystemExit) as exc:
            main(["--headless", name, "--help"])
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_runs_table_and_json(finished, capsys):
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "runs")
    assert rc == 0
    assert "demo" in out and "finished" in out and "STATUS" in out
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "runs", "--json")
    runs = json.loads(out)
    assert runs[0]["name"] == "demo" and runs[0]["last_step"] == 3
    assert runs[0]["reward"] == pytest.approx(0.3)  # reward/mean of step 3


def test_runs_without_a_store(tmp_path, capsys):
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(tmp_path / "none.db"), "runs", "--json")
    assert rc == 0 and json.loads(out) == []
    assert not (tmp_path / "none.db").exists()


def test_status_unknown_run_is_a_clear_error(finished, capsys):
    rc, out, err = run_cli(capsys, "--headless", "--store", str(finished), "status", "nope")
    assert rc == 2
    assert "no run 'nope'" in err and "Traceback" not in err


def test_status_shows_metrics_and_events(finished, capsys):
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "status", "demo")
    assert rc == 0 and "finished" in out and "reward/mean" in out and "started" in out
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "status", "1", "--json")
    d = json.loads(out)
    assert d["status"] == "finished" and d["latest_metrics"]["loss"] == pytest.approx(1 / 3)
    assert [e["kind"] for e in d["events"]][-1] == "finished"


def test_metrics_table_keys_and_json(finished, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "metrics", "demo")
    assert rc == 0 and "reward/mean" in out and "loss" in out
    header = out.splitlines()[0].split()
    assert "score/student_reward_mean" not in header  # one key per concept: reward/mean stands for it
    assert header[:3] == ["STEP", "reward/mean", "accuracy"] or header[:2] == ["STEP", "reward/mean"]
    # the default table fits the terminal and says what it left out
    monkeypatch.setenv("COLUMNS", "40")
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "metrics", "demo")
    table = [ln for ln in out.splitlines() if not ln.startswith("(")]
    assert rc == 0 and max(map(len, table)) <= 40 and table[0].split()[:2] == ["STEP", "reward/mean"]
    assert "did not fit" in out and "--keys" in out
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "metrics", "demo", "--keys", "loss", "--json")
    rows = json.loads(out)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["loss"] == pytest.approx(1.0)
    rc, out, err = run_cli(capsys, "--headless", "--store", str(finished), "metrics", "demo", "--keys", "nope")
    assert rc == 2 and "--list-keys" in err
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "metrics", "demo", "--list-keys")
    assert "score/student_reward_mean" in out


def test_logs(finished, capsys):
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "logs", "demo")
    assert rc == 0 and "step 1" in out and "step 3" in out
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "logs", "demo", "-n", "1")
    assert len(out.strip().splitlines()) == 1
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "logs", "demo", "-f")
    assert rc == 0 and "run ended: finished" in out
    assert "run ended: finished (" not in out  # the status is not repeated as its own cause
    # tqdm bars the trainer's libraries wrote are left out (--raw shows them)
    with RunStore(finished) as s:
        log = s.get_run("demo").log_path
    bar = "Map: 100%|██████████| 4/4 [00:00<00:00, 431.02 examples/s]"
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\rMap:   0%|          | 0/4 [00:00<?, ? examples/s]\r{bar}\nafter the bar\n")
    for extra in ((), ("-n", "3")):
        rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "logs", "demo", *extra)
        assert rc == 0 and "after the bar" in out and "examples/s" not in out
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "logs", "demo", "--raw")
    assert bar in out


@pytest.mark.parametrize("what", ["metrics", "answers", "verdicts"])
def test_export_csv_and_jsonl(finished, capsys, tmp_path, what):
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "export", "demo", "--format", "jsonl",
                         "--what", what)
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    target = tmp_path / f"{what}.csv"
    rc, _, err = run_cli(capsys, "--headless", "--store", str(finished), "export", "demo", "--format", "csv",
                         "--what", what, "--out", str(target))
    assert rc == 0 and "exported" in err
    csv_rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(csv_rows) == len(rows)
    if what == "metrics":
        assert {r["key"] for r in rows} >= {"loss", "reward/mean", "score/student_reward_mean"}
        assert len([r for r in rows if r["key"] == "loss"]) == 3
    elif what == "answers":
        assert len(rows) == 9  # 3 steps x (2 rollouts + 1 teacher answer)
        assert rows[0]["verdicts"] == [True, True] and rows[1]["verdicts"] == [True, False]
        assert csv_rows[1]["verdicts"] == "10" and csv_rows[0]["kind"] == "student"
        # the two kinds of cut are told apart: at the token limit (unknown for this trainer) and for the judge
        assert rows[0]["clipped"] is None and rows[0]["judge_truncated"] is False and "truncated" not in rows[0]
        assert list(csv_rows[0])[10:13] == ["checker", "clipped", "judge_truncated"]
    else:
        assert len(rows) == 3 * 3 * 2
        assert {r["criterion"] for r in rows} == {"criterion 0", "criterion 1"}


def test_status_reports_checkpoint_size_and_delete_checkpoints_frees_it(finished, capsys):
    with RunStore(finished) as s:
        rec = s.get_run("demo")
    for folder, step in ((rec.checkpoints_dir, 3), (rec.run_dir / "attempts" / "1" / "checkpoints", 2)):
        ckpt = folder / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"\0" * 1_500_000)
        (ckpt / "trainer_state.json").write_text("{}")
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "status", "demo")
    line = next(ln for ln in out.splitlines() if ln.startswith("checkpoints"))
    assert "3.0 MB in 2 checkpoints" in line and "delete demo --checkpoints --yes" in line
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "status", "demo", "--json")
    assert json.loads(out)["checkpoints"]["count"] == 2 and json.loads(out)["checkpoints"]["bytes"] > 3_000_000
    rc, _, err = run_cli(capsys, "--headless", "--store", str(finished), "delete", "demo", "--checkpoints")
    assert rc == 2 and "3.0 MB" in err and "--yes" in err and rec.checkpoints_dir.joinpath("checkpoint-3").exists()
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "delete", "demo", "--checkpoints", "--yes")
    assert rc == 0 and "deleted 2 checkpoint(s) of run demo (3.0 MB freed)" in out
    assert not list(rec.run_dir.rglob("checkpoint-*")) and rec.log_path.exists()
    with RunStore(finished) as s:  # the run, its steps and verdicts stay
        assert [st["step"] for st in s.steps(s.get_run("demo").id)] == [1, 2, 3]
        assert s.events(rec.id)[-1]["kind"] == "checkpoints_deleted"
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "status", "demo")
    assert next(ln for ln in out.splitlines() if ln.startswith("checkpoints")).split()[-1] == "none"


def test_stop_resume_restart_delete_cycle(finished, capsys):
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "stop", "demo")
    assert rc == 0 and "nothing to stop" in out
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "resume", "demo", "--json")
    assert rc == 0 and json.loads(out)["status"] in ("starting", "running")
    with RunStore(finished) as store:
        assert Supervisor(store).wait("demo", timeout=30).status == "finished"
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "restart", "demo")
    assert rc == 0 and "attempt 2" in out
    rc, out, err = run_cli(capsys, "--headless", "--store", str(finished), "delete", "demo")
    assert rc == 2 and "--yes" in err
    with RunStore(finished) as store:
        Supervisor(store).wait("demo", timeout=30)
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "delete", "demo", "--yes")
    assert rc == 0 and "deleted" in out
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(finished), "runs", "--json")
    assert json.loads(out) == []


def test_stop_a_running_run(tmp_path, capsys):
    path = tmp_path / "ropd.db"
    with RunStore(path) as store:
        rec = store.create_run("busy", "embedded", {})
        Supervisor(store).launch(rec, [sys.executable, str(DUMMY / "stall.py"), "--store", str(path),
                                       "--run", str(rec.id)], cwd=tmp_path)
        deadline = time.monotonic() + 20
        while store.get_run(rec.id).last_step is None and time.monotonic() < deadline:
            time.sleep(0.05)
    rc, out, _ = run_cli(capsys, "--headless", "--store", str(path), "stop", "busy", "--grace", "1", "--json")
    assert rc == 0 and json.loads(out) == {"id": rec.id, "name": "busy", "status": "stopped",
                                           "cause": json.loads(out)["cause"], "stopped": True}
    rc, out, err = run_cli(capsys, "--headless", "--store", str(path), "delete", "busy", "--yes")
    assert rc == 0


def test_headless_never_imports_textual_or_rich(finished):
    code = (
        "import sys\n"
        "from ropd_tui.cli import main\n"
        f"for cmd in (['runs'], ['status', 'demo'], ['metrics', 'demo'], ['logs', 'demo', '-n', '2'],"
        f" ['export', 'demo', '--what', 'answers']):\n"
        f"    assert main(['--headless', '--store', {str(finished)!r}, *cmd]) == 0, cmd\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "ropd_tui.cli", "--headless", "--store", str(finished), "runs"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "demo" in out.stdout
