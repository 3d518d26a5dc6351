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
from engine.tracking.backends import check_tracking


def preflight(cfg: Config, env: Mapping[str, str] | None = None, *, live: bool = True) -> list[str]:
    """``live``: also ask an LLM judge's endpoints whether they answer and serve the models (a second
    or two; JudgeError naming the URL and cause otherwise)."""
    env = os.environ if env is None else env
    notes: list[str] = _check_working_dir(cfg)
    if cfg.run.backend == "verl":
        notes += _check_verl(cfg)
    else:
        from engine.trainers.model_cache import check_model_spec
        from engine.trainers.trl_compat import check_trl

        notes.append(check_trl())  # DependencyError naming the supported TRL range when a hook has changed
        notes.append(f"model: {check_model_spec(cfg.trainer.model)}")
        t = cfg.trainer
        notes.append(f"trainer: embedded GRPO, {plural(t.steps, 'step')} x {plural(t.prompts_per_step, 'prompt')} x "
                     f"{plural(t.rollouts, 'rollout')} x {plural(t.max_new_tokens, 'token')}, lr {t.learning_rate:g}")
    notes.append(_check_judge(cfg, env))
    if live and cfg.judge_is_llm(env):
        notes.append(_check_judge_live(cfg))
    notes += check_templates(cfg)
    notes.append(_check_checker(cfg))
    if cfg.run.backend == "embedded":
        notes += _check_task_and_index(cfg)
    notes += _check_cost(cfg, env)
    notes += check_tracking(cfg)
    return notes


def _check_cost(cfg: Config, env: Mapping[str, str]) -> list[str]:
    """Prices and budget are sane; with an LLM judge and prices, the first step's estimated cost (a
    first step estimated above judge.budget_usd refuses the run)."""
    from engine.judging.cost import check_cost_settings, format_usd, pricing_from_config

    check_cost_settings(cfg)
    if not cfg.judge_is_llm(env):
        return []
    pricing = pricing_from_config(cfg)
    if pricing.state == "free":
        return ["judge cost: free (every judge role is priced at 0)"]
    if not pricing.positive:
        roles = ", ".join(f"judge.{r}" for r in pricing.used_roles)
        return [f"judge cost: not priced (set price_in_per_mtok / price_out_per_mtok of {roles} to see costs in "
                f"USD and to use judge.budget_usd)"]
    if cfg.run.backend == "verl" and cfg.verl.train_files:
        return ["judge cost: priced; no first-step estimate for verl.train_files (cost/* metrics are recorded per step)"]
    from engine.errors import UserError
    from engine.judging.cost_estimate import estimate_first_step, steps_within_budget

    try:
        est = estimate_first_step(cfg)
    except UserError as err:
        return [f"judge cost: priced; no first-step estimate ({err.message})"]
    steps = cfg.trainer.steps if cfg.run.backend == "embedded" else None
    notes = [est.describe(steps)]
    if pricing.state == "partial":
        notes[0] += f" (not priced, so not counted: {', '.join(pricing.unpriced_roles)})"
    budget = cfg.judge.budget_usd
    if budget is not None:
        if est.usd > budget:
            raise ConfigError(f"the first step is estimated to cost {format_usd(est.usd)} of judge time, more than "
                              f"judge.budget_usd ({format_usd(budget)})",
                              hint="raise judge.budget_usd, or make steps cheaper (fewer prompts_per_step or "
                                   "rollouts, a cheaper judge); the estimate is printed by the preflight")
        n = steps_within_budget(est.usd, budget)
        notes.append(f"judge budget: {format_usd(budget)}, about {n} steps at this estimate; the run stops cleanly "
                     f"(checkpoint, exit code 5) before a step would take it past the budget")
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
                          hint="install it with: pip install -e '.[gpu]'  (GPU machines; see the README), "
                               "or use run.backend=embedded")
    if not cfg.verl.model_path:
        raise ConfigError("run.backend is 'verl' but verl.model_path is not set",
                          hint="set verl.model_path to the student model (an HF model directory or hub id)")
    from engine.verl_backend.launcher import preflight as verl_preflight

    # the composed verl config (our reward manager, file logger, reward workers, ...), the validation
    # rows' ground truths, the task and the teacher index, as the launcher will check them again
    notes = verl_preflight(cfg)
    return [f"trainer: verl ({cfg.verl.config_name}), model {cfg.verl.model_path}"] + notes


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

    def limits(c: dict) -> str:
        said = [f"context {c['context_len']} tokens" if c.get("context_len") else "",
                f"{c['slots']} parallel slot(s)" if c.get("slots") else ""]
        return f" ({', '.join(x for x in said if x)})" if any(said) else ""

    return "judge reachable: " + ", ".join(f"{c.get('model')} @ {c.get('url')}{limits(c)}" for c in checked)


def check_templates(cfg: Config) -> list[str]:
    """Load every template the configured reward mode uses (ConfigError / TemplateError, exit 2)."""
    from engine.templates.render import Template, resolve_template_path

    roles = ["scalar_judge"] if cfg.scorer.reward_mode == "scalar_judge" else ["rubricator", "verifier"]
    for role in roles:
        path = resolve_template_path(getattr(cfg.templates, role))
        if not Path(path).exists():
            raise ConfigError(f"templates.{role}: file not found: {path}",
                              hint="point it at a template file (the defaults live in prompts/)")
        Template.load(path, role)  # TemplateError names the file, line and placeholder
    return []


def _check_checker(cfg: Config) -> str:
    """The answer checker loads here (math-verify installed, a python: checker's module importable)."""
    from engine.tasks.checkers import resolve_checker

    resolve_checker(cfg.task.checker)  # ConfigError naming the checker and what to do
    return f"answer checker: {cfg.task.checker} ({cfg.task.checker_timeout_s:g} s per answer)"


def _check_task_and_index(cfg: Config) -> list[str]:
    from engine.trainers import data as task_data

    problems = task_data.load_problems(cfg)
    distinct = {str(p["prompt"]) for p in problems}
    if len(distinct) < cfg.trainer.prompts_per_step:
        raise ConfigError(f"the task has {len(distinct)} distinct prompts but trainer.prompts_per_step is "
                          f"{cfg.trainer.prompts_per_step}", hint="lower trainer.prompts_per_step or add prompts")
    with_truth = sum(p.get("ground_truth") is not None for p in problems)
    notes = [f"task: {cfg.task.name}, {len(problems)} prompts, {with_truth} with a ground truth"
             + ("" if with_truth else " (accuracy is not measured)")]
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
