"""Config loading: typed sections, overrides, env compatibility, clear errors."""

from __future__ import annotations

import pytest

from engine.config import build_config, config_diff, load_config, parse_override, store_path
from engine.errors import ConfigError


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["scorer.k=2", "judge.rubricator.model=gpt-x", "scorer.blind=false",
                             "trainer.learning_rate=5e-6", "verl.overrides=[a=1, b=2]"])
    assert cfg.scorer.k == 2
    assert cfg.judge.rubricator.model == "gpt-x"
    assert cfg.scorer.blind is False
    assert cfg.trainer.learning_rate == pytest.approx(5e-6)
    assert cfg.verl.overrides == ["a=1", "b=2"]


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["scorer.blnd=false"])
    assert "scorer.blnd" in str(err.value)
    assert "scorer.blind" in str(err.value)


def test_bad_value_names_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("scorer:\n  rubric_scope: everything\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert str(f) in msg and "scorer.rubric_scope" in msg and "'shared'" in msg


def test_invalid_yaml_reports_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("scorer:\n  k: [1,\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "line" in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value)


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="min_criteria"):
        load_config(None, ["scorer.min_criteria=9", "scorer.max_criteria=4"])
    with pytest.raises(ConfigError, match="rollouts"):
        load_config(None, ["trainer.rollouts=1"])


def test_reference_env_vars_fill_unset_judge_fields_only():
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "ROPD_RUBRICATOR_MODEL": "rub",
           "ROPD_VERIFIER_MODEL": "ver", "ROPD_TEACHER_MODEL": "tea"}
    cfg = build_config({"judge": {"verifier": {"model": "mine"}}}, env=env)
    assert cfg.judge.rubricator.model == "rub"
    assert cfg.judge.verifier.model == "mine"
    assert cfg.judge.teacher.model == "tea"
    assert cfg.judge.rubricator.base_url == "http://127.0.0.1:9/v1"


def test_judge_mode_auto_selects_llm_only_with_key_or_url():
    cfg = build_config({}, env={})
    assert cfg.judge_is_llm(env={}) is False
    assert cfg.judge_is_llm(env={"OPENAI_API_KEY": "sk-test"}) is True
    cfg = build_config({"judge": {"mode": "offline"}}, env={})
    assert cfg.judge_is_llm(env={"OPENAI_API_KEY": "sk-test"}) is False


def test_api_key_never_enters_the_config():
    cfg = build_config({}, env={"OPENAI_API_KEY": "sk-secret-123"})
    assert "sk-secret-123" not in repr(cfg.to_dict())


def test_parse_override_forms():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=hello world") == ("a", "hello world")
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_store_path_precedence(tmp_path):
    cfg = build_config({}, env={})
    assert str(store_path(cfg, env={})).endswith("runs/ropd.db")
    assert store_path(cfg, env={"ROPD_STORE": "/x/s.db"}).as_posix() == "/x/s.db"
    cfg = build_config({"run": {"store": "/y/t.db"}}, env={})
    assert store_path(cfg, env={"ROPD_STORE": "/x/s.db"}).as_posix() == "/y/t.db"


def test_config_diff_lists_only_differences():
    a = load_config(None, ["scorer.k=4"]).to_dict()
    b = load_config(None, ["scorer.k=1", "judge.verifier.model=m"]).to_dict()
    diff = config_diff(a, b)
    assert diff == {"scorer.k": (4, 1), "judge.verifier.model": (None, "m")}


# --- defaults survive partial overrides (issue 11: teacher temperature became 0.0) ------------

import dataclasses  # noqa: E402

import yaml  # noqa: E402

from engine.config import Config  # noqa: E402


