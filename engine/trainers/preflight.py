"""Checks a run config BEFORE anything starts, so a bad run fails in a second with a clear message
instead of minutes later in a subprocess.

:func:`preflight` raises the first problem as a :class:`~engine.errors.UserError` (unknown keys are
already rejected by :func:`engine.config.load_config`) and returns short notes on what will happen
("judge: offline", "teacher index: built on first use", ...). Used by ``ropd-tui --headless train``
and by the TUI's run launcher.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Mapping

from engine.wording import plural
from engine.config import Config
from engine.errors import ConfigError, TeacherIndexError


def preflight(cfg: Config, env: Mapping[str, str] | None = None, *, live: bool = True) -> list[str]:
    """``live``: also ask an LLM judge's endpoints whether they answer and serve the models (a second
    or two; JudgeError naming the URL and cause otherwise)."""
    env = os.environ if env is None else env
    notes: list[str] = _check_working_dir(cfg)
    if cfg.run.backend == "verl":
        notes += _check_verl(cfg)
    else:
        from engine.trainers.model_cache import check_model_spec

        notes.append(f"model: {check_model_spec(cfg.trainer.model)}")
        t = cfg.trainer
        notes.append(f"trainer: embedded GRPO, {plural(t.steps, 'step')} x {plural(t.prompts_per_step, 'prompt')} x "
                     f"{plural(t.rollouts, 'rollout')} x {plural(t.max_new_tokens, 'token')}, lr {t.learning_rate:g}")
    notes.append(_check_judge(cfg, env))
    if live and cfg.judge_is_llm(env):
        notes.append(_check_judge_live(cfg))
    notes += _check_templates(cfg)
    if cfg.run.backend == "embedded":
        notes += _check_task_and_index(cfg)
    return notes


def _check_working_dir(cfg: Config, cwd: str | None = None) -> list[str]:
    """A folder named like one of our packages in the working directory (many ML repositories have an
    ``engine/``). Our own subprocesses never import it (engine.runs.entrypoint); verl's Ray workers
    would, since Ray puts the driver's working directory first on their sys.path."""
    from engine.runs.entrypoint import shadowing_folders

    names = shadowing_folders(cwd)
    if not names:
        return []
    where = os.path.abspath(cwd or os.getcwd())
    folders = ", ".join(f"{n}/" for n in names)
    if cfg.run.backend == "verl":
        raise ConfigError(f"the working directory {where} has its own {folders}, which verl's Ray workers would "
                          f"import instead of ropd-tui's (Ray puts the driver's working directory first on "
                          f"their sys.path)", hint="start the run from another directory (paths in the config "
                          "may stay absolute), or rename that folder")
    return [f"note: {where} has its own {folders}; ropd-tui's processes never import it, but `python -m "
            f"{names[0]}...` or `import {names[0]}` in a script started here would"]


def _check_verl(cfg: Config) -> list[str]:
    if importlib.util.find_spec("verl") is None:
        raise ConfigError("run.backend is 'verl' but verl is not installed",
                          hint="install it with: pip install -e '.[verl]'  (GPU machines; see the README), "
                               "or use run.backend=embedded")
    if not cfg.verl.model_path:
        raise ConfigError("run.backend is 'verl' but verl.model_path is not set",
                          hint="set verl.model_path to the student model (an HF model directory or hub id)")
    return [f"trainer: verl ({cfg.verl.config_name}), model {cfg.verl.model_path}"]


