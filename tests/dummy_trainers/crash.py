"""Dummy trainer: writes one step, then crashes with a traceback on stderr (exit code 1)."""
from _common import parse, write_steps

from engine.store import RunStore

if __name__ == "__main__":
    a = parse()
    write_steps(RunStore(a.store, create=False), a.run, 1, 1, 0.0)
    raise RuntimeError("boom: the dummy trainer crashed on purpose")
