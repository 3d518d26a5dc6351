"""Replay: re-judge stored rollouts with another template, judge or rubric, and compare.

- ``runner``: the replay itself (spec, run, report);
- ``store``: reading stored groups and writing replays and the judge cache in the run store;
- ``metrics``: reward-quality measures (AUC against correctness, verdict flips, reward shift).
"""
