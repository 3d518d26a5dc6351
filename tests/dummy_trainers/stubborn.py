"""Dummy trainer: ignores SIGTERM and spawns two children in OTHER process groups of the same
session (like Ray workers) that ignore SIGTERM too; writes all pids to --pids-file; never ends."""
import os
import signal
import time

from _common import parse, write_steps

from engine.store import RunStore


def child() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.setpgid(0, 0)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    a = parse()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = [os.getpid()]
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            child()
        pids.append(pid)
    write_steps(RunStore(a.store, create=False), a.run, 1, 1, 0.0)
    tmp = a.pids_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(" ".join(map(str, pids)))
    os.replace(tmp, a.pids_file)
    while True:
        time.sleep(1)
