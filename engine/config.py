"""Run configuration: typed sections, YAML loading, ``key.sub=value`` overrides, clear errors.

A config file is YAML whose top-level sections mirror the dataclasses below. Unknown keys are
rejected with the file, the dotted key and the closest valid name. Environment variables compatible
with the reference implementation fill in judge settings that the file leaves unset:
OPENAI_API_KEY (read at call time, never stored), OPENAI_BASE_URL, ROPD_RUBRICATOR_MODEL,
ROPD_VERIFIER_MODEL, ROPD_TEACHER_MODEL.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from engine.errors import ConfigError


@dataclass
class EndpointConfig:
    """One judge role (teacher, rubricator, verifier): which model, where, and how to call it."""

    model: str | None = None
    base_url: str | None = None  # None: OPENAI_BASE_URL, then the SDK default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the env var holding the key; keys never live in config
    temperature: float | None = 0.0
    max_tokens: int | None = 4096
    timeout_s: float = 120.0
    reasoning_effort: str | None = None  # minimal | low | medium | high (reasoning models only)
    response_format: Literal["json_object", "json_schema", "none"] = "json_object"


@dataclass
class JudgeConfig:
    mode: Literal["auto", "offline", "llm"] = "auto"  # auto: llm when a key or base URL is set
    api: Literal["chat", "responses"] = "chat"
    concurrency: int = 64  # requests in flight per endpoint
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 4  # transport retries (429/5xx/timeouts), done by the openai SDK
    retry_initial_delay_s: float = 0.5  # SDK backoff base (doubles per retry, 0-25% jitter); Retry-After wins
    retry_max_delay_s: float = 8.0  # cap of one backoff sleep
    http_backend: Literal["auto", "httpx", "aiohttp"] = "auto"  # SDK transport; auto: aiohttp when installed
    reask_attempts: int = 2  # re-asks with the validation error after an unparseable reply
    rubricator: EndpointConfig = field(default_factory=EndpointConfig)
    verifier: EndpointConfig = field(default_factory=EndpointConfig)
    teacher: EndpointConfig = field(default_factory=lambda: EndpointConfig(temperature=0.7))


@dataclass
class ScorerConfig:
    reward_mode: Literal["rubric", "scalar_judge"] = "rubric"
    rubric_scope: Literal["shared", "pair"] = "shared"
    blind: bool = True
    teacher_in_pool: bool = True
    k: int = 4  # teacher answers per prompt
    min_criteria: int = 4
    max_criteria: int = 12
    verifier_chunk_size: int = 16  # pool answers per verifier call
    answer_char_budget: int = 6000  # each answer is truncated to this many characters, with a marker
    failure_threshold: float = 0.5  # a batch failing more groups than this stops training
    shuffle_seed: int = 0
    eps: float = 1e-6
    extra_rubric_instructions: str = ""
    extra_scoring_instructions: str = ""


@dataclass
class TemplatesConfig:
    rubricator: str = "prompts/rubricator.txt"
    verifier: str = "prompts/verifier.txt"
    scalar_judge: str = "prompts/scalar_judge.txt"
    watch: bool = True  # reload valid edits into a running run


@dataclass
class TeacherConfig:
    index: str | None = "runs/teacher_index/demo_math.jsonl"
    build_if_missing: bool = True  # demo task only: generate the deterministic teacher index


@dataclass
class TaskConfig:
    name: str = "demo_math"  # demo_math | jsonl
    train_file: str | None = None  # jsonl: {"prompt": str|messages, "ground_truth": str?, "data_source": str?}
    val_file: str | None = None
    num_prompts: int = 64  # demo_math only
    seed: int = 0
    system_prompt: str | None = None


@dataclass
class EmbeddedTrainerConfig:
    model: str = "smollm2"  # "smollm2" (the PyPI-shipped SmolLM2-135M-Instruct) or a local HF model dir
    steps: int = 3
    prompts_per_step: int = 4
    rollouts: int = 4
    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 1.0
    learning_rate: float = 1e-6
    beta: float = 0.0  # KL coefficient
    scale_rewards: Literal["group", "batch", "none"] = "none"  # Dr.GRPO-style mean-centering by default
    loss_type: Literal["dapo", "dr_grpo", "grpo", "bnpo"] = "dapo"  # TRL loss aggregation; dapo = token mean
    gradient_checkpointing: bool = False  # trades ~30% more compute for less activation memory
    save_every: int = 1
    keep_checkpoints: int = 2
    bf16: bool = False
    threads: int | None = None
    seed: int = 0
    # validation: greedy accuracy on held-out prompts (task.val_file, or demo_math problems disjoint from
    # training) after every eval_every steps and after the last step; 0 = off
    eval_every: int = 0
    eval_prompts: int = 16  # at most this many validation prompts


@dataclass
class VerlConfig:
    config_name: str = "ropd_grpo"  # file in configs/verl/ (Hydra config name)
    model_path: str | None = None
    train_files: str | None = None
    val_files: str | None = None
    nnodes: int = 1
    n_gpus_per_node: int = 1
    ray_address: str | None = None  # RAY_ADDRESS of an existing cluster
    group_timeout_s: float = 600.0  # a prompt whose rollouts never all arrive fails after this
    overrides: list[str] = field(default_factory=list)  # raw Hydra overrides passed to main_ppo


@dataclass
class SupervisorConfig:
    stall_after_start_s: float = 1800.0  # no first step within this -> stalled
    stall_between_steps_s: float = 1800.0  # no new step within this since the last -> stalled
    stop_grace_s: float = 15.0
    # a phase inside a step (generating, scoring, updating, ...) whose progress has not moved for this
    # long is shown as "no progress" by train, status and the UI (0: never)
    no_progress_after_s: float = 300.0


@dataclass
class RunSection:
    name: str = "run"
    backend: Literal["embedded", "verl"] = "embedded"
    store: str | None = None  # None: $ROPD_STORE, then runs/ropd.db under the current directory


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    task: TaskConfig = field(default_factory=TaskConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    templates: TemplatesConfig = field(default_factory=TemplatesConfig)
    trainer: EmbeddedTrainerConfig = field(default_factory=EmbeddedTrainerConfig)
    verl: VerlConfig = field(default_factory=VerlConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def judge_is_llm(self, env: typing.Mapping[str, str] | None = None) -> bool:
        """Whether LLM judging is selected (mode=llm, or mode=auto with a key or base URL present)."""
        env = os.environ if env is None else env
        if self.judge.mode == "offline":
            return False
        if self.judge.mode == "llm":
            return True
        roles = (self.judge.rubricator, self.judge.verifier)
        return any(r.base_url for r in roles) or any(env.get(r.api_key_env) for r in roles)


# ---------------------------------------------------------------------------------------------
# building dataclasses from dicts, with errors that name the key

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping (section), got {type(value).__name__}")
        return _build(tp, value, where, source)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if errors else ConfigError(f"{source}: '{where}' cannot be null")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{source}: '{where}' must be one of {', '.join(map(repr, allowed))}, got {value!r}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{where}' must be a list, got {value!r}")
        (inner,) = get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{where}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: '{where}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: '{where}' must be a string, got {value!r}")
    raise ConfigError(f"{source}: '{where}' has unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else (
                f"valid keys here: {', '.join(names)}")
            raise ConfigError(f"{source}: unknown config key '{where}'", hint=hint)
        kwargs[key] = _coerce(value, hints[key], where, source)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (dotted key, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}", hint="pass --config with an existing file, e.g. configs/demo.yaml")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{loc} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


def build_config(data: dict[str, Any], overrides: list[str] | None = None, *, source: str = "config",
                 env: typing.Mapping[str, str] | None = None) -> Config:
    data = copy.deepcopy(data)
    for ov in overrides or []:
        key, value = parse_override(ov)
        _set_dotted(data, key, value)
    cfg = _build(Config, data, "", source)
    apply_env(cfg, os.environ if env is None else env)
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                env: typing.Mapping[str, str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides and env vars."""
    data = load_yaml(path) if path else {}
    return build_config(data, overrides, source=str(path) if path else "defaults", env=env)


