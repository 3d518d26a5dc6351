"""One line of a health report: a check's name, PASS / FAIL / SKIP, and the evidence behind it.

Used by ``ropd-tui --headless doctor`` (engine.doctor) and the verl GPU smoke (engine.verl_backend.smoke).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Check:
    name: str
    status: str  # PASS | FAIL | SKIP
    evidence: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def passed(name: str, evidence: str) -> Check:
    return Check(name, PASS, evidence)


def failed(name: str, evidence: str) -> Check:
    return Check(name, FAIL, evidence)


def skipped(name: str, evidence: str) -> Check:
    return Check(name, SKIP, evidence)


def verdict(ok: bool, name: str, evidence: str) -> Check:
    return Check(name, PASS if ok else FAIL, evidence)
