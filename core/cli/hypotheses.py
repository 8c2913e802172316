"""`datadebug hypotheses` and `concepts`: what DPO will teach, where in the data, by name."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from core.cli.app import JSON, ProgressPrinter, app, emit


def format_hypotheses(rep, evidence=None) -> str:
    """The report as text; `evidence`: per hypothesis (in order) its exemplar snippets, shown under it."""
    from core.evidence import marked
    from core.hypotheses import effect_size

    lines = [
        f"{rep.n_pairs} pairs ({rep.n_excluded} marked left out, {rep.n_silent} silent); {rep.k} data clusters, "
        f"{rep.n_concepts} concepts ({rep.n_grouped} of >= 4 features), {rep.n_prompt_groups} prompt concepts",
        f"{'#':>3} {'score':>6} {'Δ':>6} {'d':>6} {'halves':>13}  hypothesis",
    ]
    for h in rep.hypotheses:
        halves = f"{h.delta_a:+.2f}/{h.delta_b:+.2f}{'✓' if h.halves_agree else ' '}"
        lines.append(f"{h.rank:>3} {h.score:>6.3f} {h.delta:>+6.2f} {effect_size(h.d):>6} {halves:>13}  {h.sentence}")
        lines.append(f"{'':>39}pairs: {' '.join(f'#{p.source_index}' for p in h.driving[:8])}")
        for snip in (evidence[h.rank - 1] if evidence else ()):
            u = "" if snip.u is None else f" u {snip.u:+.2f}"
            lines.append(f"{'':>39}{snip.side:>8} #{snip.source_index}{u}: {marked(snip)}")
    if not rep.hypotheses:
        lines.append("  (no hypothesis has both halves agreeing and enough supporting pairs)")
    return "\n".join(lines)


@app.command()
def hypotheses(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    top: int = typer.Option(20, help="Hypotheses to show"),
    kind: Optional[str] = typer.Option(None, help="cluster | prompt | concept (default: all, one ranking)"),
    exclude_marked: bool = typer.Option(True, help="Leave out pairs marked for removal (what-if)"),
    llm: bool = typer.Option(False, help="Also name the shown concepts with the configured LLM namer"),
    as_json: bool = JSON,
):
    """Ranked hypotheses: within a data cluster or prompt concept, which concept the labels select for."""
    from core.session import Session

    session = Session(workspace)
    with ProgressPrinter() as progress:
        session.hypotheses_engine(progress)  # fitted and cached on first use
    excluded = None if exclude_marked else frozenset()
    rep = (session.name_with_llm if llm else session.hypotheses)(top=top, kind=kind, excluded=excluded)
    evidence = [session.evidence(h) for h in rep.hypotheses]
    out = rep.to_json()
    for h, snips in zip(out["hypotheses"], evidence):
        h["evidence"] = [asdict(s) for s in snips]
    emit(out, as_json, format_hypotheses(rep, evidence))


def format_concepts(rows) -> str:
    lines = [f"{'concept':>7} {'feats':>5} {'shift':>8} {'95% CI':>17} {'stab':>4} {'pairs':>5}  name"]
    for r in rows:
        c = r.shift
        lines.append(f"{c.concept:>7} {c.n_features:>5} {c.shift:>+8.4f} [{c.ci[0]:>+7.4f},{c.ci[1]:>+7.4f}] "
                     f"{'✓' if c.stable else ' ':>4} {c.n_firing:>5}  {r.name}")
    return "\n".join(lines)


@app.command()
def concepts(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    top: int = typer.Option(20, help="Concepts to show"),
    grouped: bool = typer.Option(False, help="Only concepts of >= 4 features"),
    exclude_marked: bool = typer.Option(True, help="Leave out pairs marked for removal (what-if)"),
    as_json: bool = JSON,
):
    """Concepts (co-firing SAE features) by global predicted shift: mean over pairs of u."""
    from core.session import Session

    session = Session(workspace)
    with ProgressPrinter() as progress:
        session.hypotheses_engine(progress)
    rows = session.concepts(top=top, grouped_only=grouped, excluded=None if exclude_marked else frozenset()).rows
    emit([asdict(r) for r in rows], as_json, format_concepts(rows))
