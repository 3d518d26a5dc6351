"""Dummy trainer: writes step 1, then reports (through the real heartbeat) that step 2 is scoring
group 1 of 4, with that progress 10 minutes old, and waits until it is stopped."""
import time

from _common import parse, write_steps

from engine.runs.heartbeat import Heartbeat
from engine.store import RunStore

if __name__ == "__main__":
    a = parse()
    store = RunStore(a.store, create=False)
    write_steps(store, a.run, 1, 1, 0.0)
    hb = Heartbeat(store, a.run, total_steps=3, clock=lambda: time.time() - 600)
    hb.phase("score", step=2, total=4, unit="groups")
    hb.advance(1)
    hb._flush()
    print("busy", flush=True)
    while True:
        time.sleep(0.2)
