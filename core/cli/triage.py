"""`datadebug mark`, `unmark`, `undo`, `redo`, `marks` and `export`: triage and the cleaned dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.cli.app import JSON, app, emit


@app.command()
def mark(
    pairs: list[int] = typer.Argument(None, help="Source indices of pairs to mark"),
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    feature: Optional[int] = typer.Option(None, help="Mark the top pairs driving this feature's shift"),
    top: int = typer.Option(20, help="With --feature: how many of its top pairs"),
    cluster: Optional[int] = typer.Option(None, help="Mark a whole cluster"),
    by: Optional[str] = typer.Option(
        None, help="With --cluster: data (the data clusters `clusters` lists; the default) | sae | embedding"),
    k: Optional[int] = typer.Option(
        None, help="With --cluster: k of the sae or embedding grouping (alone: --by sae; default: its silhouette k)"),
    reason: str = typer.Option("", help="Why (kept in the manifest)"),
    as_json: bool = JSON,
):
    """Mark pairs for removal (persisted in the workspace, with who/when/why). Pairs marked already
    keep their reason unless --reason gives a new one."""
    from core.session import Session

    session = Session(workspace)
    sel = session.select(pairs or [], feature, top, cluster, by, k)
    _changed(session, session.mark(sel, reason=reason), "marked", f" ({sel.scope})", as_json)


def _changed(session, op, done: str, scope: str, as_json: bool) -> None:
    """Print what a mark or unmark did (`op` None: nothing needed changing)."""
    pairs = list(op.source_indices) if op else []
    n_marked = len(session.marks.marked)
    emit({"op_id": op.op_id if op else None, done: pairs, "n_marked": n_marked}, as_json,
         f"{done} {len(pairs)} pairs{scope}; {n_marked} marked in all")


@app.command()
def unmark(
    pairs: list[int] = typer.Argument(None, help="Source indices of pairs to keep again"),
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    feature: Optional[int] = typer.Option(None),
    top: int = typer.Option(20),
    cluster: Optional[int] = typer.Option(None),
    by: Optional[str] = typer.Option(None),
    k: Optional[int] = typer.Option(None),
    all_: bool = typer.Option(False, "--all", help="Unmark every marked pair"),
    reason: str = typer.Option(""),
    as_json: bool = JSON,
):
    """Keep pairs again."""
    from core.session import Session
    from core.views import Selection

    session = Session(workspace)
    if all_:
        sel = Selection(tuple(sorted(session.marks.marked)), "all")
    else:
        sel = session.select(pairs or [], feature, top, cluster, by, k)
    _changed(session, session.unmark(sel, reason=reason), "unmarked", "", as_json)


def _step(workspace: Path, action: str, as_json: bool) -> None:
    from core.session import Session

    session = Session(workspace)
    op = session.undo() if action == "undo" else session.redo()
    done, key = {"undo": ("undid", "undone"), "redo": ("redid", "redone")}[action]
    emit({key: op.op_id if op else None, "n_marked": len(session.marks.marked)}, as_json,
          f"{done} op {op.op_id} ({op.action} {len(op.source_indices)} pairs)" if op else f"nothing to {action}")


@app.command()
def undo(workspace: Path = typer.Option(..., "--workspace", "-w"), as_json: bool = JSON):
    """Revert the latest mark/unmark."""
    _step(workspace, "undo", as_json)


@app.command()
def redo(workspace: Path = typer.Option(..., "--workspace", "-w"), as_json: bool = JSON):
    """Re-apply the latest undone mark/unmark."""
    _step(workspace, "redo", as_json)


@app.command("marks")
def marks_cmd(workspace: Path = typer.Option(..., "--workspace", "-w"), as_json: bool = JSON):
    """The pairs marked for removal, with reason, scope, who and when."""
    from core.session import Session

    data = Session(workspace).marks.to_json()
    text = "\n".join(
        f"#{m['source_index']:<6} {m['scope']:<24} {m['who']:<20} {m['when']}  {m['reason']}" for m in data["marked"]
    ) or "no pairs marked"
    emit(data, as_json, text)


@app.command()
def export(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    out: Path = typer.Option(..., "--out", "-o", help="Cleaned dataset (same format as the source; a folder for a Hugging Face dataset)"),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists (never the source)"),
    as_json: bool = JSON,
):
    """Write the source records that are not marked (byte-identical) plus OUT.removed.jsonl. A Hugging
    Face dataset is written as a folder of its own form (save_to_disk, or the same shards)."""
    from core.session import Session

    r = Session(workspace).export(out, overwrite=overwrite)
    text = f"kept {r.n_kept} of {r.n_records} records -> {r.out}\nremoved {r.n_removed} -> {r.manifest}"
    if r.n_stale_removed:
        text += f"\n(cleaned up {r.n_stale_removed} temporary files of an interrupted export)"
    emit({"out": str(r.out), "manifest": str(r.manifest), "n_kept": r.n_kept, "n_removed": r.n_removed,
          "n_records": r.n_records, "n_stale_removed": r.n_stale_removed}, as_json, text)

