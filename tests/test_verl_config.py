"""The verl config composes against the installed verl with our reward wiring, the launcher's command
line composes too, and the `verl.plugins` entry point registers our reward manager."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("verl")

from engine.config import load_config  # noqa: E402
from engine.verl_backend.launcher import (AttemptPaths, build_command, hydra_value,  # noqa: E402
                                          latest_checkpoint, local_num_cpus)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "verl" / "ropd_grpo.yaml"


def compose(argv: list[str]) -> dict:
    out = subprocess.run(argv + ["--cfg", "job"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return yaml.safe_load(out.stdout)


def test_shipped_config_defaults():
    raw = yaml.safe_load(CONFIG.read_text())
    assert raw["hydra"]["searchpath"] == ["pkg://verl.trainer.config"]
    assert raw["defaults"] == ["ppo_trainer", "_self_"]
    assert raw["trainer"]["resume_mode"] == "disable"  # never silently resume a stale run (verl's auto)
    assert raw["trainer"]["save_freq"] > 0


def test_launcher_command_composes_with_reward_wiring_and_resume(tmp_path):
    model = tmp_path / "student model"
    model.mkdir()
    cfg = load_config(None, ["run.backend=verl", f"verl.model_path={model}", "verl.nnodes=2",
                             "verl.n_gpus_per_node=8", "verl.group_timeout_s=123",
                             "verl.overrides=[trainer.total_training_steps=3, data.train_batch_size=16, "
                             "ray_kwargs.ray_init.num_cpus=12]"])
    paths = AttemptPaths.new(tmp_path / "run dir")
    ckpt = paths.checkpoints / "global_step_4"
    (ckpt / "actor").mkdir(parents=True)
    (paths.checkpoints / "latest_checkpointed_iteration.txt").write_text("4")
    found = latest_checkpoint(paths.checkpoints)
    assert found == (ckpt, 4)
    argv = build_command(cfg, run_name="exp-1", paths=paths, train_files="/d/train.parquet",
                         val_files="/d/val.parquet", gatherer="ropd_gatherer_7_1", resume_from=found[0])
    c = compose(argv)
    r = c["reward"]["reward_manager"]
    assert (r["source"], r["name"], r["module"]["path"]) == (
        "importlib", "ROPDRewardManager", "pkg://engine.verl_backend.reward_manager")
    assert c["algorithm"]["adv_estimator"] == "grpo"
    assert c["algorithm"]["norm_adv_by_std_in_grpo"] is False
    assert c["actor_rollout_ref"]["actor"]["optim"]["lr"] == pytest.approx(1e-6)
    assert c["actor_rollout_ref"]["rollout"]["n"] == 8
    assert c["actor_rollout_ref"]["model"]["path"] == str(model)
    assert c["data"]["train_batch_size"] == 16  # the user's override wins over the config's 32
    assert c["trainer"]["logger"] == ["console", "file"]
    assert c["trainer"]["total_training_steps"] == 3
    assert (c["trainer"]["nnodes"], c["trainer"]["n_gpus_per_node"]) == (2, 8)
    assert c["trainer"]["resume_mode"] == "resume_path"
    assert c["trainer"]["resume_from_path"] == str(ckpt)
    assert c["trainer"]["default_local_dir"] == str(paths.checkpoints)
    assert c["ropd"]["gatherer_name"] == "ropd_gatherer_7_1"
    assert c["ropd"]["gatherer_namespace"] == "ropd"
    assert c["ropd"]["group_timeout_s"] == 123
    # main_ppo joins the launcher's cluster, where ray.init must not get num_cpus; the launcher uses it
    assert c["ray_kwargs"]["ray_init"]["num_cpus"] is None
    assert local_num_cpus(cfg) == 12
    env_vars = c["ray_kwargs"]["ray_init"]["runtime_env"]["env_vars"]
    assert env_vars["VERL_FILE_LOGGER_PATH"] == str(paths.metrics)
    # a fresh run never resumes
    fresh = build_command(cfg, run_name="exp-1", paths=paths, train_files="a", val_files="b", gatherer="g",
                          resume_from=None)
    assert "trainer.resume_mode=disable" in fresh and not any("resume_from_path" in a for a in fresh)


def test_hydra_value_quoting():
    assert hydra_value("/a/b-c.parquet") == "/a/b-c.parquet"
    assert hydra_value("a b,c") == "'a b,c'"
    assert hydra_value("it's") == "'it\\'s'"


@pytest.mark.parametrize("override,message", [
    ("verl.model_path=null", "verl.model_path is not set"),
    ("verl.model_path=/no/such/model", "/no/such/model does not exist"),
    ("verl.config_name=nope", "no nope.yaml in"),
])
def test_bad_verl_settings_are_config_errors(tmp_path, override, message):
    from engine.errors import ConfigError

    cfg = load_config(None, ["run.backend=verl", f"verl.model_path={tmp_path}", override])
    with pytest.raises(ConfigError, match=message):
        build_command(cfg, run_name="x", paths=AttemptPaths.new(tmp_path), train_files="a", val_files="b",
                      gatherer="g", resume_from=None)


def test_plugin_entry_point_registers_reward_manager():
    # verl imports every `verl.plugins` entry point on `import verl` and swallows failures at DEBUG
    # level, so check the registry in a fresh interpreter.
    code = ("import verl\n"
            "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
            "cls = get_reward_manager_cls('ropd')\n"
            "print(cls.__module__ + '.' + cls.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("engine.verl_backend.reward_manager.ROPDRewardManager")


def test_preflight_refuses_bad_runs_before_anything_starts(tmp_path):
    from engine.errors import ConfigError, TeacherIndexError
    from engine.verl_backend.launcher import preflight

    base = ["run.backend=verl", f"verl.model_path={tmp_path}"]
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "What is 1 + 1?", "ground_truth": "2"}\n')
    preflight(load_config(None, base + ["judge.mode=offline", f"teacher.index={tmp_path / 'new.jsonl'}"]))  # demo builds it
    with pytest.raises(ConfigError, match="task.train_file not found"):
        preflight(load_config(None, base + ["task.name=jsonl", f"task.train_file={tmp_path / 'nope.jsonl'}"]))
    with pytest.raises(TeacherIndexError, match="teacher index not found"):
        preflight(load_config(None, base + ["task.name=jsonl", f"task.train_file={train}",
                                            f"teacher.index={tmp_path / 'missing.jsonl'}"]))
    with pytest.raises(ConfigError, match="verl.train_files"):
        preflight(load_config(None, base + [f"verl.train_files={tmp_path / 'x.parquet'}"]))
