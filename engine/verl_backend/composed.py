"""The verl config a launch would really run, and what ROPD requires of it.

:func:`compose` builds the config in-process with Hydra's compose API from the exact ``main_ppo`` command
line the launcher starts (same config dir, name and override strings), so the checks below see what verl
will see, including a user's own YAML (``verl.config_name``) and their ``verl.overrides``.

:func:`derived_overrides` returns the overrides the launcher appends after everything else, for settings
ROPD must have whatever the YAML says (each is documented in configs/verl/README.md):

- ``trainer.logger`` always includes ``file`` (the launcher ingests verl's metrics from it);
- ``actor.loss_scale_factor`` = ``data.max_response_length`` when ``loss_agg_mode`` is
  ``seq-mean-token-sum-norm`` (Dr.GRPO's constant; verl's ``None`` divides by each micro-batch's padded
  width, a length-dependent scale);
- ``trainer.max_actor_ckpt_to_keep`` = :data:`DEFAULT_CKPT_TO_KEEP` when it is ``null`` (verl keeps every
  checkpoint, which fills disks).

:func:`check` raises a :class:`~engine.errors.ConfigError` when the composed config would not train on
ROPD rewards: the reward manager verl would load is not ours, verl's reward-model path replaces the
reward loop, or the reward workers would hold more waiting calls than Ray lets one actor run at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from engine.errors import ConfigError

DEFAULT_CKPT_TO_KEEP = 3
DR_GRPO_AGG_MODE = "seq-mean-token-sum-norm"
# verl's RewardLoopWorker is a plain ``ray.remote`` async actor: Ray runs at most this many of its calls
# at once (ray._common.ray_constants.DEFAULT_MAX_CONCURRENCY_ASYNC) and queues the rest.
RAY_ACTOR_CONCURRENCY = 1000
# Every training rollout's call waits inside its worker until its whole group is scored; verl spreads
# calls over the workers at random, so keep the expected load per worker well below the limit.
SAFE_CALLS_PER_WORKER = 700
OUR_MANAGER = "engine.verl_backend.reward_manager.ROPDRewardManager"


def split_argv(argv: Sequence[str]) -> tuple[Path, str, list[str]]:
    """(config dir, config name, overrides) of a ``main_ppo`` command line."""
    args = list(argv)
    try:
        i, j = args.index("--config-path"), args.index("--config-name")
    except ValueError:
        raise ValueError("not a main_ppo command line (no --config-path/--config-name)") from None
    rest = [a for k, a in enumerate(args) if k > max(i, j) + 1]
    return Path(args[i + 1]), args[j + 1], rest


def compose(argv: Sequence[str]):
    """The composed (unresolved) DictConfig main_ppo would get from this command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir, config_name, overrides = split_argv(argv)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as e:  # noqa: BLE001 - Hydra/OmegaConf raise many types; the text names the key
        raise ConfigError(f"verl config {config_dir / config_name}.yaml does not compose with the run's "
                          f"overrides: {type(e).__name__}: {e}",
                          hint="check verl.config_name and verl.overrides (keys absent from verl's schema need "
                               "a leading '+')") from None
    finally:
        GlobalHydra.instance().clear()


def select(c, key: str, default: Any = None) -> Any:
    from omegaconf import OmegaConf

    v = OmegaConf.select(c, key, default=default, throw_on_missing=False)
    return default if v is None else v


def resolved(c, key: str, default: Any = None) -> Any:
    """A value with its interpolations resolved (``${data.max_response_length}``)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(c, key, default=default)
    except Exception:  # noqa: BLE001 - an interpolation to a missing key
        return default


def loggers(c) -> list[str]:
    v = select(c, "trainer.logger", [])
    return [str(v)] if isinstance(v, str) else [str(x) for x in v]


def derived_overrides(c) -> list[str]:
    """Overrides appended after the user's (see the module docstring)."""
    out = []
    lg = loggers(c)
    if "file" not in lg:
        out.append("trainer.logger=[" + ",".join(lg + ["file"]) + "]")
    if (str(select(c, "actor_rollout_ref.actor.loss_agg_mode", "")) == DR_GRPO_AGG_MODE
            and resolved(c, "actor_rollout_ref.actor.loss_scale_factor") is None):
        out.append(f"actor_rollout_ref.actor.loss_scale_factor={int(resolved(c, 'data.max_response_length'))}")
    if resolved(c, "trainer.max_actor_ckpt_to_keep") is None:
        out.append(f"trainer.max_actor_ckpt_to_keep={DEFAULT_CKPT_TO_KEEP}")
    return out


def min_reward_workers(train_batch_size: int, n: int) -> int:
    return max(1, math.ceil(train_batch_size * n / SAFE_CALLS_PER_WORKER))


def validation_enabled(c) -> bool:
    return bool(select(c, "trainer.val_before_train", False)) or int(select(c, "trainer.test_freq", -1) or -1) > 0


def check(c) -> list[str]:
    """Raise ConfigError when the composed config would not train on ROPD rewards; notes otherwise."""
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    rm = select(c, "reward.reward_manager", {})
    try:
        cls = resolve_reward_manager_cls(c)
        found = f"{cls.__module__}.{cls.__qualname__}"
    except Exception as e:  # noqa: BLE001 - unknown registry name, bad module path
        found = f"nothing loadable ({type(e).__name__}: {e})"
    if found != OUR_MANAGER:
        raise ConfigError(
            f"the composed verl config would load {found} as its reward manager, not ROPD's "
            f"(reward.reward_manager: source={rm.get('source')}, name={rm.get('name')}, "
            f"module.path={(rm.get('module') or {}).get('path')}): no group would ever be judged",
            hint="remove the reward.reward_manager.* settings from verl.overrides; the launcher sets "
                 "source=importlib, module.path=pkg://engine.verl_backend.reward_manager, name=ROPDRewardManager")
    if bool(select(c, "reward.reward_model.enable", False)):
        raise ConfigError(
            "reward.reward_model.enable is true in the composed verl config: verl would score rollouts with its "
            "reward model (or without the per-rollout fields ROPD needs) instead of calling ROPD's manager",
            hint="set reward.reward_model.enable=false (ROPD's judge is the reward)")
    notes = []
    bs = int(resolved(c, "data.gen_batch_size") or resolved(c, "data.train_batch_size"))
    n = int(resolved(c, "actor_rollout_ref.rollout.n"))
    workers = int(resolved(c, "reward.num_workers"))
    need = min_reward_workers(bs, n)
    if workers < need:
        raise ConfigError(
            f"reward.num_workers={workers} is too few for {bs} prompts x {n} rollouts per step: each reward worker "
            f"would hold about {math.ceil(bs * n / workers)} calls waiting for their groups, and Ray runs at most "
            f"{RAY_ACTOR_CONCURRENCY} calls of one actor at once (the rest queue behind them, so groups whose "
            "last rollout is queued never complete and time out)",
            hint=f"set reward.num_workers={need} or more in verl.overrides (at most {SAFE_CALLS_PER_WORKER} rollouts "
                 "per worker per step)")
    notes.append(f"verl: {bs} prompts x {n} rollouts per step, {workers} reward workers "
                 f"(~{math.ceil(bs * n / workers)} waiting calls each, Ray allows {RAY_ACTOR_CONCURRENCY})")
    for legacy in ("custom_reward_function.path", "reward_model.reward_manager"):
        if select(c, legacy) is not None:
            notes.append(f"verl: '{legacy}' is set but verl 0.9.1 ignores it (the keys moved under reward.*)")
    return notes
