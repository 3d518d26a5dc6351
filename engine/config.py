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
    # prices in USD per million tokens (None: unknown; 0: free, e.g. a local server); see engine.judging.cost
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    price_cached_in_per_mtok: float | None = None  # prompt tokens served from the prompt cache; None: price_in


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
    # Circuit breaker per endpoint (engine.judging.client.CircuitBreaker): this many HTTP requests failing
    # in a row with no reply (timeouts, connection errors, 408/5xx), while the endpoint has not replied for
    # as long as one request's retries wait, open its circuit: requests to it fail at once (judge unreachable,
    # exit 3) instead of each waiting out timeout_s x (1 + max_retries). At most the endpoint's concurrency
    # (at least 2) are needed. 0 = off.
    circuit_breaker_failures: int = 8
    circuit_open_s: float = 30.0  # an open circuit lets one probe request through after this long
    budget_usd: float | None = None  # stop the run cleanly (exit code 5) before its judge cost would pass this
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
    name: str = "demo_math"  # demo_math | file (jsonl: the older name of file)
    # file: JSONL, Parquet or CSV (by extension); rows {"prompt": str|messages, "ground_truth"?, "data_source"?},
    # or verl-format parquet (data_source, prompt, reward_model.ground_truth, extra_info) as it is
    train_file: str | None = None
    val_file: str | None = None
    prompt_key: str = "prompt"  # column of the prompt (a string or chat messages); dots reach into nested columns
    answer_key: str | None = None  # column of the ground truth; None: ground_truth, else reward_model.ground_truth
    data_source_key: str | None = None  # None: data_source when the file has it, else the file name
    num_prompts: int = 64  # demo_math only
    seed: int = 0
    system_prompt: str | None = None
    checker: str = "math_verify"  # math_verify | rule | exact | python:module:function
    checker_timeout_s: float = 5.0  # per answer; a slower check counts as wrong and never stalls a step


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
    # several nodes: a folder every node sees at the same path (data, metrics, checkpoints of each run go
    # to <shared_dir>/<run name>); None: the run's folder next to the store (one node)
    shared_dir: str | None = None
    group_timeout_s: float = 600.0  # a prompt whose rollouts never all arrive fails after this
    straggler_warn_s: float = 120.0  # a prompt still missing rollouts this long after its last one: a warning event
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
class TrackingConfig:
    """Mirror the store's metrics to experiment trackers (engine.tracking); the store stays the source."""

    backends: list[Literal["wandb", "tensorboard", "mlflow"]] = field(default_factory=list)  # off by default
    project: str = "ropd"  # W&B project / MLflow experiment
    wandb_entity: str | None = None
    wandb_mode: Literal["online", "offline", "disabled"] | None = None  # None: W&B's own ($WANDB_MODE)
    wandb_dir: str | None = None  # None: the run folder
    tensorboard_dir: str | None = None  # None: <run folder>/tensorboard
    mlflow_tracking_uri: str | None = None  # None: MLflow's own ($MLFLOW_TRACKING_URI)


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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

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


