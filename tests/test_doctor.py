"""``ropd-tui --headless doctor`` on this CPU machine: every check it can run, GPU checks SKIP, exit 0;
failing checks are FAIL lines with the evidence, never tracebacks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.checks import FAIL, PASS, SKIP
from engine.config import load_config
from engine.doctor import CHECKS, DoctorContext, check_judge, check_teacher_index, run_checks

ROOT = Path(__file__).resolve().parents[1]


def test_doctor_on_a_cpu_machine_runs_what_it_can_and_skips_the_gpu_checks(tmp_path):
    pytest.importorskip("verl")
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the smoke would run for real")
    res = subprocess.run([sys.executable, "-m", "ropd_tui.cli", "--headless", "doctor", "--gpu-smoke", "--json",
                          "judge.mode=offline", f"teacher.index={tmp_path / 'ti.jsonl'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    status = {c["name"]: c["status"] for c in out["checks"]}
    assert out["cuda"] is False and out["failed"] == 0
    assert status["verl 0.9.1"] == PASS and status["ROPD plugin registered in verl"] == PASS
    assert status["torch.cuda.is_available()"] == SKIP
    assert status["gpu smoke: two verl steps + resume to step 3"] == SKIP
    assert status["verl config ropd_grpo composes and calls ROPD's reward manager"] == PASS
    assert status["judge"] == PASS and status["teacher index readable"] == PASS
    evidence = {c["name"]: c["evidence"] for c in out["checks"]}
    assert "ropd -> engine.verl_backend.reward_manager.ROPDRewardManager" in evidence["ROPD plugin registered in verl"]
    assert "Traceback" not in res.stderr


def test_failing_checks_are_fail_lines_with_evidence(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    cfg = load_config(None, [f"judge.rubricator.base_url={url}", f"judge.verifier.base_url={url}",
                             "judge.rubricator.model=m", "judge.verifier.model=m", "judge.max_retries=0",
                             "task.name=jsonl", f"task.train_file={tmp_path / 't.jsonl'}",
                             f"teacher.index={tmp_path / 'missing.jsonl'}"])

    def broken(ctx):
        raise RuntimeError("boom")

    checks = run_checks(DoctorContext(cfg=cfg), [check_judge, check_teacher_index, broken])
    assert [c.status for c in checks] == [FAIL, FAIL, FAIL]
    assert url.split("/v1")[0] in checks[0].evidence
    assert "missing.jsonl" in checks[1].evidence
    assert checks[2].name == "broken" and checks[2].evidence == "RuntimeError: boom"
    assert check_gpu_smoke_is_last()


def check_gpu_smoke_is_last() -> bool:
    return CHECKS[-1].__name__ == "check_gpu_smoke"  # the slow one runs after every quick check


def test_doctor_names_a_shadowing_engine_folder_in_the_working_directory(tmp_path):
    """Issue 18: a user's own engine/ in the working directory is named by doctor (verl's Ray workers
    would import it), while the doctor itself still runs ropd-tui's engine (the installed command)."""
    from engine.doctor import check_our_packages

    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "__init__.py").write_text('raise SystemExit("WRONG ENGINE")\n')
    cfg = load_config(None, ["judge.mode=offline"])
    checks = check_our_packages(DoctorContext(cfg=cfg), cwd=str(tmp_path))
    status = {c.name: c for c in checks}
    assert status["`import engine` is ropd-tui's"].status == PASS
    assert status["`import ropd_tui` is ropd-tui's"].status == PASS
    shadow = status["working directory shadows no ropd-tui package"]
    assert shadow.status == FAIL and str(tmp_path) in shadow.evidence and "engine/" in shadow.evidence
    clean = check_our_packages(DoctorContext(cfg=cfg), cwd=str(tmp_path / "engine" / ".."  / "engine"))
    assert {c.status for c in clean} == {PASS}


def test_doctor_from_a_hostile_directory_runs_our_engine_and_fails_the_shadow_check(tmp_path):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "__init__.py").write_text('raise SystemExit("WRONG ENGINE")\n')
    exe = Path(sys.executable).with_name("ropd-tui")
    if not exe.exists():
        pytest.skip("the ropd-tui command is not installed next to this python")
    res = subprocess.run([str(exe), "--headless", "doctor", "--json", "judge.mode=offline",
                          f"teacher.index={tmp_path / 'ti.jsonl'}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ))
    assert "WRONG ENGINE" not in res.stdout + res.stderr
    out = json.loads(res.stdout)
    status = {c["name"]: c["status"] for c in out["checks"]}
    assert status["`import engine` is ropd-tui's"] == PASS
    assert status["working directory shadows no ropd-tui package"] == FAIL
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_doctor_names_a_changed_trl_hook(monkeypatch):
    trl = pytest.importorskip("trl")
    from engine.doctor import check_trl
    from engine.trainers.trl_compat import SUPPORTED_TRL

    cfg = load_config(None, ["judge.mode=offline"])
    (ok,) = check_trl(DoctorContext(cfg=cfg))
    assert ok.status == PASS and trl.__version__ in ok.evidence

    def _generate(self, prompts, images):  # a release that adds a parameter
        raise AssertionError("never called")

    monkeypatch.setattr(trl.GRPOTrainer, "_generate", _generate)
    (bad,) = check_trl(DoctorContext(cfg=cfg))
    assert bad.status == FAIL and "GRPOTrainer._generate(self, prompts, images) has changed" in bad.evidence
    assert f"trl{SUPPORTED_TRL}" in bad.evidence and "pip install" in bad.evidence
