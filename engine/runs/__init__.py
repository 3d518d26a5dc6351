"""Runs as processes: launching, supervising and watching training runs.

- ``launch``: the one place that turns a checked config into a supervised run;
- ``supervisor``: launch, watch, stop, resume, restart and delete runs (the store is the source of truth);
- ``monitor``: the per-run monitor process (waits for the trainer, classifies its exit);
- ``worker``: the training subprocess for every backend;
- ``procinfo``: process facts from /proc (start time, session, OOM kills).
"""
