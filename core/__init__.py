"""datadebug core: ingest preference pairs, index them through an LM + SAE, predict DPO's feature shifts.

Nothing in this package imports the TUI; the CLI (`core.cli`) and the TUI (`tui`) are front ends over it.
"""

__version__ = "0.1.0"
