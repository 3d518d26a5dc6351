"""Starting our own Python modules in subprocesses so that the working directory cannot shadow them.

``python -m engine.runs.worker`` puts the working directory first on ``sys.path``: a user's own
``engine/`` (or ``ropd_tui/``) folder, common in ML repositories, would be imported instead of ours.
Python 3.10 has no ``-P`` / ``PYTHONSAFEPATH``, and ``-I`` would also drop ``PYTHONPATH``. So every
Python subprocess we start (run monitor, training worker, verl's ``main_ppo``, ``--serve`` tabs) runs
this file by path instead::

    python /.../engine/runs/entrypoint.py ROOTS MODULE ARGS...

Running a file puts that file's folder first on ``sys.path``, not the working directory. Before
anything else is imported, the bootstrap below replaces that folder with ``ROOTS`` (the folders
that hold *our* ``engine`` and ``ropd_tui``, as imported by the parent process), keeps the rest of
``sys.path`` (``PYTHONPATH``, site-packages) and appends the working directory last, so a user's
own modules there (a custom checker, say) still import but can never shadow ours. ``MODULE`` then
runs as ``__main__``, exactly as ``-m`` would run it.

Only the standard library may be imported at module level here: this file also runs as a script.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
OUR_PACKAGES = ("engine", "ropd_tui")


def package_roots() -> list[str]:
    """The folders holding our top-level packages (one for a normal or an editable install)."""
    import importlib.util

    roots: list[str] = []
    for name in OUR_PACKAGES:
        mod = sys.modules.get(name)
        origin = getattr(mod, "__file__", None) if mod is not None else None
        if origin is None:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
        if origin:
            root = os.path.dirname(os.path.dirname(os.path.abspath(origin)))
            if root not in roots:
                roots.append(root)
    return roots


def module_argv(module: str, *args: object) -> list[str]:
    """The command that runs ``module`` as ``__main__`` with our packages first on ``sys.path``."""
    return [sys.executable, os.path.abspath(__file__), os.pathsep.join(package_roots()), module,
            *(str(a) for a in args)]


def is_entrypoint_argv(argv: list[str]) -> bool:
    """Whether ``argv`` (a recorded command) starts one of our modules through this file."""
    return len(argv) >= 4 and os.path.basename(argv[1]) == "entrypoint.py" and \
        os.path.basename(os.path.dirname(argv[1])) == "runs"


def _bootstrap(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.stderr.write("usage: entrypoint.py ROOTS MODULE [ARGS...]\n")
        raise SystemExit(2)
    roots = [r for r in argv[1].split(os.pathsep) if r]
    module = argv[2]
    cwd = os.getcwd()
    rest = [p for p in sys.path
            if os.path.abspath(p or os.curdir) not in {_HERE, cwd} and p not in roots]
    sys.path[:] = roots + rest + [cwd]
    sys.argv = [module] + argv[3:]  # runpy sets argv[0] to the module's file, as -m does
    import runpy

    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _bootstrap(sys.argv)


def shadowing_folders(directory: str | os.PathLike | None = None) -> list[str]:
    """Our package names that ``directory`` (default: the working directory) holds a *different*
    package or module for: what ``python -m``, ``import engine`` in a user's script started there, or
    verl's Ray workers (Ray puts the driver's working directory first on their ``sys.path``) would
    import instead of ours."""
    base = os.path.abspath(os.fspath(directory) if directory is not None else os.getcwd())
    ours = {name: root for root in package_roots() for name in OUR_PACKAGES
            if os.path.isdir(os.path.join(root, name))}
    found = []
    for name in OUR_PACKAGES:
        for candidate in (os.path.join(base, name), os.path.join(base, name + ".py")):
            if not os.path.exists(candidate):
                continue
            mine = os.path.join(ours[name], name) if name in ours else None
            if mine is None or os.path.realpath(candidate) != os.path.realpath(mine):
                found.append(name)
                break
    return found
