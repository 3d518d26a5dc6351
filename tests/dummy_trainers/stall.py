"""Dummy trainer: writes one step, then stops logging (sleeps) until it is stopped."""
import time

from _common import parse, write_steps

from engine.store import RunStore

if __name__ == "__main__":
    a = parse()
    write_steps(RunStore(a.store, create=False), a.run, 1, 1, 0.0)
    print("stuck", flush=True)
    while True:
        time.sleep(0.2)
