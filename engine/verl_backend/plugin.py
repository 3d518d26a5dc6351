"""verl plugin (entry point ``verl.plugins: ropd = engine.verl_backend.plugin``).

``import verl`` loads every ``verl.plugins`` entry point in every process (driver, trainer, reward
workers), so this registers :class:`ROPDRewardManager` in verl's reward-loop registry as ``ropd``; a
config may then use ``reward.reward_manager.source=register reward.reward_manager.name=ropd`` instead of
the ``importlib`` wiring our config uses. verl swallows plugin import errors (DEBUG log), so
``tests/test_verl_config.py`` asserts the registration in a fresh interpreter.

Harmless to import: no Ray calls, no side effects beyond the registry entry; idempotent.
"""

from __future__ import annotations

from engine.verl_backend import REWARD_MANAGER_NAME


def register() -> None:
    from verl.experimental.reward_loop.reward_manager import register as verl_register
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

    from engine.verl_backend.reward_manager import ROPDRewardManager

    if REWARD_MANAGER.get(REWARD_MANAGER_NAME) is not ROPDRewardManager:
        verl_register(REWARD_MANAGER_NAME)(ROPDRewardManager)


register()
