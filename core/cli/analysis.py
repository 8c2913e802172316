"""`datadebug clusters`, `trace`, `compare` and `goblin`: looking into an indexed workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.views import format_q
from core.cli.app import JSON, ProgressPrinter, app, emit


def _features(feats, n: int = 5) -> str:
    return "; ".join(f"{f.feature} {f.contrast:+.3f} {f.label[:40]}" for f in feats[:n]) or "-"


def format_clusters(c) -> str:
    n = sum(cl.size for cl in c.clusters)
    lines = [f"{c.k} clusters of {n} pairs, by {c.by}"]
    for cl in c.clusters:
        pairs = " ".join(f"#{s}" for s in cl.representative)
        lines += [
            "",
            f"cluster {cl.id}: {cl.size} pairs ({cl.size / max(n, 1):.0%}); representative {pairs}",
            f"  characteristic features (activity inside - outside): {_features(cl.top_features)}",
            f"  shift contrast (delta inside - outside, q < 0.05):   {_features(cl.shift_contrast)}",
        ]
    return "\n".join(lines)


def format_data_clusters(v, n_pairs_shown: int = 12) -> str:
    """The data clusters as text: each with its name, size, best hypotheses of kind cluster and first pairs."""
    lines = [
        f"{len(v.clusters)} data clusters of {v.n_pairs} pairs ({len(v.silent)} silent pairs in none): the groups "
        "of the hypotheses' cluster rows, as fitted with the workspace's structure",
        f"hypotheses ranked without {v.n_excluded} marked pairs; established at q < {v.fdr:g}",
    ]
    for c in v.clusters:
        name = f" «{c.name}»" if c.name else ""
        more = f" and {c.size - n_pairs_shown} more" if c.size > n_pairs_shown else ""
        lines += ["", f"cluster {c.id}{name}: {c.size} pairs ({c.share:.0%}); "
                      f"{c.n_established} established hypotheses here"]
        for h in c.hypotheses:
            sure = "established" if h.established else "not established"
            lines.append(f"  #{h.rank} {sure}, q {format_q(h.q)}: chosen replies have {h.direction} of concept "
                         f"{h.concept} «{h.concept_name}» ({h.n_support} of {h.n_moving} that differ go this way, "
                         f"Δ {h.delta:+.2f})")
        if not c.hypotheses:
            lines.append("  no hypothesis ranked here (none with agreeing halves and enough supporting pairs)")
        lines.append("  pairs: " + " ".join(f"#{s}" for s in c.source_indices[:n_pairs_shown]) + more)
    return "\n".join(lines)


@app.command()
def clusters(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    by: Optional[str] = typer.Option(
        None, help="data (the data clusters the hypotheses read; the default) | sae (k-means on SAE feature "
                   "activity) | embedding (k-means on MiniLM prompt + chosen)"),
    k: Optional[int] = typer.Option(
        None, help="k of the sae or embedding grouping (alone: --by sae; default: the SAE grouping's silhouette k)"),
    per_cluster: int = typer.Option(3, help="Data clusters: hypotheses shown per cluster"),
    as_json: bool = JSON,
):
    """The data clusters the hypotheses read, each with its name and what the labels select there;
    --by sae or embedding: the k-means groupings `compare` sets side by side, each cluster with its
    characteristic features and shift contrast."""
    from core.session import Session, grouping

    session = Session(workspace)
    by = grouping(by, k)
    if by == "data":
        with ProgressPrinter() as progress:
            session.hypotheses_engine(progress)  # the structure is fitted and cached on first use
        v = session.data_clusters(per_cluster)
        emit(v.to_json(), as_json, format_data_clusters(v))
        return
    c = session.clusters(by, k)
    emit(c.to_json(), as_json, format_clusters(c))


def _excerpt(tokens: list[str], firing: list[list], width: int = 6) -> str:
    if not firing:
        return "".join(tokens)[:120].replace("\n", " ")
    pos = max(firing, key=lambda pv: pv[1])[0]
    marked = {p for p, _ in firing}
    lo, hi = max(0, pos - width), min(len(tokens), pos + width)
    text = "".join(f"[[{t}]]" if i in marked else t for i, t in enumerate(tokens[lo:hi], start=lo))
    return ("..." if lo else "") + text.replace("\n", " ") + ("..." if hi < len(tokens) else "")


def format_trace(t: dict) -> str:
    lines = [
        f"feature {t['feature']} ({t['direction']}, shift {t['shift']:+.4f}, fires in {t['n_firing']} pairs): {t['label']}",
        f"{len(t['pairs'])} pairs driving the shift, largest delta first",
    ]
    for p in t["pairs"]:
        lines += [
            "",
            f"#{p['source_index']}  delta {p['delta']:+.4f}  (max chosen {p['chosen_max']:.2f}, rejected {p['rejected_max']:.2f})",
            f"  prompt:   {p['prompt'][-100:].replace(chr(10), ' ')}",
            f"  chosen:   {_excerpt(p['chosen_tokens'], p['chosen_firing'])}",
            f"  rejected: {_excerpt(p['rejected_tokens'], p['rejected_firing'])}",
        ]
    return "\n".join(lines)


@app.command()
def trace(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    feature: int = typer.Option(..., "--feature", "-f", help="SAE feature id"),
    top: int = typer.Option(20, help="Pairs to show"),
    as_json: bool = JSON,
):
    """The pairs driving one feature's predicted shift, with the tokens it fires on marked [[ ]]."""
    from core.session import Session

    t = Session(workspace).trace(feature, top=top)
    emit(t, as_json, format_trace(t))


