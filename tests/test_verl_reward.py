"""ROPD inside verl's own reward loop (Ray, CPU).

verl's ``RewardLoopManager`` starts its ``RewardLoopWorker`` actors, which load our manager through the
``importlib`` wiring of configs/verl/ropd_grpo.yaml; each worker gets single rollouts, and the run's
``GroupGatherer`` actor turns them into ONE rubricator request per prompt holding all of its rollouts,
sent over real HTTP to the loopback judge server. One Ray session for the whole module.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("verl")
ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from loopback_server import LoopbackJudgeServer, loopback_config  # noqa: E402

from engine.teacher.index import IndexWriter, make_row  # noqa: E402
from engine.verl_backend.gatherer import GroupCollector, start_gatherer  # noqa: E402
from engine.verl_backend.side_channel import JsonlTail, group_from_dict  # noqa: E402
from engine.types import GroupResult  # noqa: E402

pytestmark = pytest.mark.slow
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "verl"
NAMESPACE = "ropd"

PROMPTS = {
    "u-add": ("What is 3 + 4?", "7", ["3 + 4 = 7 . The answer is 7 .", "We add : 3 + 4 = 7 . The answer is 7 ."]),
    "u-sub": ("What is 10 - 6?", "4", ["10 - 6 = 4 . The answer is 4 .", "Take 6 from 10 : 10 - 6 = 4 . The answer is 4 ."]),
    "u-mul": ("What is 2 * 5?", "10", ["2 * 5 = 10 . The answer is 10 .", "The answer is 10 ."]),
}
ROLLOUTS = {
    "u-add": ["3 + 4 = 7 . The answer is 7 .", "The answer is 8 .", "3 + 4 = 7", "I do not know the answer ."],
    "u-sub": ["10 - 6 = 4 . The answer is 4 .", "10 - 6 = 5 . The answer is 5 .", "The answer is 4 .", "no"],
    "u-mul": ["2 * 5 = 10 . The answer is 10 .", "The answer is 7 .", "2 * 5 = 10", "ten"],
}


def make_tokenizer(path: Path):
    """A word-level tokenizer saved as a local HF tokenizer dir (the hubs are unreachable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w for texts in ROLLOUTS.values() for t in texts for w in t.split()}
    words |= {w for q, _, _ in PROMPTS.values() for w in q.split()} | {"####"}
    vocab = {"[PAD]": 0, "[UNK]": 1, "</s>": 2}
    for w in sorted(words):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="@@no-subwords@@", cleanup=False)  # plain space-joined words
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    fast.save_pretrained(str(path))
    return fast


def verl_config(tok_dir: Path, gatherer: str, timeout_s: float, *extra: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="ropd_grpo", overrides=[
            f"actor_rollout_ref.model.path={tok_dir}", "reward.num_workers=2", "actor_rollout_ref.rollout.n=4",
            f"ropd.gatherer_name={gatherer}", f"ropd.group_timeout_s={timeout_s}", *extra])


