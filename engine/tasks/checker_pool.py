"""Running answer checks off the caller's thread and event loop, with a per-answer time limit.

:func:`checker_for` gives the process-wide :class:`CheckerPool` for a task config (one per checker and
timeout). ``math_verify`` and ``python:`` checkers run in worker processes
(:mod:`engine.tasks.checker_worker`, started through :mod:`engine.runs.entrypoint`), each fed by one
lane thread of this process:

- a check that runs past ``task.checker_timeout_s`` is interrupted inside the worker (SIGALRM) and
  answered ``correct=False`` with the checker recorded as ``<name>:timeout``;
- a worker that does not answer even then (a computation stuck outside the interpreter, a crash) is
  killed after a grace period and replaced; the answer gets the same timeout verdict, or ``:error`` if
  the worker died;
- so one pathological answer costs at most its time limit and never stalls a training step.

``rule`` and ``exact`` are cheap string rules: they run in this process (in a thread for async callers).
Results are remembered (by a digest of ground truth and answer), so teacher answers, which come back
every step, and replays are checked once.

The async API (:meth:`CheckerPool.acheck_many`) never blocks the event loop: the scorer starts a group's
checks when its answers are ready and collects them after judging, so checking overlaps the judge calls.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import hashlib
import json
import logging
import os
import queue
import select
import subprocess
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

from engine.tasks.checkers import Checked, resolve_checker, validate_checker_spec

log = logging.getLogger("ropd.checker")

IN_PROCESS = ("rule", "exact")
GRACE_S = 2.0  # past the per-answer limit before a silent worker is killed
MAX_IN_FLIGHT = 64  # requests written ahead to one worker
PIPE_BUDGET = 32768  # bytes in flight per worker: under the pipe buffer, so writes never block
STARTUP_TIMEOUT_S = 180.0  # importing SymPy on a loaded machine


def default_workers() -> int:
    """Worker processes per pool: half the CPU cores, 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class _Lane(threading.Thread):
    """One worker process and the thread that feeds it."""

    def __init__(self, pool: "CheckerPool", number: int):
        super().__init__(name=f"ropd-checker-{number}", daemon=True)
        self.pool = pool
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self._seq = 0
        self._head_since = 0.0  # when the worker could start on the oldest request in flight

    # -- the worker process ------------------------------------------------------------------------
    def _start(self) -> bool:
        from engine.runs.entrypoint import module_argv

        pool = self.pool
        argv = module_argv("engine.tasks.checker_worker", pool.spec, f"{pool.timeout_s:g}")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self._buf = b""
        line = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
        msg = _loads(line)
        if msg.get("ready"):
            pool.workers_started += 1
            return True
        self._stop()
        reason = msg.get("fatal") or ("the checker worker did not start within "
                                      f"{STARTUP_TIMEOUT_S:g} s" if line is None else "the checker worker exited")
        pool.fail(reason)
        return False

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.kill()
        except OSError:
            pass
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill that did not take
            pass

    def _read_line(self, deadline: float) -> bytes | None:
        """The next line from the worker; None past ``deadline``; b"" when the worker is gone."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    # -- answers, pipelined -------------------------------------------------------------------------
    def run(self) -> None:
        """Feed the worker: keep a few requests in flight (the worker never waits for this thread), read
        the replies in order, and time each answer from the moment the worker could start on it."""
        pool = self.pool
        unsent: collections.deque = collections.deque()  # (answer, gt, key, fut), taken from the queue
        inflight: collections.deque = collections.deque()  # (seq, size, item)
        stopping = False
        try:
            while True:
                if not unsent and not inflight:
                    if stopping:
                        return
                    item = pool._queue.get()
                    if item is None:
                        return
                    unsent.append(item)
                while not stopping and len(unsent) + len(inflight) < MAX_IN_FLIGHT:
                    try:
                        item = pool._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    unsent.append(item)
                if pool.broken is not None or (self.proc is None and not self._start()):
                    for item in list(unsent) + [entry[2] for entry in inflight]:
                        self._finish(item, Checked(None, f"{pool.spec}:error"))
                    unsent.clear()
                    inflight.clear()
                    continue
                self._send(unsent, inflight)
                self._receive(unsent, inflight)
        finally:
            for item in list(unsent) + [entry[2] for entry in inflight]:
                item[3].cancel()
            self._stop()

    def _finish(self, item, res: Checked) -> None:
        answer, ground_truth, key, fut = item
        self.pool._remember(key, res)
        if not fut.done():
            fut.set_result(res)

    def _send(self, unsent: collections.deque, inflight: collections.deque) -> None:
        """Write requests while the bytes in flight stay under the pipe's buffer (so a write never blocks
        on a worker that is busy with an answer), or one request when nothing is in flight."""
        while unsent:
            answer, ground_truth, key, fut = unsent[0]
            if fut.cancelled():
                unsent.popleft()
                continue
            self._seq += 1
            data = (json.dumps({"id": self._seq, "answer": answer, "ground_truth": ground_truth}) + "\n").encode("ascii")
            if inflight and sum(e[1] for e in inflight) + len(data) > PIPE_BUDGET:
                self._seq -= 1
                return
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._seq -= 1
                return  # the worker is gone: _receive sees it and starts over
            unsent.popleft()
            if not inflight:
                self._head_since = time.monotonic()
            inflight.append((self._seq, len(data), (answer, ground_truth, key, fut)))

    def _receive(self, unsent: collections.deque, inflight: collections.deque) -> None:
        """One reply (or a verdict on the answer at the head when the worker fails it)."""
        pool = self.pool
        if not inflight:
            if unsent:  # nothing could be sent: the worker is gone; the next round starts another
                self._stop()
            return
        seq, _, head = inflight[0]
        line = self._read_line(self._head_since + pool.timeout_s + GRACE_S)
        if line is not None and line != b"":
            reply = _loads(line)
            if reply.get("id") == seq:
                inflight.popleft()
                self._head_since = time.monotonic()
                if reply.get("error"):
                    pool.note_error(reply["error"])
                correct = reply.get("correct")
                self._finish(head, Checked(None if correct is None else bool(correct),
                                           str(reply.get("checker") or pool.spec)))
                return
            line = b""  # out of step: treat it as a dead worker
        if line is None:  # stuck where SIGALRM cannot reach: kill it, the rest go to a fresh worker
            log.warning("checker %s: an answer took longer than %.3g s; its worker was replaced", pool.spec,
                        pool.timeout_s)
            verdict = Checked(False, f"{pool.spec}:timeout")
        else:
            log.warning("checker %s: the worker died on an answer (exit code %s); starting another", pool.spec,
                        self.proc.poll() if self.proc is not None else "?")
            verdict = Checked(None, f"{pool.spec}:error")
        self._stop()
        inflight.popleft()
        self._finish(head, verdict)
        unsent.extendleft(reversed([entry[2] for entry in inflight]))  # resent to the next worker, in order
        inflight.clear()


def _loads(line: bytes | None) -> dict[str, Any]:
    if not line:
        return {}
    try:
        obj = json.loads(line)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


class CheckerPool:
    """Checks answers against ground truths with one checker (see the module doc)."""

    def __init__(self, spec: str, *, timeout_s: float = 5.0, workers: int | None = None, cache_size: int = 65536):
        self.spec = validate_checker_spec(spec)
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = float(timeout_s)
        self.workers = max(1, int(workers or default_workers()))
        self.in_process = self.spec in IN_PROCESS
        self._fn = resolve_checker(self.spec) if self.in_process else None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lanes: list[_Lane] = []
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, Checked] = OrderedDict()
        self._cache_size = cache_size
        self.broken: str | None = None
        self.workers_started = 0
        self._errors_logged = 0
        self._closed = False

    # -- bookkeeping -------------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """The checker cannot run at all (its worker does not start): every answer is 'unknown' from now on."""
        if self.broken is None:
            self.broken = reason
            log.error("checker %s is unavailable, correctness is not recorded: %s", self.spec, reason)

    def note_error(self, error: str) -> None:
        if self._errors_logged < 5:
            self._errors_logged += 1
            log.warning("checker %s raised on an answer: %s", self.spec, error)

    @staticmethod
    def _key(answer: str, ground_truth: str) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(str(ground_truth).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        h.update(str(answer).encode("utf-8", "surrogatepass"))
        return h.digest()

    def _cached(self, key: bytes) -> Checked | None:
        with self._lock:
            res = self._cache.get(key)
            if res is not None:
                self._cache.move_to_end(key)
            return res

    def _remember(self, key: bytes, res: Checked) -> None:
        if res.checker.endswith(":error"):
            return  # a dead worker is no verdict on the answer: check it again next time
        with self._lock:
            self._cache[key] = res
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _check_here(self, answer: str, ground_truth: str) -> Checked:
        try:
            return self._fn(answer, ground_truth)
        except Exception as err:  # noqa: BLE001 - correctness is advisory
            self.note_error(f"{type(err).__name__}: {err}")
            return Checked(None, f"{self.spec}:error")

    # -- checking ----------------------------------------------------------------------------------
    def submit(self, answer: str, ground_truth: str) -> concurrent.futures.Future:
        """A future of the :class:`Checked` verdict of ``answer`` against ``ground_truth``."""
        answer, ground_truth = str(answer or ""), str(ground_truth)
        key = self._key(answer, ground_truth)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        hit = self._cached(key)
        if hit is not None:
            fut.set_result(hit)
            return fut
        if self.in_process:
            res = self._check_here(answer, ground_truth)
            self._remember(key, res)
            fut.set_result(res)
            return fut
        if self._closed:
            raise RuntimeError(f"checker pool {self.spec} is closed")
        self._queue.put((answer, ground_truth, key, fut))
        with self._lock:
            if len(self._lanes) < self.workers:
                lane = _Lane(self, len(self._lanes) + 1)
                self._lanes.append(lane)
                lane.start()
        return fut

    def check(self, answer: str, ground_truth: str) -> Checked:
        return self.submit(answer, ground_truth).result()

    def check_many(self, items: Sequence[tuple[str, str]]) -> list[Checked]:
        """Verdicts for ``(answer, ground_truth)`` pairs, in order (blocks the calling thread)."""
        futs = [self.submit(a, g) for a, g in items]
        return [f.result() for f in futs]

    async def acheck_many(self, items: Sequence[tuple[str, str]]) -> list[Checked]:
        """:meth:`check_many` for coroutines: the event loop keeps running while answers are checked."""
        items = list(items)
        if not items:
            return []
        if self.in_process:
            return await asyncio.to_thread(self.check_many, items)
        futs = [asyncio.wrap_future(self.submit(a, g)) for a, g in items]
        return list(await asyncio.gather(*futs))

    def close(self) -> None:
        """Stop the lanes and kill their workers (queued answers still waiting are cancelled)."""
        self._closed = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[3].cancel()
        for _ in self._lanes:
            self._queue.put(None)
        for lane in self._lanes:
            lane.join(timeout=5)
        self._lanes = []


_pools: dict[tuple[str, float], CheckerPool] = {}
_pools_lock = threading.Lock()


def checker_for(task: Any) -> CheckerPool:
    """The process-wide pool for a :class:`~engine.config.TaskConfig` (``checker``, ``checker_timeout_s``)."""
    return get_pool(getattr(task, "checker", "math_verify"), getattr(task, "checker_timeout_s", 5.0))


def get_pool(spec: str, timeout_s: float = 5.0) -> CheckerPool:
    key = (validate_checker_spec(spec), float(timeout_s))
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None or pool._closed:
            pool = _pools[key] = CheckerPool(key[0], timeout_s=key[1])
        return pool


@atexit.register
def close_all() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        try:
            p.close()
        except Exception:  # pragma: no cover - exiting anyway
            pass
