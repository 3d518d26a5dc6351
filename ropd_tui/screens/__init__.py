"""Screens of the ropd-tui app. :mod:`ropd_tui.app` registers them by name (see ``SCREENS`` there)."""
