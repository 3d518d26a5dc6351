"""``ROPDRewardManager``: verl's reward-loop manager for ROPD rubric rewards.

Wiring (configs/verl/ropd_grpo.yaml)::

    reward.reward_manager.source=importlib
    reward.reward_manager.module.path=pkg://engine.verl_backend.reward_manager
    reward.reward_manager.name=ROPDRewardManager

(The ``verl.plugins`` entry point also registers it as ``ropd`` for ``source=register``.)

``run_single`` receives ONE rollout. Training rollouts are forwarded to the run's
:class:`~engine.verl_backend.gatherer.GroupGatherer` actor (``ropd.gatherer_name`` in namespace
``ropd.gatherer_namespace``), which replies once the whole group of ``actor_rollout_ref.rollout.n``
rollouts of that ``uid`` is scored.

Validation rollouts are recognised by ``extra_info.ropd_split == "val"``: the launcher writes that marker
on every row of the validation file verl reads, whatever its source (verl does not tell a reward manager
it is validating). They never reach the gatherer: each is scored where it arrives, rule-based against its
ground truth, with no judge call and no teacher index - by verl's ``default_compute_score`` for the data
sources verl knows (``openai/gsm8k``, ``lighteval/MATH``, ``math_dapo``, ``aime*``, ...; so accuracy matches
standard verl numbers), by ``reward.custom_reward_function`` when one is configured, and by
the task's checker otherwise (``ropd.checker``, set from ``task.checker``; in
checker worker processes, ``ropd.checker_timeout_s`` per answer, off the event loop). Validation groups therefore need no sizing and never mix into a
training step's rows in the run store.

``reward_extra_info`` has the same scalar keys for every sample:
``acc`` (correctness when a ground truth exists, else the reward; validation accuracy appears as
``val-core/<data_source>/acc/mean@N``), ``rubric_reward``, ``group_failed`` (1.0 for a failed group,
whose reward is 0), ``teacher_mean`` (mean rubric score of the teacher answers of that prompt).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import time
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

log = logging.getLogger(__name__)

EXTRA_KEYS = ("acc", "rubric_reward", "group_failed", "teacher_mean")
SPLIT_KEY = "ropd_split"  # engine.verl_backend.data.SPLIT_KEY (not imported: keeps this module light)
VAL_SPLIT = "val"


def _plain(x: Any) -> Any:
    """numpy scalars/arrays (as verl's non-tensor batch holds them) -> plain Python values."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _cfg_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    cur = cfg
    for part in dotted.split("."):
        if cur is None:
            return default
        try:
            cur = cur.get(part) if hasattr(cur, "get") else getattr(cur, part, None)
        except Exception:  # noqa: BLE001 - omegaconf struct errors
            return default
    return default if cur is None else cur


def extra_info(acc: float, rubric_reward: float, failed: bool, teacher_mean: float) -> dict[str, float]:
    return {"acc": float(acc), "rubric_reward": float(rubric_reward), "group_failed": float(bool(failed)),
            "teacher_mean": float(teacher_mean)}


class ROPDRewardManager(RewardManagerBase):
    """Rubric reward per rollout, computed group-wise by the run's gatherer actor."""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None,
                 reward_model_tokenizer=None, **_: Any):
        super().__init__(config, tokenizer, compute_score)
        self.gatherer_name = _cfg_get(config, "ropd.gatherer_name")
        self.gatherer_namespace = _cfg_get(config, "ropd.gatherer_namespace", "ropd")
        self.group_timeout_s = float(_cfg_get(config, "ropd.group_timeout_s", 600.0))
        self.n_train = int(_cfg_get(config, "actor_rollout_ref.rollout.n", 1))
        self.checker_spec = str(_cfg_get(config, "ropd.checker", "math_verify"))
        self.checker_timeout_s = float(_cfg_get(config, "ropd.checker_timeout_s", 5.0))
        self._gatherer = None
        self._worker_id = f"{os.uname().nodename}:{os.getpid()}"  # the gatherer counts waiting calls per worker
        # data sources verl's default_compute_score does not know (scored by check_answer instead)
        self._unknown_sources: set[str] = set()

    # -- gatherer handle ---------------------------------------------------------------------------
    def _lookup_gatherer(self, wait_s: float = 60.0):
        import ray

        if not self.gatherer_name:
            raise RuntimeError(
                "ROPD reward manager: ropd.gatherer_name is not set. Start verl runs through "
                "`ropd-tui --headless train` (backend verl), which creates the group gatherer and sets it.")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return ray.get_actor(self.gatherer_name, namespace=self.gatherer_namespace)
            except ValueError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"ROPD reward manager: no Ray actor '{self.gatherer_name}' in namespace "
                        f"'{self.gatherer_namespace}' after {wait_s:g} s; the run's launcher must be alive "
                        "and connected to the same Ray cluster") from None
                time.sleep(0.5)

    async def _get_gatherer(self):
        if self._gatherer is None:
            self._gatherer = await self.loop.run_in_executor(None, self._lookup_gatherer)
        return self._gatherer

    # -- verl contract -----------------------------------------------------------------------------
    async def run_single(self, data: DataProto) -> dict:
        item = data[-1:][0]  # multi-output trajectories: the last sequence carries the reward
        responses = item.batch["responses"]
        valid_len = int(item.batch["attention_mask"][-responses.shape[-1]:].sum())
        valid_ids = responses[:valid_len]
        text = await self.loop.run_in_executor(
            None, lambda: self.tokenizer.decode(valid_ids, skip_special_tokens=True))

        nt = item.non_tensor_batch
        info = _plain(nt.get("extra_info")) or {}
        reward_model = _plain(nt.get("reward_model")) or {}
        ground_truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
        ground_truth = None if ground_truth is None else str(ground_truth)
        validating = str(info.get(SPLIT_KEY, "")) == VAL_SPLIT

        if validating:
            source = str(info.get("ropd_data_source") or _plain(nt.get("data_source", "")) or "")
            score, acc = await self._validation_score(source, text, ground_truth, info)
            return {"reward_score": score, "reward_extra_info": extra_info(acc, 0.0, False, 0.0)}

        uid = nt.get("uid")
        if uid is None:
            raise RuntimeError("ROPD reward manager: the sample has no 'uid'; ROPD needs verl's streaming "
                               "reward path (reward.reward_model.enable=false)")
        prompt = info.get("ropd_prompt")
        if isinstance(prompt, str):
            try:
                prompt = json.loads(prompt)
            except ValueError:
                pass
        if prompt is None:
            prompt = _plain(nt.get("raw_prompt"))
        step = nt.get("global_steps")
        sample = {
            "uid": str(_plain(uid)),
            "index": _plain(nt.get("session_id")),
            "text": text,
            "prompt": prompt,
            "ground_truth": ground_truth,
            "n": self.n_train,
            "step": int(_plain(step)) if step is not None else None,
            "meta": {"data_source": str(_plain(nt.get("data_source", ""))), "split": "train",
                     "index": info.get("index")},
            "worker": self._worker_id,
        }
        gatherer = await self._get_gatherer()
        # The gatherer fails a group itself after group_timeout_s (arrival) + group_timeout_s (scoring);
        # this outer bound only catches a gatherer that stopped answering.
        out = await asyncio.wait_for(gatherer.submit.remote(sample), timeout=2 * self.group_timeout_s + 60)
        return {"reward_score": float(out["reward"]),
                "reward_extra_info": extra_info(out["acc"], out["rubric_reward"], out["failed"], out["teacher_mean"])}

    # -- validation: rule-based, here, no judge --------------------------------------------------------
    async def _validation_score(self, source: str, text: str, ground_truth: str | None,
                                info: dict[str, Any]) -> tuple[float, float]:
        """(reward, accuracy) of one validation rollout."""
        if ground_truth is None:  # preflight refuses such rows; a reward of 0 rather than a crash mid-run
            log.warning("validation sample of %r has no ground truth; scored 0", source)
            return 0.0, 0.0
        fn = self.compute_score
        if fn is not None and source not in self._unknown_sources:
            try:
                if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "func", None)):
                    res = await fn(data_source=source, solution_str=text, ground_truth=ground_truth, extra_info=info)
                else:
                    res = await self.loop.run_in_executor(None, lambda: fn(
                        data_source=source, solution_str=text, ground_truth=ground_truth, extra_info=info))
                return _score_and_acc(res)
            except NotImplementedError:  # verl's default_compute_score: "not implemented for data_source"
                self._unknown_sources.add(source)
        from engine.tasks.checker_pool import get_pool

        (verdict,) = await get_pool(self.checker_spec, self.checker_timeout_s).acheck_many([(text, ground_truth)])
        ok = float(bool(verdict.correct))
        return ok, ok


def _score_and_acc(res: Any) -> tuple[float, float]:
    """verl's compute_score result (a number, or a dict with ``score`` and maybe ``acc``) -> (reward, acc)."""
    if isinstance(res, dict):
        score = float(res.get("score", 0.0))
        acc = res.get("acc", score)
        return score, float(acc)
    score = float(res)
    return score, score