def _leaves(obj, prefix=""):
    """(dotted key, default value) of every leaf field of a config dataclass, nested sections included."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, key + ".")
        else:
            yield key, value


DEFAULTS = dict(_leaves(Config()))


def test_documented_defaults_include_the_per_role_teacher_temperature():
    assert DEFAULTS["judge.teacher.temperature"] == 0.7
    assert DEFAULTS["judge.rubricator.temperature"] == 0.0 and DEFAULTS["judge.verifier.temperature"] == 0.0


SECTIONS = sorted({k.rsplit(".", 1)[0] for k in DEFAULTS if "." in k})


def _one_key(section):
    """A key of ``section`` (directly in it) with a non-null default."""
    return next(k for k, v in DEFAULTS.items() if k.rsplit(".", 1)[0] == section and v is not None)


@pytest.mark.parametrize("section", SECTIONS)
def test_every_default_survives_a_partial_override_from_the_command_line(section):
    """Setting one key of a section (to its own value) changes nothing else in the config."""
    key = _one_key(section)
    cfg = load_config(None, [f"{key}={yaml.safe_dump(DEFAULTS[key], default_flow_style=True).strip().removesuffix('...').strip()}"])
    assert dict(_leaves(cfg)) == DEFAULTS


@pytest.mark.parametrize("role", ["rubricator", "verifier", "teacher"])
def test_every_role_keeps_its_defaults_when_only_its_model_is_set(role):
    cfg = load_config(None, [f"judge.{role}.model=m"])
    got = dict(_leaves(cfg))
    assert got.pop(f"judge.{role}.model") == "m"
    assert got == {k: v for k, v in DEFAULTS.items() if k != f"judge.{role}.model"}


@pytest.mark.parametrize("section", SECTIONS)
def test_every_default_survives_a_partial_section_in_yaml(tmp_path, section):
    key = _one_key(section)
    leaf = key.rsplit(".", 1)[1]
    data: dict = {}
    cur = data
    for part in section.split("."):
        cur = cur.setdefault(part, {})
    cur[leaf] = DEFAULTS[key]  # the key set to its own value: nothing else may change
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(data))
    assert dict(_leaves(load_config(f))) == DEFAULTS


def test_empty_or_null_section_in_yaml_keeps_its_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("judge:\n  teacher:\n  verifier: {model: v}\n")
    cfg = load_config(f)
    assert cfg.judge.teacher.temperature == 0.7
    assert cfg.judge.verifier.temperature == 0.0 and cfg.judge.verifier.model == "v"


def test_teacher_model_override_keeps_the_teacher_temperature(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("judge:\n  teacher:\n    model: t\n    max_tokens: 256\n")
    cfg = load_config(f, ["judge.teacher.base_url=http://127.0.0.1:1/v1"])
    assert cfg.judge.teacher.temperature == 0.7
    assert cfg.judge.teacher.max_tokens == 256 and cfg.judge.teacher.model == "t"


def test_readme_local_server_settings_paste_into_a_valid_config():
    """The "Judging with a local server" blocks are meant to be pasted: each must be a valid config."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Judging with a local server"):readme.index("## Teacher index")]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3
    for block in blocks:
        cfg = build_config(yaml.safe_load(block))
        for role in (cfg.judge.rubricator, cfg.judge.verifier):
            assert role.base_url and role.max_tokens and role.response_format in ("json_schema", "json_object")


# -- ranges, override attribution, unreadable files ---------------------------------------------

def test_every_numeric_key_has_a_range():
    import dataclasses
    import typing

    from engine.config import Config, range_keys

    def numeric_keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(tp):
                yield from numeric_keys(tp, key + ".")
            elif {int, float} & set(typing.get_args(tp) or (tp,)):
                yield key

    assert set(numeric_keys(Config)) == set(range_keys())


@pytest.mark.parametrize("override, words", [
    ("trainer.learning_rate=-1", "'trainer.learning_rate' must be > 0, got -1.0"),
    ("scorer.answer_char_budget=-5", "'scorer.answer_char_budget' must be >= 0 (0 = answers are not truncated), got -5"),
    ("judge.verifier.timeout_s=0", "'judge.verifier.timeout_s' must be > 0"),
    ("judge.teacher.temperature=3", "'judge.teacher.temperature' must be >= 0 and <= 2"),
    ("trainer.top_p=.nan", "'trainer.top_p' must be > 0 and <= 1, got nan"),
    ("scorer.failure_threshold=1.5", "'scorer.failure_threshold' must be >= 0 and <= 1"),
    ("judge.max_retries=-1", "'judge.max_retries' must be >= 0"),
    ("trainer.rollouts=1", "GRPO needs a group"),
])
def test_out_of_range_values_name_the_key_and_the_command_line(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert words in str(err.value) and f"command line '{override}'" in str(err.value)


def test_out_of_range_value_in_a_file_names_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  learning_rate: -0.001\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, ["trainer.steps=2"])
    assert str(err.value).startswith(f"{f}: 'trainer.learning_rate' must be > 0")


def test_override_errors_are_attributed_to_the_command_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("scorer:\n  k: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, ["trainer.stepz=3"])
    assert str(err.value).startswith("command line 'trainer.stepz=3': unknown config key 'trainer.stepz'")
    assert "trainer.steps" in str(err.value) and str(f) not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(f, ["trainer.steps=many"])
    assert str(err.value).startswith("command line 'trainer.steps=many': 'trainer.steps' must be an integer")
    with pytest.raises(ConfigError) as err:
        load_config(f, ["nosuchsection.x=1"])
    assert "command line 'nosuchsection.x=1': unknown config key 'nosuchsection'" in str(err.value)


def test_config_that_is_a_directory_or_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"scorer:\n  extra_rubric_instructions: caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "line 2 is not UTF-8 text: byte 0xe9 at column 33 (byte offset 40 in the file)" in str(err.value)
