"""ropd-tui: the Textual app and the headless CLI over the ROPD engine."""
