"""Shared pytest setup.

Tests never reach the network (only 127.0.0.1 servers they start), never read API keys from the
developer's environment, and keep torch to the machine's cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

# Keep hub libraries offline and quiet in every test (and in subprocesses they start).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

_JUDGE_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ROPD_RUBRICATOR_MODEL", "ROPD_VERIFIER_MODEL",
              "ROPD_TEACHER_MODEL", "ROPD_STORE")


@pytest.fixture(autouse=True)
def _isolated_judge_env(monkeypatch):
    """A developer's OPENAI_API_KEY must not switch tests from the offline judge to a real API."""
    for name in _JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def judge_server():
    """A loopback judge server (tests/loopback_server.py) for one test, with the client's per-endpoint
    memory of unsupported parameters cleared before and after."""
    from engine.judging.client import forget_unsupported_params
    from loopback_server import LoopbackJudgeServer

    forget_unsupported_params()
    with LoopbackJudgeServer() as srv:
        yield srv
    forget_unsupported_params()
