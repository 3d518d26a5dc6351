"""A checker worker process (started by :mod:`engine.tasks.checker_pool`, one per lane).

``python engine/runs/entrypoint.py ROOTS engine.tasks.checker_worker SPEC TIMEOUT_S``

Protocol: JSON lines. The worker first writes ``{"ready": true}`` (or ``{"fatal": message}`` and exits 2
when the checker cannot be loaded), then answers each request ``{"id", "answer", "ground_truth"}`` with
``{"id", "correct", "checker"}`` in order. A check that runs past TIMEOUT_S is interrupted by SIGALRM
and answered ``correct: false`` with ``checker: "<name>:timeout"``; one that raises is answered
``correct: null`` with ``"<name>:error"``. The pool kills a worker that does not answer at all (a
computation that never returns to the interpreter) and starts another.

The protocol goes over a private copy of stdout: whatever a user's checker prints lands on stderr.
SIGINT is ignored (Ctrl-C in a terminal reaches the whole process group; the parent decides); the
worker ends when its stdin closes.
"""

from __future__ import annotations

import json
import os
import signal
import sys


class _Timeout(BaseException):
    """Raised by SIGALRM inside a check. A BaseException: math-verify swallows every Exception."""


def _on_alarm(_signum, _frame):
    raise _Timeout()


def serve(spec: str, timeout_s: float, stdin, out) -> int:
    from engine.errors import UserError
    from engine.tasks.checkers import resolve_checker

    def send(obj) -> None:
        out.write((json.dumps(obj) + "\n").encode("ascii"))
        out.flush()

    try:
        check = resolve_checker(spec)
    except UserError as err:
        send({"fatal": str(err)})
        return 2
    except Exception as err:  # noqa: BLE001 - reported to the parent, which names the checker
        send({"fatal": f"{type(err).__name__}: {err}"})
        return 2
    signal.signal(signal.SIGALRM, _on_alarm)
    send({"ready": True})
    for line in stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                res = check(req["answer"], req["ground_truth"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            reply = {"id": req["id"], "correct": res.correct, "checker": res.checker}
        except _Timeout:
            reply = {"id": req["id"], "correct": False, "checker": f"{spec}:timeout"}
        except Exception as err:  # noqa: BLE001 - one bad answer (or a buggy user checker) answers "unknown"
            reply = {"id": req["id"], "correct": None, "checker": f"{spec}:error",
                     "error": f"{type(err).__name__}: {err}"[:500]}
        send(reply)
    return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec, timeout_s = argv[0], float(argv[1])
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints of a user checker go to stderr
    return serve(spec, timeout_s, sys.stdin.buffer, proto)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
