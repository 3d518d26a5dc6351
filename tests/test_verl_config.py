"""The verl config composes against the installed verl with our reward wiring, the launcher's command
line composes too, and the `verl.plugins` entry point registers our reward manager."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytest.importorskip("verl")

from engine.config import load_config  # noqa: E402
from engine.verl_backend.launcher import (AttemptPaths, build_command, hydra_value,  # noqa: E402
                                          latest_checkpoint, local_num_cpus)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "verl" / "ropd_grpo.yaml"


def compose(argv: list[str], *extra: str) -> dict:
    """The config verl's own main_ppo prints for this command line (``--cfg job``)."""
    out = subprocess.run(argv + ["--cfg", "job", *extra], capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return yaml.safe_load(out.stdout)


def test_shipped_config_defaults():
    raw = yaml.safe_load(CONFIG.read_text())
    assert raw["hydra"]["searchpath"] == ["pkg://verl.trainer.config"]
    assert raw["defaults"] == ["ppo_trainer", "_self_"]
    assert raw["trainer"]["resume_mode"] == "disable"  # never silently resume a stale run (verl's auto)
    assert raw["trainer"]["save_freq"] > 0


def resolve(tmp_path, *overrides: str, config_name: str | None = None):
    """The launcher's own composition (in-process Hydra, as verl composes it) and its notes."""
    from engine.verl_backend.launcher import placeholder_command_args, resolve_command

    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    ov = ["run.backend=verl", f"verl.model_path={model}"] + ([f"verl.config_name={config_name}"] if config_name else [])
    if overrides:
        ov.append("verl.overrides=[" + ", ".join(overrides) + "]")
    cfg = load_config(None, ov)
    return resolve_command(cfg, **placeholder_command_args(cfg))


def test_composed_defaults_match_the_authors_setup(tmp_path):
    from omegaconf import OmegaConf

    argv, c, notes = resolve(tmp_path)
    get = lambda k: OmegaConf.select(c, k)  # noqa: E731
    assert get("data.train_batch_size") == 32 and get("actor_rollout_ref.actor.ppo_mini_batch_size") == 8
    assert get("actor_rollout_ref.actor.loss_agg_mode") == "token-mean"
    assert get("actor_rollout_ref.actor.clip_ratio_high") == pytest.approx(0.28)
    assert get("actor_rollout_ref.actor.clip_ratio_low") == pytest.approx(0.2)
    assert (get("algorithm.rollout_correction.rollout_is"), get("algorithm.rollout_correction.rollout_is_threshold")) \
        == ("token", 2.0)
    assert get("actor_rollout_ref.rollout.calculate_log_probs") is True
    assert (get("data.max_prompt_length"), get("data.max_response_length")) == (2048, 8192)
    vk = get("actor_rollout_ref.rollout.val_kwargs")
    assert (vk.n, vk.temperature, vk.do_sample) == (8, 1.0, True)
    assert OmegaConf.to_container(get("data.apply_chat_template_kwargs")) == {"enable_thinking": False}
    assert get("trainer.max_actor_ckpt_to_keep") == 3
    assert get("actor_rollout_ref.actor.optim.lr") == pytest.approx(1e-6)
    assert get("algorithm.norm_adv_by_std_in_grpo") is False
    # nothing had to be added: the shipped YAML already has file logging, a checkpoint limit, ...
    assert not any("added by ropd-tui" in n for n in notes)


def test_dr_grpo_loss_scale_is_a_constant_in_the_composed_config(tmp_path):
    from omegaconf import OmegaConf

    _, c, _ = resolve(tmp_path, "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
                      "data.max_response_length=3072")
    assert OmegaConf.select(c, "actor_rollout_ref.actor.loss_scale_factor") == 3072
    # a user's own YAML without the interpolation gets it from the launcher
    own = tmp_path / "dr_grpo.yaml"
    own.write_text("defaults:\n  - ppo_trainer\n  - _self_\nactor_rollout_ref:\n  actor:\n"
                   "    loss_agg_mode: seq-mean-token-sum-norm\n  rollout:\n    name: vllm\n")
    argv, c, notes = resolve(tmp_path, config_name=str(own))
    assert OmegaConf.select(c, "actor_rollout_ref.actor.loss_scale_factor") == OmegaConf.select(
        c, "data.max_response_length")
    assert any("loss_scale_factor" in n and "added by ropd-tui" in n for n in notes)


def test_users_own_yaml_gets_our_keys_and_forced_reward_wiring(tmp_path):
    """A verl YAML as users write them: no `ropd` section, verl's naive manager, wandb-only logging,
    checkpoints kept forever, not even a hydra.searchpath."""
    from omegaconf import OmegaConf

    from engine.verl_backend.reward_manager import ROPDRewardManager

    own = tmp_path / "my_grpo.yaml"
    own.write_text(textwrap.dedent("""\
        defaults:
          - ppo_trainer
          - _self_
        actor_rollout_ref:
          rollout:
            name: vllm
            n: 4
        reward:
          reward_manager:
            source: register
            name: naive
        trainer:
          logger: [console, wandb]
        """))
    argv, c, notes = resolve(tmp_path, "reward.reward_manager.name=dapo", config_name=str(own))
    assert OmegaConf.select(c, "ropd.gatherer_name") == "ropd_gatherer_preflight"
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    assert resolve_reward_manager_cls(c) is ROPDRewardManager  # forced after the user's own override
    assert list(OmegaConf.select(c, "trainer.logger")) == ["console", "wandb", "file"]
    assert OmegaConf.select(c, "trainer.max_actor_ckpt_to_keep") == 3
    assert OmegaConf.select(c, "actor_rollout_ref.rollout.n") == 4
    assert sum("added by ropd-tui" in n for n in notes) == 2
    assert "hydra.searchpath=[pkg://verl.trainer.config]" in argv  # the YAML has none of its own


def test_composed_config_that_would_not_call_our_manager_is_refused(tmp_path):
    from engine.errors import ConfigError
    from engine.verl_backend import composed

    own = tmp_path / "naive.yaml"
    own.write_text("defaults:\n  - ppo_trainer\n  - _self_\nactor_rollout_ref:\n  rollout:\n    name: vllm\n")
    argv, _, _ = resolve(tmp_path, config_name=str(own))
    # without the launcher's forced wiring, verl would load its naive manager: refused, naming it
    unforced = [a for a in argv if not a.startswith("++reward.reward_manager")]
    with pytest.raises(ConfigError, match="would load verl.experimental.reward_loop.reward_manager.naive"):
        composed.check(composed.compose(unforced))
    with pytest.raises(ConfigError, match="reward.reward_model.enable is true"):
        resolve(tmp_path, "reward.reward_model.enable=true")


def test_reward_workers_are_sized_against_rays_actor_concurrency(tmp_path):
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"reward.num_workers=4 is too few for 256 prompts x 16 rollouts") as ei:
        resolve(tmp_path, "data.train_batch_size=256", "actor_rollout_ref.rollout.n=16")
    assert "reward.num_workers=6" in ei.value.hint
    _, _, notes = resolve(tmp_path, "data.train_batch_size=256", "actor_rollout_ref.rollout.n=16",
                          "reward.num_workers=8")
    assert any("8 reward workers (~512 waiting calls each" in n for n in notes)


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
    # the reward wiring and our keys come after the user's overrides, so nothing can switch them off
    user = argv.index("trainer.total_training_steps=3")
    assert all(argv.index(a) > user for a in argv if a.startswith(("++reward.reward_manager", "++ropd.")))


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
