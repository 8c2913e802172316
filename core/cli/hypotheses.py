"""`datadebug hypotheses` and `concepts`: what DPO will teach, where in the data, by name."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from core.views import format_q
from core.cli.app import JSON, ProgressPrinter, app, emit


def format_hypotheses(rep, concepts=None, evidence=None) -> str:
    """The landing view as text: the established hypotheses, a divider, the rest with their q; when
    nothing is established, what n pairs could have shown and the established global concept shifts
    (`concepts`, a core.views.ConceptsView of them, when given). `evidence`: per hypothesis (in the
    report's order) its exemplar snippets (core.views.Snippet), shown under it."""
    from core.views import marked

    lines = [
        f"{rep.n_pairs} pairs ({rep.n_excluded} marked left out, {rep.n_silent} silent); {rep.k} data clusters, "
        f"{rep.n_concepts} concepts ({rep.n_grouped} of >= 4 features), {rep.n_prompt_groups} prompt concepts",
        f"{rep.n_established} established at q < {rep.fdr:g} of {rep.n_tested:,} (group, concept) cells tested "
        "(Benjamini–Hochberg; each against labels swapped at random, clusters and prompt concepts also against "
        "membership drawn at random)",
        f"{'#':>3} {'q':>7} {'moving':>7} {'Δ':>6} {'halves':>13}  hypothesis",
    ]
    divided = False
    for i, h in enumerate(rep.hypotheses):
        if not h.established and not divided:
            lines.append(f"--- not established at this data size (q >= {rep.fdr:g}) ---")
            divided = True
        halves = f"{h.delta_a:+.2f}/{h.delta_b:+.2f}{'✓' if h.halves_agree else ' '}"
        moving = f"{h.n_support}/{h.n_moving}"
        lines.append(f"{h.rank:>3} {format_q(h.q):>7} {moving:>7} {h.delta:>+6.2f} {halves:>13}  {h.sentence}")
        lines.append(f"{'':>41}pairs: {' '.join(f'#{p.source_index}' for p in h.driving[:8])}")
        for snip in (evidence[i] if evidence else ()):
            u = "" if snip.u is None else f" u {snip.u:+.2f}"
            lines.append(f"{'':>41}{snip.side:>8} #{snip.source_index}{u}: {marked(snip)}")
    if not rep.hypotheses:
        lines.append("  (no hypothesis has both halves agreeing and enough supporting pairs)")
    if rep.n_established == 0:
        lines.append(
            f"nothing is established at this data size: with {rep.n_tested:,} cells tested, a finding needs about "
            f"{rep.detectable_pairs} pairs of one group all moving its concept the same way"
        )
        if concepts is not None:
            lines.append(f"established global concept shifts (datadebug concepts): {concepts.n_established} of "
                         f"{concepts.n_tested:,} concepts tested")
            lines += [f"  concept {r.shift.concept} «{r.name}»: mean u {r.shift.shift:+.4f}, q {format_q(r.shift.q)}"
                      for r in concepts.rows]
            if not concepts.rows:
                lines.append(f"  none: the smallest global shift {concepts.n_pairs} pairs could establish is "
                             f"|mean u| ≈ {concepts.detectable_d:.2f} SD")
    return "\n".join(lines)


@app.command()
def hypotheses(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    top: int = typer.Option(20, help="Hypotheses to show"),
    kind: Optional[str] = typer.Option(None, help="cluster | prompt | concept (default: all, one ranking)"),
    exclude_marked: bool = typer.Option(True, help="Leave out pairs marked for removal (what-if)"),
    llm: bool = typer.Option(False, help="Also name the shown concepts with the configured LLM namer"),
    fdr: float = typer.Option(0.1, help="Rows are established at q below this (Benjamini–Hochberg)"),
    as_json: bool = JSON,
):
    """Ranked hypotheses: within a data cluster or prompt concept, which concept the labels select
    for; the established ones (q < --fdr) first."""
    from core.session import Session

    session = Session(workspace)
    if llm:
        session.require_namer()  # before fitting anything
    with ProgressPrinter() as progress:
        session.hypotheses_engine(progress)  # fitted and cached on first use
    excluded = None if exclude_marked else frozenset()
    if llm:
        session.name_with_llm(top=top, kind=kind, excluded=excluded)
    land = session.landing(top=top, kind=kind, excluded=excluded, fdr=fdr)
    evidence = [session.evidence(h) for h in land.hypotheses.hypotheses]
    out = land.hypotheses.to_json()
    for h, snips in zip(out["hypotheses"], evidence):
        h["evidence"] = [asdict(s) for s in snips]
    emit({**out, "established_concepts": [asdict(r) for r in land.concepts.rows]},
         as_json, format_hypotheses(land.hypotheses, land.concepts, evidence))


def format_concepts(view) -> str:
    """Concepts as text: the established global shifts, a divider, the rest with their q."""
    lines = [
        f"{view.n_established} established at q < {view.fdr:g} of {view.n_tested:,} concepts tested "
        f"(Benjamini–Hochberg, against labels swapped at random; {view.n_pairs} pairs)",
        f"{'concept':>7} {'feats':>5} {'shift':>8} {'95% CI':>17} {'q':>7} {'stab':>4} {'pairs':>5}  name",
    ]
    divided = False
    for r in view.rows:
        c = r.shift
        if not c.established and not divided:
            lines.append(f"--- not established at this data size (q >= {view.fdr:g}) ---")
            divided = True
        lines.append(f"{c.concept:>7} {c.n_features:>5} {c.shift:>+8.4f} [{c.ci[0]:>+7.4f},{c.ci[1]:>+7.4f}] "
                     f"{format_q(c.q):>7} {'✓' if c.stable else ' ':>4} {c.n_firing:>5}  {r.name}")
    if view.n_established == 0:
        lines.append(f"nothing is established: the smallest global shift {view.n_pairs} pairs could establish is "
                     f"|mean u| ≈ {view.detectable_d:.2f} SD")
    return "\n".join(lines)


@app.command()
def concepts(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    top: int = typer.Option(20, help="Concepts to show"),
    grouped: bool = typer.Option(False, help="Only concepts of >= 4 features"),
    exclude_marked: bool = typer.Option(True, help="Leave out pairs marked for removal (what-if)"),
    fdr: float = typer.Option(0.1, help="Shifts are established at q below this (Benjamini–Hochberg)"),
    as_json: bool = JSON,
):
    """Concepts (co-firing SAE features) by global predicted shift (mean over pairs of u); the
    established ones (q < --fdr) first."""
    from core.session import Session

    session = Session(workspace)
    with ProgressPrinter() as progress:
        session.hypotheses_engine(progress)
    view = session.concepts(top=top, grouped_only=grouped, excluded=None if exclude_marked else frozenset(), fdr=fdr)
    emit([asdict(r) for r in view.rows], as_json, format_concepts(view))
