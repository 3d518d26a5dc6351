"""Dummy trainer: writes --steps steps (continuing after the last one with --resume) and exits 0."""
import sys

from _common import main_steps

if __name__ == "__main__":
    sys.exit(main_steps())
