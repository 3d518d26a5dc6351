"""Dummy trainer that records its own end (like engine.runs.worker does) before exiting with code 4."""
import sys
import time

from _common import parse, write_steps

from engine.store import RunStore

if __name__ == "__main__":
    a = parse()
    store = RunStore(a.store, create=False)
    write_steps(store, a.run, 1, 1, 0.0)
    store.transition(a.run, ("starting", "running", "stalled"), status="failed",
                     cause="scoring failure rate 0.75 over the threshold 0.5", ended_at=time.time())
    print("recorded my own end", file=sys.stderr, flush=True)
    sys.exit(4)
