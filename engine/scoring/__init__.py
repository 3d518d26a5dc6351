"""Scoring: groups of answers in, rubrics, verdict matrices and rewards out.

- ``scorer``: the ROPD scorer (teacher answers, rubricator, blind verifier, weighted pass rate);
- ``criterion_stats``: how well a criterion separates teacher answers from student rollouts.
"""
