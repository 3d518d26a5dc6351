"""Headless commands, one module each, discovered by :func:`ropd_tui.cli.build_parser`.

Each module defines ``register(subparsers)`` that adds its parser and sets ``func`` to a handler
``(args) -> int``. Keep module-level imports light (argparse, stdlib): import heavy engine parts
inside the handler so ``ropd-tui --headless --help`` starts fast on GPU nodes.
"""