def make_batch(tok, samples: list[tuple[str, int, str]], *, split: str = "train", step: int | None = 1,
               extra_pad: int = 2, data_source: str = "demo_math"):
    """A DataProto like verl's: left-padded prompts, right-padded responses (with EOS), masks, non-tensors."""
    from verl import DataProto

    prompt_ids = [tok.encode(PROMPTS[uid][0]) for uid, _, _ in samples]
    resp_ids = [tok.encode(text) + [tok.eos_token_id] for _, _, text in samples]
    P, R = max(map(len, prompt_ids)), max(map(len, resp_ids)) + extra_pad
    prompts = torch.zeros(len(samples), P, dtype=torch.long)
    responses = torch.zeros(len(samples), R, dtype=torch.long)
    attn = torch.zeros(len(samples), P + R, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, resp_ids)):
        prompts[i, P - len(p):] = torch.tensor(p)
        responses[i, :len(r)] = torch.tensor(r)
        attn[i, P - len(p):P + len(r)] = 1
    input_ids = torch.cat([prompts, responses], dim=1)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)

    def obj(values):
        a = np.empty(len(values), dtype=object)
        a[:] = values
        return a

    non = {
        "uid": np.array([uid for uid, _, _ in samples], dtype=object),
        "session_id": np.array([i for _, i, _ in samples], dtype=object),
        "data_source": np.array([data_source] * len(samples), dtype=object),
        "reward_model": obj([{"ground_truth": PROMPTS[uid][1], "style": "rule"} for uid, _, _ in samples]),
        "extra_info": obj([{"index": 0, "split": split, "ropd_split": split, "ropd_prompt": json.dumps(PROMPTS[uid][0])}
                           for uid, _, _ in samples]),
        "raw_prompt": obj([[{"role": "user", "content": PROMPTS[uid][0]}] for uid, _, _ in samples]),
    }
    if step is not None:
        non["global_steps"] = np.array([step] * len(samples), dtype=object)
    data = DataProto.from_dict(tensors={"prompts": prompts, "responses": responses, "attention_mask": attn,
                                        "input_ids": input_ids, "position_ids": position_ids}, non_tensors=non)
    valid = [len(r) for r in resp_ids]
    return data, valid


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verl_reward")
    tok = make_tokenizer(tmp / "tokenizer")
    index = tmp / "teacher_index.jsonl"
    with IndexWriter(index) as w:
        for q, _, answers in PROMPTS.values():
            w.write(make_row(q, answers, {"model": "test-teacher"}))
    ray.init(num_cpus=4, namespace=NAMESPACE, include_dashboard=False, object_store_memory=150 * 1024 * 1024,
             log_to_driver=False)
    with LoopbackJudgeServer() as srv:
        yield {"tmp": tmp, "tok": tok, "index": index, "srv": srv}
    ray.shutdown()


def test_reward_loop_scores_each_prompt_in_one_rubricator_call(env):
    from verl.experimental.reward_loop import RewardLoopManager

    srv, tmp = env["srv"], env["tmp"]
    cfg = loopback_config(srv, "scorer.k=2", f"teacher.index={env['index']}")
    side = tmp / "groups.jsonl"
    # keep the handle: a non-detached actor dies with its last handle
    gatherer = start_gatherer(cfg.to_dict(), str(side), name="g-main", namespace=NAMESPACE, group_timeout_s=60)
    manager = RewardLoopManager(verl_config(tmp / "tokenizer", "g-main", 60))
    try:
        _reward_loop_checks(env, manager, gatherer, side)
    finally:
        kill_reward_workers(manager)


def kill_reward_workers(manager) -> None:
    """verl names its workers reward_loop_worker_<i>: free the names for the next manager."""
    import time

    for w in manager.reward_loop_workers:
        ray.kill(w)
    for i in range(len(manager.reward_loop_workers)):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ray.get_actor(f"reward_loop_worker_{i}")
            except ValueError:
                break
            time.sleep(0.1)


