"""`datadebug report`: the findings as Markdown, one HTML page and PNG plots (core.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.cli.app import JSON, ProgressPrinter, app, emit


@app.command()
def report(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for report.md, report.html and "
                                       "plots/ (default: WORKSPACE-report beside the workspace)"),
    validation: Optional[Path] = typer.Option(None, help="A validation report (JSON, or a train-dpo folder) "
                                              "whose predicted-vs-actual scatter to include"),
    as_json: bool = JSON,
):
    """Write the findings as Markdown (renders on GitHub), one self-contained HTML page and PNG plots:
    the established hypotheses with chosen-vs-rejected snippets, the marks and what they change, the plan."""
    from core.session import Session

    with ProgressPrinter() as progress:
        r = Session(workspace).write_report(out, validation=validation, progress=progress)
    emit({"markdown": str(r.markdown), "html": str(r.html), "plots": [str(p) for p in r.plots]}, as_json,
         f"report -> {r.markdown}\n          {r.html}\nplots  -> {', '.join(p.name for p in r.plots) or 'none'}")
