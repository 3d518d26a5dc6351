"""A user's own ``engine/`` or ``ropd_tui/`` folder in the working directory (many ML repositories have
one) must never be imported by ropd-tui's processes: the run monitor, the training worker, verl's
main, ``--serve`` tabs. Each is started through engine.runs.entrypoint; these tests run real
subprocesses from a hostile folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.runs.entrypoint import module_argv, package_roots, shadowing_folders
from engine.runs.supervisor import current_argv, worker_argv

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = 'raise SystemExit("WRONG {name}")\n'


def _hostile_dir(base: Path, *names: str) -> Path:
    for name in names:
        (base / name).mkdir(parents=True)
        (base / name / "__init__.py").write_text(HOSTILE.format(name=name.upper()))
    return base


@pytest.mark.parametrize("name", ["engine", "ropd_tui"])
def test_plain_python_m_from_a_hostile_folder_imports_the_users_package(tmp_path, name):
    """The hazard itself (so the test below cannot pass for the wrong reason)."""
    _hostile_dir(tmp_path, name)
    out = subprocess.run([sys.executable, "-m", f"{name}.nothing"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert f"WRONG {name.upper()}" in out.stderr


@pytest.mark.parametrize("name", ["engine", "ropd_tui"])
def test_entrypoint_runs_our_module_from_a_hostile_folder(tmp_path, name):
    _hostile_dir(tmp_path, name)
    code_module = "engine.runs.procinfo" if name == "engine" else "ropd_tui.package_check"
    # run a module of ours as __main__ and print where its package came from
    argv = module_argv("runpy_probe_unused")[:3]  # interpreter, entrypoint, roots
    probe = tmp_path / "probe_mod.py"
    probe.write_text(f"import {code_module.split('.')[0]} as p, sys\nprint('FROM', p.__file__)\nprint('ARGV', sys.argv[1:])\n")
    out = subprocess.run(argv + ["probe_mod", "--x", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"FROM {ROOT / code_module.split('.')[0] / '__init__.py'}" in out.stdout  # ours, not tmp_path's
    assert "ARGV ['--x', '1']" in out.stdout  # the user's own modules in the folder still import, last
    assert "WRONG" not in out.stderr


def test_commands_we_start_use_the_entrypoint(tmp_path):
    argv = worker_argv(tmp_path / "s.db", 7)
    assert argv[0] == sys.executable and argv[1].endswith(os.path.join("engine", "runs", "entrypoint.py"))
    assert argv[2].split(os.pathsep) == package_roots()
    assert argv[3:] == ["engine.runs.worker", "--store", str(tmp_path / "s.db"), "--run", "7"]


def test_commands_recorded_before_the_move_start_under_their_new_names():
    old = ["/usr/bin/python3", "-m", "engine.train_worker", "--store", "/s.db", "--run", "3"]
    assert current_argv(old) == module_argv("engine.runs.worker", "--store", "/s.db", "--run", "3")
    assert current_argv(["/usr/bin/python3", "-m", "engine.runs.worker", "--run", "3"]) == \
        module_argv("engine.runs.worker", "--run", "3")
    user = ["/usr/bin/python3", "my_trainer.py", "--lr", "1"]
    assert current_argv(user) == user  # a user's own command is theirs


def test_shadowing_folders_names_only_foreign_packages(tmp_path):
    assert shadowing_folders(tmp_path) == []
    _hostile_dir(tmp_path, "engine")
    assert shadowing_folders(tmp_path) == ["engine"]
    assert shadowing_folders(ROOT) == []  # our own checkout is not foreign


def test_verl_preflight_refuses_a_folder_that_would_shadow_engine_in_ray_workers(tmp_path):
    from engine.config import build_config
    from engine.errors import ConfigError
    from engine.trainers.preflight import _check_working_dir

    _hostile_dir(tmp_path, "engine")
    with pytest.raises(ConfigError, match="verl's Ray workers would import"):
        _check_working_dir(build_config({"run": {"backend": "verl"}}), str(tmp_path))
    notes = _check_working_dir(build_config({}), str(tmp_path))
    assert notes and "never import it" in notes[0]


def test_python_m_ropd_tui_with_a_foreign_engine_says_so(tmp_path):
    """`python -m ropd_tui.cli` from a folder with its own engine/: a clear message, exit 2."""
    _hostile_dir(tmp_path, "engine")
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # our ropd_tui first, the hostile engine/ via the cwd
    out = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, ''); "
                          "from ropd_tui.cli import main; main(['--headless', 'runs'])"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr
    assert "is not ropd-tui's" in out.stderr and str(tmp_path / "engine") in out.stderr
    assert "Traceback" not in out.stderr and "WRONG" not in out.stderr


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["engine", "ropd_tui"])
def test_train_from_a_folder_with_a_hostile_package_finishes(tmp_path, tiny_model, name):
    cli = Path(sys.executable).with_name("ropd-tui")
    if not cli.exists():
        pytest.skip("the ropd-tui console script is not installed next to this interpreter")
    work = _hostile_dir(tmp_path / "project", name)
    store = work / "runs" / "ropd.db"
    out = subprocess.run(
        [str(cli), "--headless", "--store", str(store), "train", "--config", str(ROOT / "configs" / "demo.yaml"),
         "--name", "hostile", f"trainer.model={tiny_model}", "trainer.steps=1", "trainer.prompts_per_step=2",
         "trainer.rollouts=2", "trainer.max_new_tokens=4", "trainer.threads=1", "trainer.eval_every=0",
         "task.num_prompts=2", f"teacher.index={tmp_path / 'teacher.jsonl'}", "judge.mode=offline"],
        cwd=work, capture_output=True, text=True, timeout=400, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log = (store.parent / "hostile" / "train.log")
    text = out.stdout + out.stderr + (log.read_text() if log.exists() else "")
    assert out.returncode == 0, text[-3000:]
    assert "WRONG" not in text
    assert "run hostile finished" in out.stdout
