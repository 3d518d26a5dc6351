"""Dummy trainer: writes 2 steps, fills the disk of the run folder (a file next to the log), then
fails to write step 3 and exits with code 28, as engine.runs.worker does when the disk fills up."""
import sys
from pathlib import Path

from _common import parse, write_steps

from engine.store import RunStore

if __name__ == "__main__":
    a = parse()
    store = RunStore(a.store, create=False)
    write_steps(store, a.run, 1, 2, 0.0)
    filler = Path(a.store).parent / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: closing it cannot fail on a full disk
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    try:
        write_steps(store, a.run, 3, 3, 0.0)
    except Exception as err:  # the store's write failed: the disk is full
        try:
            print(f"error: the disk filled up: {err}", file=sys.stderr, flush=True)
        except OSError:
            pass
        sys.exit(28)
    sys.exit(0)