def _reward_loop_checks(env, manager, gatherer, side):
    srv = env["srv"]
    # interleaved, so each of the two workers (4 samples each) holds rollouts of both prompts
    samples = [(uid, i, ROLLOUTS[uid][i]) for i in range(4) for uid in ("u-add", "u-sub")]
    data, valid = make_batch(env["tok"], samples)
    srv.requests.clear()
    out = manager.compute_rm_score(data)

    # exactly one rubricator request per prompt, holding all 4 of its rollouts
    rub = srv.requests_for("rubricator")
    assert len(rub) == 2
    assert ray.get(gatherer.stats.remote())["groups_ok"] == 2
    for req in rub:
        text = "\n".join(str(m.get("content", "")) for m in req.messages)
        blocks = re.findall(r'<student_answer id="\d+">\n(.*?)\n</student_answer>', text, re.DOTALL)
        uid = "u-add" if "3 + 4" in text.split("<student_answer")[0] else "u-sub"
        assert sorted(blocks) == sorted(ROLLOUTS[uid])

    # rewards sit on the last valid response token, nowhere else
    rm = out.batch["rm_scores"]
    assert rm.shape == data.batch["responses"].shape
    rewards = rm.sum(-1)
    for i, n in enumerate(valid):
        others = torch.cat([rm[i, :n - 1], rm[i, n:]])
        assert torch.all(others == 0)
        assert rm[i, n - 1] == rewards[i]

    keys = out.meta_info["reward_extra_keys"]
    assert keys == ["acc", "rubric_reward", "group_failed", "teacher_mean"]
    info = {k: out.non_tensor_batch[k].astype(float) for k in keys}
    assert np.all(info["group_failed"] == 0)
    assert np.allclose(info["rubric_reward"], rewards.numpy())
    expect_acc = {("u-add", 0): 1, ("u-add", 1): 0, ("u-add", 2): 1, ("u-add", 3): 0,
                  ("u-sub", 0): 1, ("u-sub", 1): 0, ("u-sub", 2): 1, ("u-sub", 3): 0}
    assert [info["acc"][i] for i in range(8)] == [expect_acc[(u, i)] for u, i, _ in samples]
    # the judged rubric prefers the right answers; teacher answers anchor near the top
    for uid in ("u-add", "u-sub"):
        r = {i: float(rewards[k]) for k, (u, i, _) in enumerate(samples) if u == uid}
        assert r[0] > r[1] and r[0] > r[3]
    assert np.all(info["teacher_mean"] > 0.5)

    # the streaming path (what verl's agent loop does per finished trajectory): one unpadded rollout
    # per call, spread over both workers
    srv.requests.clear()
    calls = []
    for i, text in enumerate(ROLLOUTS["u-mul"]):
        single, _ = make_batch(env["tok"], [("u-mul", i, text)], extra_pad=0)
        calls.append(manager.reward_loop_workers[i % 2].compute_score.remote(single))
    streamed = ray.get(calls, timeout=120)
    assert len(srv.requests_for("rubricator")) == 1
    assert [o["reward_extra_info"]["acc"] for o in streamed] == [1.0, 0.0, 1.0, 0.0]
    assert streamed[0]["reward_score"] > streamed[1]["reward_score"]

    # all groups reached the side channel, with their step, rubric and verdicts
    recs = [r for r in JsonlTail(side).read() if r["group"]["uid"] != "u-mul"]
    assert len(recs) == 2 and {r["step"] for r in recs} == {1}
    groups = [group_from_dict(r["group"]) for r in recs]
    assert {g.uid for g in groups} == {"u-add", "u-sub"}
    for g in groups:
        assert g.status in ("ok", "recovered") and g.rubric is not None
        assert [a.text for a in g.student_answers] == ROLLOUTS[g.uid]
        assert len(g.teacher_answers) == 2


def test_missing_rollout_fails_the_group_instead_of_hanging(env):
    """Gatherer looked up by name from another process (here the test driver), 3 of 4 rollouts."""
    from engine.verl_backend.reward_manager import ROPDRewardManager

    srv, tmp = env["srv"], env["tmp"]
    cfg = loopback_config(srv, "scorer.k=2", f"teacher.index={env['index']}")
    side = tmp / "groups-timeout.jsonl"
    gatherer = start_gatherer(cfg.to_dict(), str(side), name="g-timeout", namespace=NAMESPACE, group_timeout_s=2)
    vcfg = verl_config(tmp / "tokenizer", "g-timeout", 2)
    mgr = ROPDRewardManager(vcfg, env["tok"], None)
    srv.requests.clear()

    data, _ = make_batch(env["tok"], [("u-mul", i, ROLLOUTS["u-mul"][i]) for i in range(3)])
    vdata, _ = make_batch(env["tok"], [("u-add", 0, ROLLOUTS["u-add"][0])], split="val", step=None)

    async def go():
        train = [mgr.run_single(data[i:i + 1]) for i in range(3)]
        return await asyncio.gather(mgr.run_single(vdata[0:1]), *train)

    val, *outs = mgr.loop.run_until_complete(go())
    for o in outs:
        assert o["reward_score"] == 0.0
        assert o["reward_extra_info"]["group_failed"] == 1.0
    assert sorted(o["reward_extra_info"]["acc"] for o in outs) == [0.0, 1.0, 1.0]
    # validation: rule-based correctness, the same keys, no judge involved
    assert val == {"reward_score": 1.0, "reward_extra_info": {"acc": 1.0, "rubric_reward": 0.0,
                                                               "group_failed": 0.0, "teacher_mean": 0.0}}
    assert srv.requests_for("rubricator") == []
    assert ray.get(gatherer.stats.remote())["timeouts"] == 1

    (rec,) = list(JsonlTail(side).read())
    g = group_from_dict(rec["group"])
    assert g.status == "failed" and g.failure_stage == "scorer"
    assert "only 3 of 4 rollouts" in g.failure_cause and g.rollouts_raw == ROLLOUTS["u-mul"][:3]


