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
