"""`datadebug mark`, `unmark`, `undo`, `redo`, `marks` and `export`: triage and the cleaned dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.cli.app import JSON, app, emit
from core.errors import UsageError


def _selection(ws, pairs: list[int], feature: Optional[int], top: int, cluster: Optional[int], by: str, k: Optional[int]):
    """The source indices a mark/unmark command names, and a description of the scope."""
    chosen, scopes, features = set(pairs), [], []
    if pairs:
        scopes.append("pair" if len(pairs) == 1 else "pairs")
    if feature is not None or cluster is not None:
        from core.shifts import Analysis

        analysis = Analysis(ws)
        if feature is not None:
            tops = analysis.top_pairs_of(feature, top)
            chosen |= {p.source_index for p in tops}
            scopes.append(f"feature {feature} top {top}")
            features.append(feature)
        if cluster is not None:
            from core.clusters import cluster_pairs

            clustering = cluster_pairs(analysis, by=by, k=k)
            match = [c for c in clustering.clusters if c.id == cluster]
            if not match:
                raise UsageError(f"no {by} cluster {cluster} (there are {len(clustering.clusters)})")
            chosen |= set(match[0].source_indices)
            scopes.append(f"cluster {by}:{cluster}")
    if not chosen:
        raise UsageError("name pairs (source indices), --feature F [--top N] or --cluster C")
    return sorted(chosen), ", ".join(scopes), features


@app.command()
def mark(
    pairs: list[int] = typer.Argument(None, help="Source indices of pairs to mark"),
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    feature: Optional[int] = typer.Option(None, help="Mark the top pairs driving this feature's shift"),
    top: int = typer.Option(20, help="With --feature: how many of its top pairs"),
    cluster: Optional[int] = typer.Option(None, help="Mark a whole cluster"),
    by: str = typer.Option("sae", help="With --cluster: sae | embedding"),
    k: Optional[int] = typer.Option(None, help="With --cluster: the k used for clustering"),
    reason: str = typer.Option("", help="Why (kept in the manifest)"),
    as_json: bool = JSON,
):
    """Mark pairs for removal (persisted in the workspace, with who/when/why)."""
    from core.marks import Marks
    from core.workspace import Workspace

    ws = Workspace(workspace)
    sel, scope, feats = _selection(ws, pairs or [], feature, top, cluster, by, k)
    marks = Marks(ws)
    op = marks.mark(sel, reason=reason, scope=scope, features=feats)
    emit({"op_id": op.op_id, "marked": list(op.source_indices), "n_marked": len(marks.marked)}, as_json,
          f"marked {len(op.source_indices)} pairs ({scope}); {len(marks.marked)} marked in all")


@app.command()
def unmark(
    pairs: list[int] = typer.Argument(None, help="Source indices of pairs to keep again"),
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    feature: Optional[int] = typer.Option(None),
    top: int = typer.Option(20),
    cluster: Optional[int] = typer.Option(None),
    by: str = typer.Option("sae"),
    k: Optional[int] = typer.Option(None),
    all_: bool = typer.Option(False, "--all", help="Unmark every marked pair"),
    reason: str = typer.Option(""),
    as_json: bool = JSON,
):
    """Keep pairs again."""
    from core.marks import Marks
    from core.workspace import Workspace

    ws = Workspace(workspace)
    marks = Marks(ws)
    if all_:
        sel, scope = sorted(marks.marked), "all"
    else:
        sel, scope, _ = _selection(ws, pairs or [], feature, top, cluster, by, k)
    op = marks.unmark(sel, reason=reason, scope=scope)
    emit({"op_id": op.op_id, "unmarked": list(op.source_indices), "n_marked": len(marks.marked)}, as_json,
          f"unmarked {len(op.source_indices)} pairs; {len(marks.marked)} marked in all")


def _step(workspace: Path, action: str, as_json: bool) -> None:
    from core.marks import Marks
    from core.workspace import Workspace

    marks = Marks(Workspace(workspace))
    op = marks.undo() if action == "undo" else marks.redo()
    done, key = {"undo": ("undid", "undone"), "redo": ("redid", "redone")}[action]
    emit({key: op.op_id if op else None, "n_marked": len(marks.marked)}, as_json,
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
    from core.marks import Marks
    from core.workspace import Workspace

    marks = Marks(Workspace(workspace))
    data = marks.to_json()
    text = "\n".join(
        f"#{m['source_index']:<6} {m['scope']:<24} {m['who']:<20} {m['when']}  {m['reason']}" for m in data["marked"]
    ) or "no pairs marked"
    emit(data, as_json, text)


@app.command()
def export(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    out: Path = typer.Option(..., "--out", "-o", help="Cleaned dataset (same format as the source)"),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists (never the source)"),
    as_json: bool = JSON,
):
    """Write the source records that are not marked (byte-identical) plus OUT.removed.jsonl."""
    from core.export import export_clean
    from core.workspace import Workspace

    r = export_clean(Workspace(workspace), out, overwrite=overwrite)
    text = f"kept {r.n_kept} of {r.n_records} records -> {r.out}\nremoved {r.n_removed} -> {r.manifest}"
    if r.n_stale_removed:
        text += f"\n(cleaned up {r.n_stale_removed} temporary files of an interrupted export)"
    emit({"out": str(r.out), "manifest": str(r.manifest), "n_kept": r.n_kept, "n_removed": r.n_removed,
          "n_records": r.n_records, "n_stale_removed": r.n_stale_removed}, as_json, text)