def test_validation_is_rule_based_where_it_arrives_with_verls_scorer_for_sources_it_knows(tmp_path):
    """No gatherer (none is configured: contacting one would raise), no judge, no teacher index."""
    from verl.utils.reward_score import default_compute_score

    from engine.verl_backend.reward_manager import ROPDRewardManager

    tok = make_tokenizer(tmp_path / "tok")
    vcfg = verl_config(tmp_path / "tok", "no-such-gatherer", 5)
    vcfg.ropd.gatherer_name = None
    mgr = ROPDRewardManager(vcfg, tok, default_compute_score)

    def score(text: str, source: str, split: str = "val"):
        data, _ = make_batch(tok, [("u-add", 0, text)], split=split, step=None, data_source=source)
        return mgr.loop.run_until_complete(mgr.run_single(data[0:1]))

    # verl's gsm8k scorer wants "#### <answer>": a plain "The answer is 7 ." scores 0 there, 1 by our checker
    gsm_ok = score("3 + 4 = 7 . #### 7", "openai/gsm8k")
    gsm_plain = score("The answer is 7 .", "openai/gsm8k")
    ours = score("The answer is 7 .", "demo_math")
    assert (gsm_ok["reward_score"], gsm_ok["reward_extra_info"]["acc"]) == (1.0, 1.0)
    assert (gsm_plain["reward_score"], gsm_plain["reward_extra_info"]["acc"]) == (0.0, 0.0)
    assert (ours["reward_score"], ours["reward_extra_info"]["acc"]) == (1.0, 1.0)
    assert set(ours["reward_extra_info"]) == {"acc", "rubric_reward", "group_failed", "teacher_mean"}
    # a row marked otherwise is a training rollout: it goes to the gatherer, which is not configured here
    with pytest.raises(RuntimeError, match="gatherer_name is not set"):
        score("The answer is 7 .", "demo_math", split="test")


def test_gatherer_start_fails_fast_with_a_clear_error(env, tmp_path):
    from engine.errors import TeacherIndexError

    cfg = loopback_config(env["srv"], "scorer.k=2", f"teacher.index={tmp_path / 'missing.jsonl'}")
    with pytest.raises(TeacherIndexError) as ei:
        start_gatherer(cfg.to_dict(), str(tmp_path / "g.jsonl"), name="g-bad", namespace=NAMESPACE,
                       group_timeout_s=5)
    assert "missing.jsonl" in str(ei.value) and "Traceback" not in str(ei.value)


# -- the gathering logic without Ray ------------------------------------------------------------------

def _ok_group(gi) -> GroupResult:
    from engine.types import AnswerResult

    return GroupResult(group_index=0, prompt=gi.prompt, question=str(gi.prompt), rollouts_raw=list(gi.rollouts),
                       status="ok", ground_truth=gi.ground_truth, uid=gi.uid,
                       answers=[AnswerResult("student", i, t, reward=i / 10) for i, t in enumerate(gi.rollouts)])


