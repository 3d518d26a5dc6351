"""``ropd-tui --headless doctor``: check a machine before spending a cluster-day on it.

Versions (verl, vLLM, torch, CUDA), ``torch.cuda.is_available()``, the ROPD plugin in verl's registry, the
run config's composed verl config, the judge (reachable, or offline) and the teacher index; with
``--gpu-smoke`` also two real verl steps on a small local model and a resume (GPU nodes). One PASS / FAIL /
SKIP line per check with its evidence; exit code 0 when nothing failed, 1 otherwise. The checks live in
:mod:`engine.doctor` (a list of functions).
"""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="check this machine for verl runs (versions, GPU, plugin, judge, teacher index)",
        description="Check that this machine can run ROPD with verl: versions (verl, vLLM, torch, CUDA), "
                    "torch.cuda.is_available(), the ROPD plugin registered in verl, the composed verl config, "
                    "the judge and the teacher index. GPU checks say SKIP without a GPU. --gpu-smoke trains two "
                    "tiny verl steps and resumes to a third (a few minutes on one GPU).")
    p.add_argument("--config", help="run config to check (judge, teacher index, verl section); default: the defaults")
    p.add_argument("--gpu-smoke", action="store_true",
                   help="also train 2 verl steps on --model (train_batch_size 8, n 4, 256 tokens) and resume to step 3")
    p.add_argument("--model", help="a small local HF model dir for --gpu-smoke (e.g. Qwen2.5-0.5B-Instruct)")
    p.add_argument("--work-dir", help="where the smoke run's throwaway store and checkpoints go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. judge.mode=offline")
    p.set_defaults(func=handler)


def handler(args) -> int:
    from engine.config import load_config
    from engine.doctor import DoctorContext, run_checks

    from ._output import print_json

    cfg = load_config(args.config, args.overrides)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print

    def show(c) -> None:
        if not args.json:
            print(f"{c.status:<4}  {c.name}: {c.evidence}", flush=True)

    ctx = DoctorContext(cfg=cfg, model=args.model, gpu_smoke=args.gpu_smoke, work_dir=args.work_dir, log=log)
    checks = run_checks(ctx, on_result=show)
    n_fail = sum(c.status == "FAIL" for c in checks)
    n_skip = sum(c.status == "SKIP" for c in checks)
    if args.json:
        print_json({"checks": [c.as_dict() for c in checks], "failed": n_fail, "skipped": n_skip,
                    "cuda": ctx.cuda})
    else:
        print(f"\n{len(checks) - n_fail - n_skip} passed, {n_fail} failed, {n_skip} skipped"
              + ("" if ctx.cuda else " (no GPU here: GPU checks skipped)"))
    return 1 if n_fail else 0
