"""Keep secrets out of the store: config snapshots, environments and error texts are scrubbed.

Configs only hold the NAMES of environment variables that carry keys (``api_key_env``), but a user
may still paste a key somewhere; anything that looks like one is replaced by ``***``.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

# Key names whose values are secrets (but not *_env, which hold variable NAMES).
_SECRET_NAME = re.compile(
    r"(api[_-]?key|secret|password|passwd|credential|bearer|authorization|(^|[_-])token$|access[_-]?key)", re.I)
# Values that look like credentials wherever they appear.
_SECRET_VALUE = re.compile(
    r"(sk-[A-Za-z0-9_\-]{12,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9\-]{10,}"
    r"|AKIA[0-9A-Z]{16}|Bearer\s+[A-Za-z0-9._\-]{8,})"
)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)[^/@\s:]+(:[^/@\s]*)?@", re.I)
# `NAME=value` / `a.b.NAME=value` assignments (Hydra overrides, env settings) whose last name part is a
# secret's name: a W&B key is 40 hex digits, which no value pattern can tell from a hash.
_ASSIGNMENT = re.compile(r"(?P<key>\+{0,2}[A-Za-z_][\w.\-]*)=(?P<value>'[^']*'|\"[^\"]*\"|[^\s,\]'\"]+)")


def _scrub_assignment(m: re.Match) -> str:
    key = m.group("key")
    if is_secret_name(key.lstrip("+").rsplit(".", 1)[-1]) and m.group("value") != REDACTED:
        return f"{key}={REDACTED}"
    return m.group(0)


def scrub_text(text: str) -> str:
    """Replace credential-looking substrings (API keys, bearer tokens, user:pass@ in URLs, the value of a
    ``SECRET_NAME=value`` assignment)."""
    text = _SECRET_VALUE.sub(REDACTED, text)
    text = _ASSIGNMENT.sub(_scrub_assignment, text)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def secret_overrides(overrides) -> list[str]:
    """The secret-named keys that ``key=value`` overrides set (``+a.b.WANDB_API_KEY=...`` -> WANDB_API_KEY)."""
    names = []
    for ov in overrides or []:
        key = str(ov).split("=", 1)[0].lstrip("+").strip()
        last = key.rsplit(".", 1)[-1]
        if "=" in str(ov) and is_secret_name(last):
            names.append(last)
    return names


def is_secret_name(name: str) -> bool:
    n = str(name)
    if n.lower().endswith("_env") or n.lower().endswith("_envs"):
        return False
    return bool(_SECRET_NAME.search(n))


def scrub(obj: Any) -> Any:
    """A deep copy of a config-like structure with secrets replaced by ``***``."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if is_secret_name(k) and isinstance(v, str) and v:
                out[k] = REDACTED
            else:
                out[k] = scrub(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return scrub_text(obj)
    return obj


def scrub_env(env: dict[str, str] | None) -> dict[str, str]:
    """Environment overrides safe to store: secret-named variables are dropped, values scrubbed."""
    return {k: scrub_text(str(v)) for k, v in (env or {}).items() if not is_secret_name(k)}