async def test_collector_late_rollout_and_scorer_crash_become_failed_groups():
    recorded = []

    async def score(gi):
        if gi.uid == "boom":
            raise RuntimeError("judge exploded")
        return _ok_group(gi)

    c = GroupCollector(score, group_timeout_s=0.3, on_result=lambda g, step: recorded.append((g.uid, g.status, step)))
    sample = lambda uid, i: {"uid": uid, "index": i, "text": f"t{i}", "prompt": "q", "n": 2, "step": 5}
    ok = await asyncio.gather(c.submit(sample("a", 1)), c.submit(sample("a", 0)))
    assert [o["reward"] for o in ok] == [0.1, 0.0] and not any(o["failed"] for o in ok)
    crashed = await asyncio.gather(c.submit(sample("boom", 0)), c.submit(sample("boom", 1)))
    assert all(o["failed"] and o["reward"] == 0.0 for o in crashed)
    timed_out = await c.submit(sample("lonely", 0))
    assert timed_out["failed"]
    late = await c.submit(sample("lonely", 1))  # its group is closed: failed at once, not a new group
    assert late["failed"] and c.stats()["pending"] == 0
    assert recorded == [("a", "ok", 5), ("boom", "failed", 5), ("lonely", "failed", 5)]


async def test_a_lost_rollout_gives_a_visible_warning_long_before_the_group_times_out():
    events, recorded = [], []

    async def score(gi):
        return _ok_group(gi)

    c = GroupCollector(score, group_timeout_s=1.5, straggler_warn_s=0.1,
                       on_result=lambda g, step: recorded.append((g.uid, g.status)),
                       on_event=lambda kind, msg, step: events.append((kind, msg, step)))
    sample = lambda uid, i, w: {"uid": uid, "index": i, "text": f"t{i}", "prompt": "q", "n": 3, "step": 7,  # noqa: E731
                                "worker": w}
    ok = asyncio.gather(*(c.submit(sample("fine", i, "w1")) for i in range(3)))
    stuck = asyncio.gather(*(c.submit(sample("lost-one", i, f"w{i % 2}")) for i in range(2)))
    assert len(await ok) == 3 and events == []  # a complete group never warns
    await asyncio.sleep(0.5)
    assert len(events) == 1 and recorded == [("fine", "ok")]  # warned once, while the group still waits
    kind, msg, step = events[0]
    assert (kind, step) == ("warning", 7)
    assert "uid lost-one: 2 of 3" in msg and "verl.group_timeout_s (1.5 s)" in msg
    outs = await stuck
    assert all(o["failed"] for o in outs) and recorded[-1] == ("lost-one", "failed") and len(events) == 1
    assert c.stats()["peak_in_flight_per_worker"] == 4 and c.stats()["workers"] == 2  # w1: 3 + 1 waiting


def test_multi_node_probe_names_what_every_node_must_share(env, tmp_path):
    """The probe runs as a pinned Ray task on every alive node (here: the one node of the test cluster).
    A token this process did not write is what a node with its own file system sees."""
    from engine.errors import ConfigError
    from engine.verl_backend.nodes import (TOKEN_FILE, alive_nodes, check_probe_results, probe_nodes,
                                           require_shared_folder)

    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / TOKEN_FILE).write_text("token-from-launch-node\n")
    model = tmp_path / "model"
    model.mkdir()
    (seen,) = probe_nodes(folder, "token-from-launch-node", model_path=str(model))
    assert seen["sees_folder"] and seen["can_write"] and seen["has_model"] and seen["imports_ropd"]
    check_probe_results([seen], folder, str(model))

    (other,) = probe_nodes(folder, "a-token-this-node-cannot-see", model_path=str(tmp_path / "no-model"))
    with pytest.raises(ConfigError) as ei:
        check_probe_results([other], folder, str(tmp_path / "no-model"))
    msg = str(ei.value)
    assert f"does not see {folder}" in msg and "no-model (verl.model_path)" in msg
    assert "verl.shared_dir" in ei.value.hint and "checkpoint shards" in ei.value.hint
    # one node: nothing to share, nothing probed
    assert len(alive_nodes()) == 1 and require_shared_folder(tmp_path / "single") == 1


