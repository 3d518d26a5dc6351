"""Reusable widgets of the ropd-tui app: curves, verdict matrix, answer panes, log viewer."""
