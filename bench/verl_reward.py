"""verl reward stage with ROPD at a full-size step: P prompts x n rollouts streamed through verl's own
reward loop the way verl's agent loop calls it (one ``RewardLoopWorker.compute_score`` call per finished
trajectory, on a worker picked at random) -> our manager -> the group gatherer -> one rubricator + verifier
pipeline per prompt, against the loopback judge server at a fixed latency.

    python bench/verl_reward.py [--prompts 256] [--n 16] [--workers 4 8] [--latency 0 0.5]

Prints per (workers, latency): the reward-stage wall time (all trajectories submitted at once, as when
generation finishes together, until the last reward is back), the two-round-trip bound (the same stage at
zero latency plus one rubricator and one verifier round trip: every group is judged concurrently), their
ratio (target <= 1.3 at 0.5 s), and the peak calls waiting per reward worker (Ray runs at most 1000 calls
of one actor at once; the launcher's preflight keeps the expected load under 700). CPU only; no asserts.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--judge-concurrency", type=int, default=2048, help="judge.concurrency (requests in flight)")
    args = ap.parse_args()

    import numpy as np
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
    n_workers = max(args.workers)
    ray.init(num_cpus=n_workers + 2, namespace="ropd", include_dashboard=False, log_to_driver=False)
    t_start = time.perf_counter()
    rows = []
    try:
        with LoopbackJudgeServer() as srv:
            cfg = loopback_config(srv, "scorer.k=4", f"teacher.index={index}", "templates.watch=false",
                                  f"judge.concurrency={args.judge_concurrency}", "judge.rubricator.timeout_s=120",
                                  "judge.verifier.timeout_s=120")
            gatherer = start_gatherer(cfg.to_dict(), str(d / "groups.jsonl"), name="bench", namespace="ropd",
                                      group_timeout_s=600, straggler_warn_s=0)
            with initialize_config_dir(config_dir=str(T.CONFIG_DIR), version_base=None):
                vcfg = compose(config_name="ropd_grpo", overrides=[
                    f"actor_rollout_ref.model.path={d / 'tok'}", f"reward.num_workers={n_workers}",
                    f"actor_rollout_ref.rollout.n={args.n}", "++ropd.gatherer_name=bench", "++ropd.group_timeout_s=600"])
            manager = RewardLoopManager(vcfg)
            ray.get([w.__ray_ready__.remote() for w in manager.reward_loop_workers])
            print(f"setup {time.perf_counter() - t_start:.1f} s ({n_workers} reward workers up)", flush=True)
            # one 1-trajectory DataProto per rollout, unpadded, as AgentLoopWorker._compute_score builds them
            singles = [T.make_batch(tok, [(u, k, T.ROLLOUTS[u][k])], extra_pad=0)[0]
                       for k in range(args.n) for u in T.PROMPTS]
            step = 0
            for workers in args.workers:
                handles = manager.reward_loop_workers[:workers]
                base = None
                for latency in sorted(args.latency):
                    step += 1
                    srv.latency_s = latency
                    srv.requests.clear()
                    ray.get(gatherer.take_peaks.remote())
                    for x in singles:  # fresh groups each run (verl's uids are new every step)
                        x.non_tensor_batch["uid"] = np.array([f"{str(x.non_tensor_batch['uid'][0]).split('-s')[0]}-s{step}"],
                                                             dtype=object)
                        x.non_tensor_batch["global_steps"] = np.array([step], dtype=object)
                    refs = [ray.put(x) for x in singles]
                    calls = []
                    rng = random.Random(step)
                    t0 = time.perf_counter()
                    for ref in refs:
                        calls.append(rng.choice(handles).compute_score.remote(ref))
                    outs = ray.get(calls)
                    dt = time.perf_counter() - t0
                    peaks = ray.get(gatherer.take_peaks.remote())
                    failed = sum(o["reward_extra_info"]["group_failed"] for o in outs)
                    if latency == 0:
                        base = dt
                    bound = (base if base is not None else 0.0) + 2 * latency
                    rows.append((workers, latency, dt, bound, max(peaks.values(), default=0), failed,
                                 len(srv.requests_for("rubricator")), len(srv.requests_for("verifier"))))
                    r = rows[-1]
                    print(f"{workers} workers, judge latency {latency:g} s: reward stage {dt:.2f} s, two-round-trip "
                          f"bound {bound:.2f} s, ratio {dt / bound if bound else float('nan'):.2f}, peak waiting calls "
                          f"per worker {r[4]} (Ray limit 1000), failed rollouts {failed:.0f}, "
                          f"{r[6]} rubricator + {r[7]} verifier requests", flush=True)
            for w in manager.reward_loop_workers:
                ray.kill(w)
            ray.kill(gatherer)
    finally:
        ray.shutdown()
    print(f"total {time.perf_counter() - t_start:.1f} s; {args.prompts} prompts x {args.n} rollouts = "
          f"{args.prompts * args.n} trajectories per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
