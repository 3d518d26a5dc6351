"""Process facts from /proc (Linux): start time, session, parent, state; OOM-kill counters.

A pid alone does not identify a process (pids are reused), so the store records (pid, start time in
clock ticks since boot, from /proc/<pid>/stat field 22) and :func:`is_alive` checks both.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks after boot


def stat(pid: int) -> ProcStat | None:
    """Parsed /proc/<pid>/stat, or None when the process does not exist."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    # comm is in parentheses and may itself contain spaces and parentheses: split at the last ')'.
    head, _, rest = raw.rpartition(")")
    comm = head.split("(", 1)[1] if "(" in head else ""
    f = rest.split()
    try:
        return ProcStat(pid=pid, comm=comm, state=f[0], ppid=int(f[1]), pgid=int(f[2]), sid=int(f[3]),
                        start=int(f[19]))
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    st = stat(pid)
    return st.start if st else None


def is_alive(pid: int | None, start: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when given, started at ``start`` (not a reused pid)."""
    if not pid:
        return False
    st = stat(pid)
    if st is None or st.state in ("Z", "X", "x"):
        return False
    return start is None or st.start == start


def all_pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def session_members(sid: int) -> list[ProcStat]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    out = []
    for pid in all_pids():
        st = stat(pid)
        if st is not None and st.sid == sid and st.state not in ("Z", "X", "x"):
            out.append(st)
    return out


def descendants(root: int) -> list[ProcStat]:
    """Live descendants of ``root`` (catches children that called setsid and left the session)."""
    stats = [s for s in (stat(p) for p in all_pids()) if s is not None]
    children: dict[int, list[ProcStat]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s)
    out, todo = [], [root]
    while todo:
        for ch in children.get(todo.pop(), []):
            if ch.state not in ("Z", "X", "x"):
                out.append(ch)
            todo.append(ch.pid)
    return out


def signal_pids(pids: list[int], sig: int) -> int:
    """Send ``sig`` to each pid; returns how many were signalled."""
    n = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            n += 1
        except (ProcessLookupError, PermissionError):
            pass
    return n


def signal_name(sig: int | None) -> str:
    if sig is None:
        return ""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def cgroup_memory_events(pid: int | str = "self") -> Path | None:
    """The memory.events file of the process's cgroup (v2), when readable."""
    try:
        lines = (PROC / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0":
            path = Path("/sys/fs/cgroup") / parts[2].lstrip("/") / "memory.events"
            return path if path.exists() else None
    return None


def oom_kill_count(events_file: Path | None) -> int | None:
    """The ``oom_kill`` counter of a cgroup's memory.events (None when unavailable)."""
    if events_file is None:
        return None
    try:
        for line in events_file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def dmesg_mentions_oom(pid: int) -> bool:
    """Whether the kernel log (if readable without privileges) reports an OOM kill of ``pid``."""
    for path in ("/dev/kmsg",):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            needle = f"Killed process {pid} ".encode()
            while True:
                try:
                    rec = os.read(fd, 8192)
                except BlockingIOError:
                    break
                except OSError:
                    continue  # EPIPE: record overwritten while reading
                if not rec:
                    break
                if needle in rec:  # the kernel logs "Killed process N" only for OOM kills
                    return True
        finally:
            os.close(fd)
    return False
