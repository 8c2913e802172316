"""`datadebug`: the command-line front end. Each command parses, calls core, prints (text or --json).

`core.cli.app` holds the Typer app and what commands share; each area's commands live in their own
module and register on that app when imported here.
"""

from __future__ import annotations

# The order here is the order `datadebug --help` lists them in.
from core.cli import indexing, hypotheses, analysis, triage, reporting, training, models  # noqa: F401, I001  (registers the commands)
from core.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
