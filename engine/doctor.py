"""``ropd-tui --headless doctor``: is this machine ready for a verl run? One PASS / FAIL / SKIP line per
check, each with its evidence.

Each check is a plain function ``(ctx: DoctorContext) -> list[Check]`` listed in :data:`CHECKS`, run in
order; one that raises becomes a FAIL line (never a traceback). Add a check by writing one more function
and appending it. GPU checks say SKIP on a machine without CUDA, so the command runs everywhere; with
``--gpu-smoke`` the last check trains two real verl steps and resumes (engine.verl_backend.smoke).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.checks import Check, failed, passed, skipped, verdict
from engine.config import Config

VERL_VERSION = "0.9.1"
VLLM_PIN = "0.24.0"  # verl 0.9.1's `vllm` extra: vllm==0.24.0, torch==2.11.0 (see tests/test_install_extras.py)
TORCH_PIN = "2.11.0"
PLACEHOLDER_MODEL = "Qwen/Qwen3-1.7B"
INSTALL_HINT = 'pip install -e ".[gpu]"'


@dataclass
class DoctorContext:
    cfg: Config
    model: str | None = None  # --model: a small local HF model for the GPU smoke
    gpu_smoke: bool = False
    work_dir: str | None = None
    log: Callable[[str], None] = print
    _cuda: bool | None = field(default=None, repr=False)

    @property
    def cuda(self) -> bool:
        """torch sees a CUDA device (False without torch)."""
        if self._cuda is None:
            try:
                import torch

                self._cuda = bool(torch.cuda.is_available())
            except ImportError:
                self._cuda = False
        return self._cuda


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def check_python(ctx: DoctorContext) -> list[Check]:
    v = sys.version_info
    return [verdict((3, 10) <= v[:2] <= (3, 12), "python 3.10-3.12 (verl 0.9.1's range)",
                    f"{sys.version.split()[0]} at {sys.executable}")]


def check_our_packages(ctx: DoctorContext, cwd: str | None = None) -> list[Check]:
    """The ``engine`` and ``ropd_tui`` this process imported are ropd-tui's own, and the working directory
    holds no folder of the same name (verl's Ray workers put the driver's working directory first on
    their ``sys.path``, so a user's ``engine/`` there would replace ours in every worker)."""
    from engine.runs.entrypoint import OUR_PACKAGES, shadowing_folders

    here = Path(__file__).resolve().parents[1]  # the folder holding this engine/
    out = []
    for name in OUR_PACKAGES:
        mod = sys.modules.get(name) or __import__(name)
        origin = Path(getattr(mod, "__file__", "") or "").resolve()
        ok = origin.parent.parent == here
        out.append(verdict(ok, f"`import {name}` is ropd-tui's", f"{origin.parent}" if ok else
                           f"imports {origin.parent}, not ropd-tui's {here / name}: a folder or module named {name} "
                           "earlier on sys.path (the working directory, PYTHONPATH) shadows it; rename it or "
                           "start from another directory"))
    where = os.path.abspath(cwd or os.getcwd())
    names = shadowing_folders(where)
    if not names:
        out.append(passed("working directory shadows no ropd-tui package", f"{where} has no engine/ or ropd_tui/"))
    else:
        folders = ", ".join(f"{n}/" for n in names)
        out.append(failed("working directory shadows no ropd-tui package",
                          f"{where} has its own {folders}: verl's Ray workers would import it instead of ropd-tui's "
                          "(the embedded trainer is safe); start verl runs from another directory or rename it"))
    return out


def check_trl(ctx: DoctorContext, grpo_trainer=None) -> list[Check]:
    """The embedded trainer's TRL hooks (engine.trainers.trl_compat): present with the expected signatures."""
    name = "TRL hooks of the embedded trainer"
    if importlib.util.find_spec("trl") is None:
        return [skipped(name, "TRL is not installed (only the embedded trainer needs it: pip install -e '.[trainer]')")]
    from engine.errors import UserError
    from engine.trainers.trl_compat import check_trl as check

    try:
        note = check(grpo_trainer)
    except UserError as e:
        return [failed(name, e.message + (f"; {e.hint}" if e.hint else ""))]
    return [passed(name, note)]


def check_verl(ctx: DoctorContext) -> list[Check]:
    v = _version("verl")
    if v is None:
        return [failed("verl installed", f"not installed in {sys.executable}; {INSTALL_HINT}")]
    out = [verdict(v == VERL_VERSION, f"verl {VERL_VERSION}", f"verl {v}")]
    tq = _version("TransferQueue")
    out.append(verdict(tq is not None, "TransferQueue (verl's default v1 trainer needs it)",
                       f"TransferQueue {tq}" if tq else f"not installed; {INSTALL_HINT} installs verl[verl-core]"))
    return out


def check_torch_cuda(ctx: DoctorContext) -> list[Check]:
    try:
        import torch
    except ImportError:
        return [failed("torch installed", f"not installed; {INSTALL_HINT}")]
    cuda_build = torch.version.cuda
    out = [passed("torch", f"torch {torch.__version__}, CUDA build {cuda_build or 'none (CPU build)'}")]
    if ctx.cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out.append(passed("torch.cuda.is_available()", f"True: {len(names)} device(s): {', '.join(names)}"))
    else:
        out.append(skipped("torch.cuda.is_available()", "False: no CUDA device here, so the GPU checks are skipped "
                           "(verl cannot train on CPU)"))
    return out


def check_vllm(ctx: DoctorContext) -> list[Check]:
    v = _version("vllm")
    if v is None:
        if not ctx.cuda:
            return [skipped(f"vllm {VLLM_PIN}", "not installed (rollouts need it on GPU nodes only)")]
        return [failed(f"vllm {VLLM_PIN}", f"not installed: verl's rollouts need it; {INSTALL_HINT}")]
    torch_v = (_version("torch") or "").split("+")[0]
    return [verdict(v == VLLM_PIN and torch_v == TORCH_PIN, f"vllm {VLLM_PIN} with torch {TORCH_PIN} (verl 0.9.1's pins)",
                    f"vllm {v}, torch {torch_v}")]


def check_plugin(ctx: DoctorContext) -> list[Check]:
    """In a fresh interpreter: ``import verl`` loads the ``verl.plugins`` entry points (swallowing their
    errors), so the registry is the proof."""
    if importlib.util.find_spec("verl") is None:
        return [skipped("ROPD plugin registered in verl", "verl is not installed")]
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="verl.plugins") if ep.name == "ropd"]
    if not eps:
        return [failed("ROPD plugin registered in verl", "no `verl.plugins` entry point named ropd: install this "
                       "project into the environment (pip install -e .)")]
    code = ("import verl\n"
            "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
            "c = get_reward_manager_cls('ropd')\nprint(c.__module__ + '.' + c.__name__)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[1]), env=dict(os.environ, PYTHONUNBUFFERED="1"))
    found = res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else ""
    ok = found.endswith("engine.verl_backend.reward_manager.ROPDRewardManager")
    tail = (res.stderr.strip().splitlines() or ["?"])[-1]
    return [verdict(ok, "ROPD plugin registered in verl",
                    f"entry point {eps[0].value}; verl's registry: ropd -> {found}" if ok
                    else f"entry point {eps[0].value}, but verl's registry has no 'ropd' ({tail[:200]})")]


def check_verl_config(ctx: DoctorContext) -> list[Check]:
    """The run config's verl command line composes, and the composed config calls ROPD's manager."""
    if importlib.util.find_spec("verl") is None:
        return [skipped("verl config composes and calls ROPD's reward manager", "verl is not installed")]
    from engine.config import build_config
    from engine.verl_backend.launcher import placeholder_command_args, resolve_command

    d = ctx.cfg.to_dict()
    d["run"]["backend"] = "verl"
    d["verl"]["model_path"] = d["verl"]["model_path"] or ctx.model or PLACEHOLDER_MODEL
    cfg = build_config(d, source="doctor")
    _, c, notes = resolve_command(cfg, **placeholder_command_args(cfg))
    from omegaconf import OmegaConf

    wiring = OmegaConf.select(c, "reward.reward_manager")
    return [passed(f"verl config {cfg.verl.config_name} composes and calls ROPD's reward manager",
                   f"reward.reward_manager {wiring.source}:{wiring.name}; " + "; ".join(notes))]


def check_judge(ctx: DoctorContext) -> list[Check]:
    cfg = ctx.cfg
    if not cfg.judge_is_llm():
        return [passed("judge", "offline (the rule-based stand-in; nothing to reach). Configure judge.* or "
                       "OPENAI_API_KEY / OPENAI_BASE_URL for an LLM judge")]
    from engine.errors import UserError
    from engine.scoring.scorer import Scorer
    from engine.trainers.preflight import _check_judge

    try:
        _check_judge(cfg, os.environ)
        checked = Scorer(cfg).preflight_sync()
    except UserError as e:
        return [failed("judge reachable", str(e))]
    return [passed("judge reachable", ", ".join(f"{c.get('model')} @ {c.get('url')}" for c in checked))]


def check_teacher_index(ctx: DoctorContext) -> list[Check]:
    cfg = ctx.cfg
    name = "teacher index readable"
    if cfg.scorer.k == 0:
        return [skipped(name, "scorer.k=0: no teacher answers used")]
    if not cfg.teacher.index:
        return [failed(name, "teacher.index is not set")]
    path = Path(cfg.teacher.index)
    if not path.exists() and cfg.task.name == "demo_math" and cfg.teacher.build_if_missing:
        return [passed(name, f"{path} does not exist yet; the demo task builds it on first use")]
    from engine.errors import UserError
    from engine.teacher.index import TeacherIndex

    try:
        index = TeacherIndex.load(path)
    except UserError as e:
        return [failed(name, str(e))]
    return [passed(name, f"{path}: {len(index)} prompts")]


SMOKE_LINES = ("gpu smoke: two verl steps + resume to step 3",)


def check_gpu_smoke(ctx: DoctorContext) -> list[Check]:
    if not ctx.gpu_smoke:
        return []
    if not ctx.cuda:
        return [skipped(SMOKE_LINES[0], "no CUDA device: the smoke needs a GPU (run it on a GPU node)")]
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("verl") is None:
        return [failed(SMOKE_LINES[0], f"verl and vLLM must be installed: {INSTALL_HINT}")]
    if not ctx.model or not Path(ctx.model).expanduser().exists():
        return [failed(SMOKE_LINES[0], f"needs --model PATH, a small local HF model directory (got {ctx.model!r})")]
    from engine.verl_backend.smoke import run_smoke

    judge = [] if ctx.cfg.judge_is_llm() else ["judge.mode=offline"]
    return run_smoke(str(Path(ctx.model).expanduser().resolve()), work_dir=ctx.work_dir, judge_overrides=judge,
                     log=ctx.log)


CHECKS: list[Callable[[DoctorContext], list[Check]]] = [
    check_python,
    check_our_packages,
    check_trl,
    check_verl,
    check_torch_cuda,
    check_vllm,
    check_plugin,
    check_verl_config,
    check_judge,
    check_teacher_index,
    check_gpu_smoke,
]


def run_checks(ctx: DoctorContext, checks: list[Callable[[DoctorContext], list[Check]]] | None = None,
               on_result: Callable[[Check], None] | None = None) -> list[Check]:
    out = []
    for fn in CHECKS if checks is None else checks:
        try:
            results = fn(ctx)
        except Exception as e:  # noqa: BLE001 - a broken check is a FAIL line, never a traceback
            results = [failed(fn.__name__.removeprefix("check_").replace("_", " "), f"{type(e).__name__}: {e}")]
        for r in results:
            out.append(r)
            if on_result is not None:
                on_result(r)
    return out
