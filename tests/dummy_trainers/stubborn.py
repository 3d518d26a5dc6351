"""Dummy trainer: ignores SIGTERM and spawns two children in OTHER process groups of the same
session (like Ray workers) that ignore SIGTERM too, plus a grandchild that leaves the session with
setsid (like a daemon); writes all pids to --pids-file (the escaped one last); never ends."""
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


def escaped(read_end: int, write_end: int) -> None:
    os.close(read_end)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        child_loop()
    os.write(write_end, str(pid).encode())
    os.close(write_end)
    child_loop()


def child_loop() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        escaped(r, w)
    os.close(w)
    pids.append(pid)
    pids.append(int(os.read(r, 64).decode()))  # the grandchild in its own session
    os.close(r)
    write_steps(RunStore(a.store, create=False), a.run, 1, 1, 0.0)
    tmp = a.pids_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(" ".join(map(str, pids)))
    os.replace(tmp, a.pids_file)
    while True:
        time.sleep(1)