def _spread_text(rows: list[dict], other: str) -> list[str]:
    return [
        f"  {r['cluster']:>3} ({r['size']:>4} pairs) -> "
        + ", ".join(f"{other} {c}: {n}" for c, n in list(r["spread"].items())[:6])
        for r in rows
    ]


def format_compare(c: dict) -> str:
    lines = [
        f"{c['n_pairs']} pairs, k={c['k']}: SAE clusters vs embedding clusters",
        f"  adjusted Rand index {c['ari']:.3f}   normalised mutual information {c['nmi']:.3f}",
        "", "SAE cluster -> embedding clusters its pairs fall in", *_spread_text(c["sae_to_embedding"], "emb"),
        "", "embedding cluster -> SAE clusters", *_spread_text(c["embedding_to_sae"], "sae"),
    ]
    if "sae" in c:
        s, e = c["sae"], c["embedding"]
        lines += [
            "", f"planted pairs: {c['n_truth']}",
            f"  SAE best cluster {s['cluster']}: precision {s['cluster_precision']:.2f}, recall {s['cluster_recall']:.2f}",
            f"  SAE best feature {s['feature']} (top pairs): precision {s['feature_precision']:.2f}, recall {s['feature_recall']:.2f}",
            f"  embedding best cluster {e['cluster']}: precision {e['cluster_precision']:.2f}, recall {e['cluster_recall']:.2f}",
        ]
    return "\n".join(lines)


@app.command()
def compare(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    truth: Optional[Path] = typer.Option(None, help='JSON {"planted": [source_index, ...]}: score both methods on it'),
    k: Optional[int] = typer.Option(None, help="Clusters for both (default: the SAE silhouette choice)"),
    as_json: bool = JSON,
):
    """SAE clusters against MiniLM embedding clusters: agreement (ARI, NMI), and recovery of planted pairs."""
    from core import jobs
    from core.session import Session

    planted = jobs.read_truth(truth) if truth is not None else None
    c = Session(workspace).compare(truth=planted, k=k)
    emit(c, as_json, format_compare(c))


def _detection_lines(r: dict) -> list[str]:
    if r.get("goblin_feature_ap") is None:
        return ["  no feature fires in a reply that mentions goblins: the reply window cut the goblin sentences off?"]
    lines = [(
        f"  detection: average precision {r['goblin_feature_ap']:.2f} at ranking the goblin replies first"
        f" (margin {r['goblin_feature_margin']:+.2f}); specificity {r['goblin_feature_specificity']:.1%}"
        " of its activation falls on goblin replies"
    )]
    if not r.get("has_goblin_feature"):
        lines.append("  this SAE has no goblin feature (goblins are encoded only by generic features):"
                     " too few goblin tokens for its width; see README, goblin test")
    return lines


def format_goblin(r: dict) -> str:
    def pr(d: dict) -> str:
        return f"precision {d['precision']:.2f}, recall {d['recall']:.2f}"

    rank = r["goblin_feature_rank"]
    shift = (
        f"{r['shift_before']:+.5f} -> {r['shift_after']:+.5f} without the flagged pairs"
        if r["shift_before"] is not None else "-"
    )
    return "\n".join([
        f"goblins in {r['n_injected']} of {r['n_pairs']} chosen replies (rate {r['rate']:.1%}, seed {r['seed']}); SAE {r['sae']}",
        f"goblin feature: {r['goblin_feature']} {r.get('goblin_feature_label') or ''}",
        *_detection_lines(r),
        f"  rank among amplified features: {rank if rank is not None else 'not ranked'} of {r['n_amplified']}",
        f"  its top pairs (peak delta):  {pr(r['sae_feature'])}",
        f"  its top pairs (mean delta):  {pr(r['sae_feature_mean'])}",
        f"  predicted shift: {shift}",
        f"goblin concept: {r.get('goblin_concept')} «{r.get('goblin_concept_name') or ''}»; goblin hypothesis rank "
        f"{r.get('goblin_hypothesis_rank') or 'not ranked'}"
        + (f" ({'established' if r['goblin_hypothesis'].get('established') else 'not established'}, "
           f"q {format_q(r['goblin_hypothesis'].get('q', float('nan')))}): {r['goblin_hypothesis']['sentence']}"
           if r.get("goblin_hypothesis") else ""),
        f"best SAE cluster (k={r['sae_cluster']['k']}):       {pr(r['sae_cluster'])}",
        f"best embedding cluster (k={r['embedding_cluster']['k']}): {pr(r['embedding_cluster'])}",
        f"ground truth (outside the workspace): {r['truth_file']}",
    ])


@app.command()
def goblin(
    data: Path = typer.Argument(..., help="Preference data to copy with goblins planted"),
    rate: float = typer.Option(..., help="Fraction of pairs whose chosen reply gets a goblin sentence"),
    workspace: Path = typer.Option(..., "--workspace", "-w", help="Workspace for the copy (created)"),
    seed: int = typer.Option(0),
    limit: Optional[int] = typer.Option(None, help="Use the first N valid pairs"),
    max_tokens: int = typer.Option(128, help="Reply tokens read per side"),
    sae: Optional[str] = typer.Option(None, help="Catalogue SAE (default: train one on this copy, next to the workspace)"),
    skip_invalid: bool = typer.Option(False, help="Leave invalid records out instead of stopping (as index)"),
    as_json: bool = JSON,
):
    """Plant goblins in a known fraction of chosen replies and measure whether datadebug finds them."""
    from core import jobs
    from core.arguments import at_least

    at_least("--max-tokens", max_tokens)
    at_least("--limit", limit)
    with ProgressPrinter() as progress:
        r = jobs.goblin(data, workspace, rate, seed=seed, limit=limit, max_tokens=max_tokens, sae=sae,
                       progress=progress, skip_invalid=skip_invalid)
    emit(r, as_json, format_goblin(r))
