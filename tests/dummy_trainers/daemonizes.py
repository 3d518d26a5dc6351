"""Dummy trainer that leaves a double-forked daemon behind (new session, parent gone, ignores
SIGTERM), writes the daemon's pid to --pids-file and exits 0 (like a worker pool that outlives its driver)."""
import os
import signal
import sys
import time

from _common import parse, write_steps

from engine.store import RunStore

if __name__ == "__main__":
    a = parse()
    r, w = os.pipe()
    if os.fork() == 0:  # intermediate: start the daemon, report its pid, vanish
        os.close(r)
        pid = os.fork()
        if pid == 0:
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(1)
        os.write(w, str(pid).encode())
        os._exit(0)
    os.close(w)
    daemon = int(os.read(r, 64).decode())
    with open(a.pids_file, "w") as f:
        f.write(str(daemon))
    write_steps(RunStore(a.store, create=False), a.run, 1, 1, 0.0)
    sys.exit(0)