def _check_judge(cfg: Config, env: Mapping[str, str]) -> str:
    if not cfg.judge_is_llm(env):
        return "judge: offline (rule-based stand-in; set OPENAI_API_KEY or judge.*.base_url for an LLM judge)"
    missing = []
    for role in ("rubricator", "verifier"):
        ep = getattr(cfg.judge, role)
        if not ep.model:
            missing.append(f"judge.{role}.model")
    if missing:
        raise ConfigError(f"the LLM judge is selected (judge.mode={cfg.judge.mode}) but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not set",
                          hint="set the judge models in the config (or ROPD_RUBRICATOR_MODEL / ROPD_VERIFIER_MODEL), "
                               "or use judge.mode=offline")
    for role in ("rubricator", "verifier"):
        ep = getattr(cfg.judge, role)
        if not ep.base_url and not env.get(ep.api_key_env):
            raise ConfigError(f"no judge configured for the {role}: judge.{role}.base_url is not set and "
                              f"${ep.api_key_env} is empty",
                              hint=f"export {ep.api_key_env}=... (for api.openai.com), set judge.{role}.base_url "
                                   "to an OpenAI-compatible server, or use judge.mode=offline")
    r, v = cfg.judge.rubricator, cfg.judge.verifier
    return f"judge: LLM (rubricator {r.model} @ {r.base_url or 'OpenAI'}, verifier {v.model} @ {v.base_url or 'OpenAI'})"


def _check_judge_live(cfg: Config) -> str:
    from engine.scoring.scorer import Scorer

    checked = Scorer(cfg).preflight_sync()
    return "judge reachable: " + ", ".join(f"{c.get('model')} @ {c.get('url')}" for c in checked)


def _check_templates(cfg: Config) -> list[str]:
    from engine.templates.render import Template, resolve_template_path

    roles = ["scalar_judge"] if cfg.scorer.reward_mode == "scalar_judge" else ["rubricator", "verifier"]
    for role in roles:
        path = resolve_template_path(getattr(cfg.templates, role))
        if not Path(path).exists():
            raise ConfigError(f"templates.{role}: file not found: {path}",
                              hint="point it at a template file (the defaults live in prompts/)")
        Template.load(path, role)  # TemplateError names the file, line and placeholder
    return []


def _check_task_and_index(cfg: Config) -> list[str]:
    from engine.trainers import data as task_data

    problems = task_data.load_problems(cfg)
    distinct = {str(p["prompt"]) for p in problems}
    if len(distinct) < cfg.trainer.prompts_per_step:
        raise ConfigError(f"the task has {len(distinct)} distinct prompts but trainer.prompts_per_step is "
                          f"{cfg.trainer.prompts_per_step}", hint="lower trainer.prompts_per_step or add prompts")
    notes = [f"task: {cfg.task.name}, {len(problems)} prompts"]
    val = task_data.load_validation_problems(cfg, problems)  # a bad task.val_file fails here, naming the line
    if val:
        source = cfg.task.val_file or "held-out demo problems, disjoint from training"
        t = cfg.trainer
        when = "after the last step" if t.eval_every >= t.steps else f"every {plural(t.eval_every, 'step')} and after the last"
        notes.append(f"validation: greedy accuracy on {len(val)} prompts ({source}) {when}")
    if cfg.scorer.k == 0:
        return notes + ["teacher answers: none (scorer.k=0)"]
    if not cfg.teacher.index:
        raise TeacherIndexError("teacher.index is not set",
                                hint="build a teacher index with `ropd-tui --headless index build` and set teacher.index")
    path = Path(cfg.teacher.index)
    if cfg.task.name == "demo_math" and cfg.teacher.build_if_missing:
        state = "present" if path.exists() else "built automatically on first use"
        return notes + [f"teacher index: {path} ({state}; deterministic demo teacher)"]
    if not path.exists():
        raise TeacherIndexError(f"teacher index not found: {path}",
                                hint="build it first: ropd-tui --headless index build --help (or fix teacher.index)")
    from engine.teacher.index import TeacherIndex

    index = TeacherIndex.load(path)
    missing = [p["prompt"] for p in problems if index.answers_for(p["prompt"]) is None]
    if missing:
        from engine.types import prompt_text

        first = prompt_text(missing[0])[:80]
        raise TeacherIndexError(f"teacher index {path} has no answers for {len(missing)} of {len(problems)} "
                                f"training prompts (first: {first!r})",
                                hint="complete it with `ropd-tui --headless index build` (it skips prompts already "
                                     "answered)")
    return notes + [f"teacher index: {path} ({len(index)} prompts)"]
