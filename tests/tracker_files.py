"""Reading back what the tracker backends wrote, for the tests: TensorBoard event files (through
tensorboard's own reader) and W&B offline runs (the ``run-*.wandb`` transaction log, whose Python
reader wandb no longer ships: a leveldb-style log of 32 KiB blocks of length-prefixed records holding
``wandb_internal_pb2.Record`` protobufs)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path


def tensorboard_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, value, wall_time)]} of every event file under ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_offline_history(run_dir: str | Path) -> tuple[str, list[tuple[int, dict]]]:
    """(run id, [(step, {key: value})]) of an offline W&B run folder (``offline-run-*``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        buf += data[pos:pos + length]
        pos += length
        if kind == 0 and length == 0:
            continue
        if kind in (1, 4):  # FULL or LAST
            records.append(buf)
            buf = b""
    run_id, history = "", []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        which = rec.WhichOneof("record_type")
        if which == "run":
            run_id = run_id or rec.run.run_id
        elif which == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            history.append((rec.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
    return run_id or path.stem[len("run-"):], history


def wandb_history_when_written(run_dir: str | Path, n_steps: int, timeout_s: float = 60.0) -> tuple[str, list]:
    """:func:`wandb_offline_history` once ``n_steps`` history records are on disk: wandb-core may still be
    writing the log for a moment after ``run.finish()`` returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        run_id, history = wandb_offline_history(run_dir)
        if len(history) >= n_steps or time.monotonic() > deadline:
            return run_id, history
        time.sleep(0.2)
