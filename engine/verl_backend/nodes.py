"""Several nodes, one run folder: what every node of the Ray cluster must see, checked before verl starts.

On a multi-node cluster verl's TaskRunner (which reads the training/validation parquet and opens the
``file`` logger's metrics file without creating its folder) may be placed on any node, and every FSDP rank
writes its checkpoint shards under ``trainer.default_local_dir`` on its own node; resume reads them back.
So the run's verl folder (data, ``attempt-N/metrics.jsonl``, checkpoints: ``<verl.shared_dir>/<run name>``,
or the run folder next to the store when ``verl.shared_dir`` is unset) must be the same directory on every
node. The run store itself stays on the launch node (SQLite must not live on a network file system); the
gatherer, which writes scored groups, is pinned there.

:func:`require_shared_folder` writes a token file into that folder, runs a zero-CPU probe task pinned to
every alive node, and raises a :class:`~engine.errors.ConfigError` naming each node that cannot read the
token, cannot write there, lacks ``verl.model_path`` or cannot import ROPD's reward manager. One node: no
check (nothing to share).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

TOKEN_FILE = ".ropd-node-probe"
REWARD_MODULE = "engine.verl_backend.reward_manager"


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _local_path(path: str | None) -> str | None:
    """``path`` when it names a local file system path (not a hub id or URL), else None."""
    if not path or "://" in path:
        return None
    return str(Path(path).expanduser()) if path.startswith(("/", ".", "~")) else None


def probe_nodes(folder: str | os.PathLike, token: str, *, model_path: str | None = None,
                nodes: list[dict[str, Any]] | None = None, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """What each node sees: ``{"node_id", "host", "sees_folder", "can_write", "has_model", "imports_ropd",
    "error"}``. Needs ``ray.init`` done."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe(folder: str, token_file: str, token: str, model_path: str | None, module: str) -> dict[str, Any]:
        # defined here so Ray ships it by value: it must run even where this checkout is not importable
        import importlib.util
        import os
        import socket

        out: dict[str, Any] = {"host": socket.gethostname()}
        try:
            with open(os.path.join(folder, token_file), encoding="utf-8") as fp:
                out["sees_folder"] = fp.read().strip() == token
        except OSError:
            out["sees_folder"] = False
        try:
            probe_file = os.path.join(folder, f".ropd-write-probe-{out['host']}-{os.getpid()}")
            with open(probe_file, "w", encoding="utf-8") as fp:
                fp.write("ok")
            os.remove(probe_file)
            out["can_write"] = True
        except OSError:
            out["can_write"] = False
        out["has_model"] = model_path is None or os.path.exists(model_path)
        try:
            out["imports_ropd"] = importlib.util.find_spec(module) is not None
        except ImportError:
            out["imports_ropd"] = False
        return out

    task = ray.remote(num_cpus=0, max_retries=0)(probe)
    nodes = alive_nodes() if nodes is None else nodes
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)).remote(
        str(folder), TOKEN_FILE, token, _local_path(model_path), REWARD_MODULE) for n in nodes]
    results = []
    for n, ref in zip(nodes, refs):
        base = {"node_id": n["NodeID"], "host": n.get("NodeManagerHostname") or n.get("NodeManagerAddress")}
        try:
            results.append({**base, **ray.get(ref, timeout=timeout_s), "error": None})
        except Exception as e:  # noqa: BLE001 - a node that cannot run the probe is a finding too
            results.append({**base, "sees_folder": False, "can_write": False, "has_model": False,
                            "imports_ropd": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
    return results


def check_probe_results(results: list[dict[str, Any]], folder: str | os.PathLike, model_path: str | None) -> None:
    """ConfigError naming every node that lacks what a multi-node run needs."""
    problems = []
    for r in results:
        where = f"node {r.get('host')} ({str(r.get('node_id'))[:12]})"
        if r.get("error"):
            problems.append(f"{where}: the probe did not run ({r['error']})")
            continue
        if not r.get("sees_folder"):
            problems.append(f"{where} does not see {folder} (the token written there on the launch node is missing)")
        elif not r.get("can_write"):
            problems.append(f"{where} cannot write to {folder}")
        if not r.get("has_model"):
            problems.append(f"{where} has no {model_path} (verl.model_path)")
        if not r.get("imports_ropd"):
            problems.append(f"{where} cannot import {REWARD_MODULE} (ROPD's reward manager, loaded by verl's reward "
                            "workers there)")
    if problems:
        raise ConfigError(
            "this Ray cluster has several nodes, and not all of them have what the run needs:\n  - "
            + "\n  - ".join(problems),
            hint=f"verl's TaskRunner may run on any node and reads the data and writes metrics under {folder}, and every "
                 "node writes its checkpoint shards there: set verl.shared_dir to a folder mounted at the same path on "
                 "every node (NFS, Lustre, ...; the run store stays on this node), put verl.model_path at the same "
                 "path on every node, and install this checkout and environment at the same path on every node")


def require_shared_folder(folder: str | os.PathLike, *, model_path: str | None = None,
                          timeout_s: float = 120.0) -> int:
    """Check a multi-node cluster (see the module docstring); returns the number of alive nodes."""
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return len(nodes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    token_path = folder / TOKEN_FILE
    token_path.write_text(token + "\n", encoding="utf-8")
    try:
        results = probe_nodes(folder, token, model_path=model_path, nodes=nodes, timeout_s=timeout_s)
    finally:
        token_path.unlink(missing_ok=True)
    check_probe_results(results, folder, model_path)
    return len(nodes)