# -- one step's reward path through verl's own pieces ---------------------------------------------------

def _demo_tokenizer(path: Path, problems):
    """Word-level tokenizer knowing the demo prompts' words and the answers' (numbers 0-200)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w for p in problems for m in p["prompt"] for w in m["content"].split()}
    words |= {"The", "answer", "is", ".", "I", "do", "not", "know"} | {str(i) for i in range(201)}
    vocab = {"[PAD]": 0, "[UNK]": 1, "</s>": 2}
    for w in sorted(words):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="@@no-subwords@@", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    # RLHFDataset applies the chat template to drop overlong prompts (data.filter_overlong_prompts)
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(str(path))
    return fast


def _per_prompt_kwargs(batch_dict: dict, *, step: int, validate: bool, n: int) -> list[dict]:
    """The keyword arguments verl 0.9.1's v1 agent loop hands ``_compute_score`` for every trajectory:
    the trainer adds ``uid`` and ``global_steps`` (``_fetch_one_gen_batch`` / ``_validate``),
    ``AgentLoopWorkerTQ.generate_sequences`` takes row i of every TensorDict entry, ``_run_prompt`` pops
    ``__rollout_n__`` and adds ``session_id``, ``_run_agent_loop`` takes ``agent_name`` out."""
    import uuid

    from tensordict import NonTensorData, NonTensorStack
    from verl.utils import tensordict_utils as tu

    batch_dict = dict(batch_dict)
    batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch_dict["raw_prompt"]))], dtype=object)
    batch = tu.get_tensordict(batch_dict)
    tu.assign_non_tensor_data(batch, "global_steps", step)
    if validate:
        tu.assign_non_tensor_data(batch, "validate", True)
    batch.pop("validate", None)  # AgentLoopWorkerTQ.generate_sequences
    if "agent_name" not in batch:
        batch["agent_name"] = NonTensorData("single_turn_agent")
    out = []
    for i in range(len(batch)):
        prompt = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                prompt[k] = v[i]
            elif isinstance(v, NonTensorStack):
                prompt[k] = v[i].data
            elif isinstance(v, NonTensorData):
                prompt[k] = v.data
        prompt.pop("__rollout_n__", None)
        prompt.pop("__do_sample__", None)
        prompt.pop("agent_name")
        out += [dict(prompt, session_id=s) for s in range(n)]
    return out


def test_a_step_through_verls_own_pieces(env, tmp_path):
    """The run's parquet read by verl's RLHFDataset + collate_fn, per-trajectory kwargs as verl's agent loop
    builds them, verl's AgentLoopWorker._compute_score, real RewardLoopWorker actors loading our manager
    from the launcher's composed ropd_grpo config, the gatherer with the offline judge, validation rows
    (n=1) in the same stream; then the step into the store."""
    import random

    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
    from verl.experimental.reward_loop import RewardLoopManager
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from engine.config import load_config
    from engine.store import RunStore
    from engine.tasks.demo_math import make_problems
    from engine.verl_backend.data import prepare_data
    from engine.verl_backend.launcher import AttemptPaths, resolve_command
    from engine.verl_backend.metrics_ingest import StepIngestor
    from engine.verl_backend.smoke import evaluate_steps

    n, prompts = 4, 4
    model = tmp_path / "student"  # the tokenizer is all verl's reward workers load of the model
    tok = _demo_tokenizer(model, make_problems(prompts, 0) + make_problems(8, 1000))
    cfg = load_config(None, ["run.backend=verl", "judge.mode=offline", f"task.num_prompts={prompts}", "scorer.k=2",
                             f"teacher.index={tmp_path / 'ti.jsonl'}", f"verl.model_path={model}",
                             "verl.group_timeout_s=60", f"verl.overrides=[reward.num_workers=2, "
                             f"actor_rollout_ref.rollout.n={n}, actor_rollout_ref.rollout.val_kwargs.n=1]"])
    paths = AttemptPaths.new(tmp_path / "run")
    train_file, val_file = prepare_data(cfg, paths.data)
    name = "g-step"
    _, vcfg, _ = resolve_command(cfg, run_name="step", paths=paths, train_files=train_file, val_files=val_file,
                                 gatherer=name, resume_from=None)
    gatherer = start_gatherer(cfg.to_dict(), str(paths.groups), name=name, namespace=NAMESPACE, group_timeout_s=60)
    manager = RewardLoopManager(vcfg)
    try:
        data_cfg = vcfg.data

        def batches(path, size):
            ds = RLHFDataset(data_files=[path], tokenizer=tok, config=data_cfg)
            return next(iter(DataLoader(ds, batch_size=size, collate_fn=collate_fn, shuffle=False)))

        train_kw = _per_prompt_kwargs(batches(train_file, prompts), step=1, validate=False, n=n)
        val_kw = _per_prompt_kwargs(batches(val_file, 8), step=1, validate=True, n=1)
        assert len(train_kw) == prompts * n and len(val_kw) == 8

        worker = object.__new__(AgentLoopWorker)  # only what _compute_score touches (text-only, streaming)
        worker.reward_loop_worker_handles = manager.reward_loop_worker_handles
        worker.processor, worker.mm_processor_kwargs = None, None
        random.seed(0)

        def answer(kw) -> str:
            gt = kw["reward_model"]["ground_truth"]
            return f"The answer is {gt} ." if kw["session_id"] % 2 == 0 else f"The answer is {int(gt) + 1} ."

        def trajectory(kw) -> AgentLoopOutput:
            text = " ".join(m["content"] for m in kw["raw_prompt"])
            return AgentLoopOutput(prompt_ids=tok.encode(text), response_ids=tok.encode(answer(kw))
                                   + [tok.eos_token_id], response_mask=[1] * (len(answer(kw).split()) + 1),
                                   num_turns=2, metrics=AgentLoopMetrics())

        async def run_all():
            # validation rollouts interleaved with the training ones, as both reach the same reward workers
            order = [(kw, False) for kw in train_kw] + [(kw, True) for kw in val_kw]
            random.shuffle(order)
            outs = [trajectory(kw) for kw, _ in order]
            await asyncio.gather(*(AgentLoopWorker._compute_score(worker, [o], kwargs=kw)
                                   for o, (kw, _) in zip(outs, order)))
            return [(kw, val, o) for o, (kw, val) in zip(outs, order)]

        results = asyncio.run(run_all())
        stats = ray.get(gatherer.stats.remote())
        assert stats["groups_ok"] == prompts and stats["groups_failed"] == 0 and stats["timeouts"] == 0
        assert stats["peak_in_flight_per_worker"] <= prompts * n

        train = [(kw, o) for kw, val, o in results if not val]
        val = [(kw, o) for kw, val, o in results if val]
        for kw, o in train:
            info = o.extra_fields["reward_extra_info"]
            right = kw["session_id"] % 2 == 0
            assert info["acc"] == float(right) and info["group_failed"] == 0.0
            assert o.reward_score == info["rubric_reward"] and info["teacher_mean"] > 0.5
        by_uid = {}
        for kw, o in train:
            by_uid.setdefault(kw["uid"], []).append((kw["session_id"] % 2 == 0, o.reward_score))
        for scores in by_uid.values():  # the judged rubric prefers the right answers within each group
            assert min(s for ok, s in scores if ok) > max(s for ok, s in scores if not ok)
        for kw, o in val:  # rule-based, no rubric: reward == correctness
            assert o.reward_score == float(kw["session_id"] % 2 == 0) == o.extra_fields["reward_extra_info"]["acc"]
            assert o.extra_fields["reward_extra_info"]["rubric_reward"] == 0.0

        # verl's own validation metrics from these rewards: val-core/demo_math/acc/mean@1
        infos = {"reward": [o.reward_score for _, o in val]}
        for key in ("acc", "rubric_reward", "group_failed", "teacher_mean"):
            infos[key] = [o.extra_fields["reward_extra_info"][key] for _, o in val]
        val_metrics = PPOTrainer._val_metrics_update(None, [kw["data_source"] for kw, _ in val],
                                                    [kw["uid"] for kw, _ in val], infos, [])
        assert val_metrics["val-core/demo_math/acc/mean@1"] == 1.0  # session 0 answers right

        # the step into the store: verl's score mean next to the gatherer's groups (validation never there)
        recs = list(JsonlTail(paths.groups).read())
        assert len(recs) == prompts and {r["step"] for r in recs} == {1}
        assert {r["group"]["uid"] for r in recs} == {kw["uid"] for kw, _ in train}
        score_mean = sum(o.reward_score for _, o in train) / len(train)
        paths.metrics.write_text(json.dumps({"step": 1, "data": {"critic/score/mean": score_mean,
                                                                 "critic/advantages/mean": 0.0, **val_metrics}}) + "\n")
        store = RunStore(tmp_path / "store" / "ropd.db")
        run = store.create_run("step", "verl", cfg.to_dict())
        StepIngestor(store, run.id, paths.metrics, paths.groups).flush()
        checks = evaluate_steps(store, run.id, steps=[1], groups_per_step=prompts)
        assert [c.status for c in checks] == ["PASS"] * len(checks), checks
        assert store.metric_series(run.id, "accuracy") == [(1, 1.0)]
        store.close()
        assert OmegaConf.select(vcfg, "reward.reward_manager.name") == "ROPDRewardManager"
    finally:
        kill_reward_workers(manager)
        ray.kill(gatherer)


def test_a_large_streamed_batch_completes_with_the_reward_workers_preflight_allows(env, tmp_path):
    """260 prompts x 4 rollouts streamed one trajectory per call, session by session (all first rollouts,
    then all second ones, ...): on ONE worker, 1000 running calls of incomplete groups would leave the
    rest queued behind Ray's actor concurrency limit. The preflight asks for 2 workers here; with them
    every group completes."""
    from verl.experimental.reward_loop import RewardLoopManager

    from engine.config import load_config
    from engine.verl_backend.composed import RAY_ACTOR_CONCURRENCY, SAFE_CALLS_PER_WORKER, min_reward_workers

    prompts, n = 260, 4
    workers = min_reward_workers(prompts, n)
    assert workers == 2 and prompts * n > RAY_ACTOR_CONCURRENCY
    cfg = load_config(None, ["judge.mode=offline", "scorer.k=2", f"teacher.index={env['index']}",
                             "templates.watch=false"])
    gatherer = start_gatherer(cfg.to_dict(), str(tmp_path / "g.jsonl"), name="g-large", namespace=NAMESPACE,
                              group_timeout_s=120)
    manager = RewardLoopManager(verl_config(env["tmp"] / "tokenizer", "g-large", 120, f"reward.num_workers={workers}"))
    try:
        single, _ = make_batch(env["tok"], [("u-add", 0, ROLLOUTS["u-add"][0])], extra_pad=0)
        calls, rng = [], np.random.default_rng(0)
        for session in range(n):
            for p in range(prompts):
                x = single[0:1]
                x.non_tensor_batch = {**x.non_tensor_batch, "uid": np.array([f"big-{p}"], dtype=object),
                                      "session_id": np.array([session], dtype=object)}
                calls.append(manager.reward_loop_workers[int(rng.integers(workers))].compute_score.remote(x))
        outs = ray.get(calls, timeout=600)
        stats = ray.get(gatherer.stats.remote())
        assert stats["groups_ok"] == prompts and stats["timeouts"] == 0 and stats["groups_failed"] == 0
        assert all(o["reward_extra_info"]["group_failed"] == 0.0 for o in outs)
        assert 0 < stats["peak_in_flight_per_worker"] <= SAFE_CALLS_PER_WORKER + 100 < RAY_ACTOR_CONCURRENCY
    finally:
        kill_reward_workers(manager)
        ray.kill(gatherer)
