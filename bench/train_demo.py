"""Benchmark of the embedded trainer on the demo config, against the plain model cost.

    python bench/train_demo.py [--steps 3] [--fresh-cache] [--skip-trainer] [--skip-plain] [--json]

1. Trainer: runs ``ropd-tui --headless train --config configs/demo.yaml`` (real SmolLM2-135M, offline
   judge, through the supervisor) into a temporary store and reports the time from launch to the first
   logged step, seconds per step (wall clock between steps, and the trainer's own step time split into
   generate / score / update). ``--fresh-cache`` converts the GGUF into an empty cache first-use style.
2. Plain model cost: the same batch shape (prompts_per_step demo prompts x rollouts x max_new_tokens,
   same sampling settings) with nothing but PyTorch/transformers: ``generate``, then one policy-gradient
   style forward+backward over the generated sequences (completion mask from the first EOS) and an
   AdamW step. The trainer's overhead is the ratio of the two.

Prints plain numbers (no timing assertions). The machine may be shared: the load average is printed
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def bench_trainer(steps: int, overrides: list[str], fresh_cache: bool) -> dict:
    from engine.store import RunStore

    work = Path(tempfile.mkdtemp(prefix="ropd_bench_train_"))
    store_path = work / "runs" / "ropd.db"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if fresh_cache:
        env["ROPD_CACHE"] = str(work / "cache")
    argv = [sys.executable, "-m", "ropd_tui.cli", "--headless", "--store", str(store_path), "train",
            "--config", str(ROOT / "configs" / "demo.yaml"), f"trainer.steps={steps}", "judge.mode=offline",
            f"teacher.index={work / 'teacher.jsonl'}", "trainer.keep_checkpoints=1", *overrides]
    t0 = time.time()
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
    total = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the demo run failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    with RunStore(store_path) as store:
        run = store.list_runs()[0]
        rec = store.get_run(run["id"])
        rows = store.steps(rec.id)
        walls = [r["wall_time"] for r in rows]
        series = {k: dict(store.metric_series(rec.id, k)) for k in
                  ("time/step", "time/generate", "time/score", "time/update", "time/step_cpu",
                   "time/generate_cpu", "time/checkpoint", "memory/peak_rss_gib", "reward/mean", "accuracy",
                   "response_length/mean")}
    launch_to_first = walls[0] - t0
    between = [b - a for a, b in zip(walls, walls[1:])]
    mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
    return {
        "steps": len(rows),
        "total_s": total,
        "launch_to_first_step_s": launch_to_first,
        "wall_s_per_step_after_first": mean(between),
        "trainer_step_s": mean(list(series["time/step"].values())),
        "trainer_generate_s": mean(list(series["time/generate"].values())),
        "trainer_score_s": mean(list(series["time/score"].values())),
        "trainer_update_s": mean(list(series["time/update"].values())),
        "trainer_step_cpu_s": mean(list(series["time/step_cpu"].values())),
        "trainer_generate_cpu_s": mean(list(series["time/generate_cpu"].values())),
        "response_length_mean": mean(list(series["response_length/mean"].values())),
        "checkpoint_s": mean(list(series["time/checkpoint"].values())),
        "peak_rss_gib": max(series["memory/peak_rss_gib"].values(), default=float("nan")),
        "reward_mean_by_step": [round(v, 4) for v in series["reward/mean"].values()],
        "accuracy_by_step": [round(v, 4) for v in series["accuracy"].values()],
        "fresh_cache": fresh_cache,
        "store": str(store_path),
    }


def bench_plain(repeats: int, overrides: list[str]) -> dict:
    import torch

    from engine.config import load_config
    from engine.tasks import demo_math
    from engine.trainers.model_cache import load_model_and_tokenizer, resolve_model_dir

    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides)
    t = cfg.trainer
    torch.set_num_threads(t.threads or os.cpu_count() or 1)
    model_dir = resolve_model_dir(t.model)
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(model_dir)
    load_s = time.perf_counter() - t0
    problems = demo_math.make_problems(t.prompts_per_step, 1)
    texts = [tok.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True)
             for p in problems for _ in range(t.rollouts)]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate)
    results = []
    for r in range(repeats):
        torch.manual_seed(r)
        model.eval()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=t.temperature, top_p=t.top_p,
                                 max_new_tokens=t.max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
        plen = enc["input_ids"].shape[1]
        comp = out[:, plen:]
        is_eos = comp == tok.eos_token_id
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((comp.shape[0],), comp.shape[1]))
        cmask = (torch.arange(comp.shape[1]).unsqueeze(0) <= first.unsqueeze(1)).float()
        attn = torch.cat([enc["attention_mask"], cmask.long()], dim=1)
        adv = torch.randn(comp.shape[0])
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        logits = model(input_ids=out, attention_mask=attn).logits[:, plen - 1:-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        loss = -(logp * adv.unsqueeze(1) * cmask).sum() / cmask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        upd_s, upd_cpu = time.perf_counter() - t0, time.process_time() - c0
        results.append({"generate_s": gen_s, "update_s": upd_s, "step_s": gen_s + upd_s,
                        "generate_cpu_s": gen_cpu, "step_cpu_s": gen_cpu + upd_cpu,
                        "completion_tokens": int(cmask.sum().item())})
    best = min(results, key=lambda x: x["step_s"])
    return {"load_s": load_s, "repeats": results, "best": best,
            "batch": f"{t.prompts_per_step} prompts x {t.rollouts} rollouts x {t.max_new_tokens} new tokens"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="plain-model repetitions (best is used)")
    ap.add_argument("--fresh-cache", action="store_true", help="include the one-time GGUF conversion")
    ap.add_argument("--skip-trainer", action="store_true")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*", help="config overrides for both parts, e.g. trainer.max_new_tokens=96")
    args = ap.parse_args()
    report: dict = {"cores": os.cpu_count(), "loadavg_before": loadavg()}
    if not args.skip_trainer:
        report["trainer"] = bench_trainer(args.steps, args.overrides, args.fresh_cache)
    if not args.skip_plain:
        report["plain"] = bench_plain(args.repeats, args.overrides)
    report["loadavg_after"] = loadavg()
    if "trainer" in report and "plain" in report:
        report["overhead_ratio"] = report["trainer"]["trainer_step_s"] / report["plain"]["best"]["step_s"]
        report["overhead_ratio_cpu"] = (report["trainer"]["trainer_step_cpu_s"]
                                        / report["plain"]["best"]["step_cpu_s"])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"machine: {report['cores']} cores; load average before {report['loadavg_before']}, "
          f"after {report['loadavg_after']}")
    if "trainer" in report:
        tr = report["trainer"]
        print(f"trainer ({tr['steps']} steps, demo config{', fresh model cache' if tr['fresh_cache'] else ''}):")
        print(f"  launch -> first logged step   {tr['launch_to_first_step_s']:.1f} s")
        print(f"  wall s/step after the first   {tr['wall_s_per_step_after_first']:.1f} s")
        print(f"  trainer step time (mean)      {tr['trainer_step_s']:.1f} s = generate {tr['trainer_generate_s']:.1f}"
              f" + score {tr['trainer_score_s']:.2f} + update {tr['trainer_update_s']:.1f}")
        print(f"  trainer step CPU time (mean)  {tr['trainer_step_cpu_s']:.1f} CPU-s (generate "
              f"{tr['trainer_generate_cpu_s']:.1f} CPU-s)")
        print(f"  checkpoint save (mean)        {tr['checkpoint_s']:.1f} s; peak RSS {tr['peak_rss_gib']:.1f} GiB")
        print(f"  mean response length          {tr['response_length_mean']:.1f} tokens")
        print(f"  reward by step {tr['reward_mean_by_step']}   accuracy by step {tr['accuracy_by_step']}")
        print(f"  whole command                 {tr['total_s']:.1f} s")
    if "plain" in report:
        pl = report["plain"]
        b = pl["best"]
        print(f"plain model ({pl['batch']}; load {pl['load_s']:.1f} s):")
        print(f"  generate {b['generate_s']:.1f} s + forward/backward/AdamW {b['update_s']:.1f} s = {b['step_s']:.1f} s"
              f" ({b['completion_tokens']} completion tokens); CPU {b['step_cpu_s']:.1f} CPU-s "
              f"(generate {b['generate_cpu_s']:.1f})")
    if "overhead_ratio" in report:
        print(f"trainer step / plain step = {report['overhead_ratio']:.2f} wall, "
              f"{report['overhead_ratio_cpu']:.2f} CPU time (CPU time is the fairer ratio on a shared machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
