"""ROPD engine: everything that runs without a UI.

Judging (templates, parsing, judge client, scorer, offline judge), the teacher index, the run store,
the supervisor and the trainers live here. Nothing in this package may import textual or rich.
"""

__version__ = "0.1.0"