def apply_env(cfg: Config, env: typing.Mapping[str, str]) -> None:
    """Fill judge settings the config left unset from reference-compatible environment variables."""
    base = env.get("OPENAI_BASE_URL")
    for role, var in (("rubricator", "ROPD_RUBRICATOR_MODEL"), ("verifier", "ROPD_VERIFIER_MODEL"),
                      ("teacher", "ROPD_TEACHER_MODEL")):
        ep: EndpointConfig = getattr(cfg.judge, role)
        if ep.model is None and env.get(var):
            ep.model = env[var]
        if ep.base_url is None and base:
            ep.base_url = base


def validate(cfg: Config) -> None:
    s = cfg.scorer
    if not (1 <= s.min_criteria <= s.max_criteria):
        raise ConfigError(f"scorer.min_criteria ({s.min_criteria}) must be >= 1 and <= scorer.max_criteria ({s.max_criteria})")
    if s.k < 0:
        raise ConfigError("scorer.k must be >= 0")
    if not 0.0 <= s.failure_threshold <= 1.0:
        raise ConfigError(f"scorer.failure_threshold must be within [0, 1], got {s.failure_threshold}")
    if s.verifier_chunk_size < 1:
        raise ConfigError("scorer.verifier_chunk_size must be >= 1")
    if cfg.judge.concurrency < 1:
        raise ConfigError("judge.concurrency must be >= 1")
    t = cfg.trainer
    for name in ("steps", "prompts_per_step", "rollouts", "max_new_tokens"):
        if getattr(t, name) < 1:
            raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(t, name)}")
    if t.rollouts < 2:
        raise ConfigError("trainer.rollouts must be >= 2: GRPO needs a group of rollouts per prompt")
    if t.eval_every < 0:
        raise ConfigError(f"trainer.eval_every must be >= 0 (0 = no validation), got {t.eval_every}")
    if t.eval_prompts < 1:
        raise ConfigError(f"trainer.eval_prompts must be >= 1, got {t.eval_prompts}")


def store_path(cfg: Config | None = None, env: typing.Mapping[str, str] | None = None) -> Path:
    """The run store: config run.store, then $ROPD_STORE, then ./runs/ropd.db."""
    env = os.environ if env is None else env
    if cfg is not None and cfg.run.store:
        return Path(cfg.run.store)
    if env.get("ROPD_STORE"):
        return Path(env["ROPD_STORE"])
    return Path("runs") / "ropd.db"


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Flattened keys whose values differ between two config dicts: {key: (a_value, b_value)}."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        k = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(config_diff(va, vb, k + "."))
        elif va != vb:
            out[k] = (va, vb)
    return out
