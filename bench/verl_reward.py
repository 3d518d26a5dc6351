"""verl reward stage with ROPD: one step of P prompts x n rollouts through verl's own RewardLoopManager
(Ray reward workers -> our manager -> the group gatherer -> one rubricator + verifier pipeline per
prompt) against the loopback judge server at a fixed latency. Prints seconds per reward stage.

    python bench/verl_reward.py [--prompts 32] [--n 8] [--latency 0 0.5] [--workers 4]

With all groups judged concurrently the stage costs about one rubricator plus one verifier round trip,
whatever the number of prompts (up to the judge's concurrency limit). CPU only; no timing asserts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    import ray
    from hydra import compose, initialize_config_dir
    from loopback_server import LoopbackJudgeServer, loopback_config
    from verl.experimental.reward_loop import RewardLoopManager

    import test_verl_reward as T
    from engine.teacher.index import IndexWriter, make_row
    from engine.verl_backend.gatherer import start_gatherer

    d = Path(tempfile.mkdtemp(prefix="ropd_bench_verl_"))
    T.PROMPTS = {f"u{i}": (f"What is {i} + 4?", str(i + 4), [f"{i} + 4 = {i + 4} . The answer is {i + 4} ."] * 4)
                 for i in range(args.prompts)}
    T.ROLLOUTS = {u: [f"{i} + 4 = {i + 4 + k % 3} . The answer is {i + 4 + k % 3} ." for k in range(args.n)]
                  for i, u in enumerate(T.PROMPTS)}
    tok = T.make_tokenizer(d / "tok")
    index = d / "teacher_index.jsonl"
    with IndexWriter(index) as w:
        for q, _, answers in T.PROMPTS.values():
            w.write(make_row(q, [f"{a} ({j})" for j, a in enumerate(answers)], {"model": "bench"}))
    ray.init(num_cpus=max(4, args.workers), namespace="ropd", include_dashboard=False, log_to_driver=False)
    try:
        for latency in args.latency:
            name = f"bench-{latency}"
            with LoopbackJudgeServer(latency_s=latency) as srv:
                cfg = loopback_config(srv, "scorer.k=4", f"teacher.index={index}")
                gatherer = start_gatherer(cfg.to_dict(), str(d / f"{name}.jsonl"), name=name, namespace="ropd",
                                          group_timeout_s=300)
                with initialize_config_dir(config_dir=str(T.CONFIG_DIR), version_base=None):
                    vcfg = compose(config_name="ropd_grpo", overrides=[
                        f"actor_rollout_ref.model.path={d / 'tok'}", f"reward.num_workers={args.workers}",
                        f"actor_rollout_ref.rollout.n={args.n}", f"ropd.gatherer_name={name}",
                        "ropd.group_timeout_s=300"])
                manager = RewardLoopManager(vcfg)
                samples = [(u, k, T.ROLLOUTS[u][k]) for k in range(args.n) for u in T.PROMPTS]
                data, _ = T.make_batch(tok, samples)
                ray.get([w.__ray_ready__.remote() for w in manager.reward_loop_workers])
                t0 = time.perf_counter()
                manager.compute_rm_score(data)
                dt = time.perf_counter() - t0
                print(f"judge latency {latency:g} s: {args.prompts} prompts x {args.n} rollouts -> reward stage "
                      f"{dt:.2f} s ({len(srv.requests_for('rubricator'))} rubricator, "
                      f"{len(srv.requests_for('verifier'))} verifier requests)", flush=True)
                for w in manager.reward_loop_workers:
                    ray.kill(w)
                ray.kill(gatherer)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