def _coerce(value: Any, tp: Any, where: str, source: str, default: Any = None) -> Any:
    """``value`` as type ``tp``. A section (dataclass) starts from ``default``, the enclosing field's own
    default, so the keys a mapping leaves out keep it (judge.teacher's temperature is 0.7, not the
    class default 0.0)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        base = default if isinstance(default, tp) else tp()
        if value is None:
            return base
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping (section), got {type(value).__name__}")
        return _build(tp, value, where, source, base=base)
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


def _build(cls: type, data: dict[str, Any], prefix: str, source: str, base: Any = None) -> Any:
    """``cls`` with the keys of ``data`` set on ``base`` (default: ``cls()``, every field at its default,
    factory defaults included); keys ``data`` leaves out keep the value ``base`` has."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    base = cls() if base is None else base
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else (
                f"valid keys here: {', '.join(names)}")
            raise ConfigError(f"{source}: unknown config key '{where}'", hint=hint)
        kwargs[key] = _coerce(value, hints[key], where, source, default=getattr(base, key))
    return dataclasses.replace(base, **kwargs)


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
    if p.is_dir():
        raise ConfigError(f"config file {p} is a directory", hint="pass --config a YAML file, e.g. configs/demo.yaml")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {os.strerror(e.errno) if e.errno else e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{p}: line {line} is not UTF-8 text: byte 0x{raw[e.start:e.start + 1].hex()} at column "
                          f"{column} (byte offset {e.start} in the file)", hint="save the config as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
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
    from_command_line: dict[str, str] = {}
    for ov in overrides or []:
        key, value = parse_override(ov)
        check_override(ov, key, value)  # an override's own error names the command line, not the file
        _set_dotted(data, key, value)
        from_command_line[key] = ov
    cfg = _build(Config, data, "", source)
    apply_env(cfg, os.environ if env is None else env)
    check_ranges(cfg, lambda key: f"command line '{from_command_line[key]}'" if key in from_command_line else source)
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


# ---------------------------------------------------------------------------------------------
# command-line overrides: checked on their own, so their errors name the command line

def check_override(text: str, key: str, value: Any) -> None:
    """ConfigError naming the override ``text`` when ``key`` is unknown or ``value`` has the wrong type."""
    where = f"command line '{text}'"
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return  # inside a list / mapping value: the whole value is checked by the build
        names = [f.name for f in dataclasses.fields(cls)]
        prefix = ".".join(parts[:i])
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else (
                f"valid keys here: {', '.join(names)}")
            raise ConfigError(f"{where}: unknown config key '{'.'.join(parts[:i + 1])}'", hint=hint)
        tp = typing.get_type_hints(cls)[part]
        if i == len(parts) - 1:
            _coerce(value, tp, key, where)
            return
        cls = tp


# ---------------------------------------------------------------------------------------------
# numeric ranges: one declarative table for every numeric key

@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key: ``low``/``high`` bounds (None: unbounded), exclusive when
    ``*_open``; ``note`` says what a special value means. Non-finite values are always rejected."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) or "a finite number"

    def accepts(self, v: float) -> bool:
        import math

        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        if self.high is not None and (v >= self.high if self.high_open else v > self.high):
            return False
        return True


_POSITIVE = Range(0, low_open=True)
_AT_LEAST_1 = Range(1)
_NON_NEGATIVE = Range(0)
_SEED = Range(0, note="any non-negative integer")
#: Every numeric key of the config. ``judge.*`` means each judge role (rubricator, verifier, teacher).
#: tests/test_config.py checks that no numeric field is missing here.
RANGES: dict[str, Range] = {
    "judge.*.temperature": Range(0, 2),
    "judge.*.max_tokens": _AT_LEAST_1,
    "judge.*.timeout_s": _POSITIVE,
    "judge.*.price_in_per_mtok": _NON_NEGATIVE,
    "judge.*.price_out_per_mtok": _NON_NEGATIVE,
    "judge.*.price_cached_in_per_mtok": _NON_NEGATIVE,
    "judge.budget_usd": _POSITIVE,
    "judge.concurrency": _AT_LEAST_1,
    "judge.requests_per_minute": _POSITIVE,
    "judge.tokens_per_minute": _POSITIVE,
    "judge.max_retries": Range(0, 100),
    "judge.retry_initial_delay_s": _NON_NEGATIVE,
    "judge.retry_max_delay_s": _NON_NEGATIVE,
    "judge.reask_attempts": Range(0, 20),
    "judge.circuit_breaker_failures": Range(0, note="0 = no circuit breaker"),
    "judge.circuit_open_s": _NON_NEGATIVE,
    "scorer.k": _NON_NEGATIVE,
    "scorer.min_criteria": _AT_LEAST_1,
    "scorer.max_criteria": _AT_LEAST_1,
    "scorer.verifier_chunk_size": _AT_LEAST_1,
    "scorer.answer_char_budget": Range(0, note="0 = answers are not truncated"),
    "scorer.failure_threshold": Range(0, 1),
    "scorer.shuffle_seed": _SEED,
    "scorer.eps": Range(0, 1, low_open=True, high_open=True),
    "task.num_prompts": _AT_LEAST_1,
    "task.seed": _SEED,
    "task.checker_timeout_s": _POSITIVE,
    "trainer.steps": _AT_LEAST_1,
    "trainer.prompts_per_step": _AT_LEAST_1,
    "trainer.rollouts": Range(2, note="GRPO needs a group of rollouts per prompt"),
    "trainer.max_new_tokens": _AT_LEAST_1,
    "trainer.temperature": _POSITIVE,
    "trainer.top_p": Range(0, 1, low_open=True),
    "trainer.learning_rate": _POSITIVE,
    "trainer.beta": _NON_NEGATIVE,
    "trainer.save_every": _AT_LEAST_1,
    "trainer.keep_checkpoints": _AT_LEAST_1,
    "trainer.threads": _AT_LEAST_1,
    "trainer.seed": _SEED,
    "trainer.eval_every": Range(0, note="0 = no validation"),
    "trainer.eval_prompts": _AT_LEAST_1,
    "verl.nnodes": _AT_LEAST_1,
    "verl.n_gpus_per_node": _AT_LEAST_1,
    "verl.group_timeout_s": _POSITIVE,
    "verl.straggler_warn_s": _POSITIVE,
    "supervisor.stall_after_start_s": Range(0, note="0 = never flag a stall"),
    "supervisor.stall_between_steps_s": Range(0, note="0 = never flag a stall"),
    "supervisor.stop_grace_s": _NON_NEGATIVE,
    "supervisor.no_progress_after_s": Range(0, note="0 = never flag a phase without progress"),
}
_ROLES = ("rubricator", "verifier", "teacher")


def range_keys() -> dict[str, Range]:
    """RANGES with ``judge.*`` expanded to each role: dotted key -> Range."""
    out: dict[str, Range] = {}
    for key, rng in RANGES.items():
        if key.startswith("judge.*."):
            for role in _ROLES:
                out[key.replace("*", role, 1)] = rng
        else:
            out[key] = rng
    return out


def check_ranges(cfg: Config, source_of: typing.Callable[[str], str] = lambda key: "config") -> None:
    """ConfigError for the first numeric key outside its range, naming where the value came from."""
    for key, rng in range_keys().items():
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj is None or isinstance(obj, bool):
            continue
        if not rng.accepts(float(obj)):
            note = f" ({rng.note})" if rng.note else ""
            raise ConfigError(f"{source_of(key)}: '{key}' must be {rng.describe()}{note}, got {obj!r}",
                              hint=f"set {key} to a value {rng.describe()}")


def validate(cfg: Config) -> None:
    """Checks that relate several keys (one key's own range is in :data:`RANGES`)."""
    s = cfg.scorer
    if s.min_criteria > s.max_criteria:
        raise ConfigError(f"scorer.min_criteria ({s.min_criteria}) must be <= scorer.max_criteria ({s.max_criteria})")
    j = cfg.judge
    if j.retry_initial_delay_s > j.retry_max_delay_s > 0:
        raise ConfigError(f"judge.retry_initial_delay_s ({j.retry_initial_delay_s:g}) must be <= "
                          f"judge.retry_max_delay_s ({j.retry_max_delay_s:g})")
    from engine.tasks.checkers import validate_checker_spec

    validate_checker_spec(cfg.task.checker)


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
