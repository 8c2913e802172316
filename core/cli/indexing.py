"""`datadebug index`, `shifts` and `demo`: build a workspace and read its predicted shifts."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from core.cli.app import JSON, ProgressPrinter, app, emit
from core.views import data_files, record_formats


@app.command()
def index(
    data: Path = typer.Argument(
        ..., help=f"Preference data: {data_files()}; a Hugging Face dataset saved with "
        "save_to_disk; a folder of Parquet or JSON lines shards; or a hub id (owner/name)"),
    workspace: Path = typer.Option(..., "--workspace", "-w", help="Workspace folder (created if new)"),
    model: Optional[str] = typer.Option(None, help="Model name from the catalogue (default: the embedded one)"),
    sae: Optional[str] = typer.Option(None, help="SAE name from the catalogue (default: the model's)"),
    limit: Optional[int] = typer.Option(None, help="Index at most this many valid pairs"),
    max_tokens: Optional[int] = typer.Option(
        None, help="Cap on reply tokens read per side (the prompt then keeps its last 2x); "
        "default: whole replies, up to the model's context (at most 8,192 tokens per prompt + reply)",
    ),
    format: Optional[str] = typer.Option(None, help=f"{' | '.join(record_formats())} (default: detect)"),
    skip_invalid: bool = typer.Option(False, help="Skip invalid records and report them instead of stopping"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda when available)"),
    batch_tokens: int = typer.Option(4096, help="Padded tokens per forward batch (memory vs speed)"),
    chunk_pairs: int = typer.Option(64, help="Pairs per write; a killed run resumes from the last write"),
    train_sae: bool = typer.Option(
        True, help="A trained SAE recipe (the embedded model's) gets an SAE trained on this dataset when it "
        "has not seen it (the time it takes is printed first); --no-train-sae uses the newest one in the store",
    ),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Shard the pairs over a Ray cluster, one worker per GPU (CPU workers when it has none): "
        "auto (the cluster `ray start` made here, else a new local one), local, or HOST:PORT",
    ),
    ray_workers: Optional[int] = typer.Option(None, help="With --ray: workers (default: one per GPU)"),
    split: Optional[str] = typer.Option(None, help="Hugging Face dataset: the split to index (needed when it has several)"),
    config: Optional[str] = typer.Option(None, help="Hub dataset: its configuration (subset)"),
    as_json: bool = JSON,
):
    """Run every pair through the LM + SAE and store per-reply features in a workspace (resumable)."""
    from core import session
    from core.arguments import at_least, device_name

    # Bad input fails here, in well under a second, before torch and the model load.
    for option, value in (("--max-tokens", max_tokens), ("--batch-tokens", batch_tokens),
                          ("--chunk-pairs", chunk_pairs), ("--limit", limit), ("--ray-workers", ray_workers)):
        at_least(option, value)
    device_name(device)
    ingest = session.read_input(data, split, config, format=format, skip_invalid=skip_invalid, limit=limit)
    with ProgressPrinter() as progress:
        r = session.index(
            data, workspace, model=model, sae=sae, limit=limit, format=format, skip_invalid=skip_invalid,
            max_tokens=max_tokens, batch_tokens=batch_tokens, chunk_pairs=chunk_pairs,
            device=device, progress=progress, train_sae=train_sae, ray=ray, ray_workers=ray_workers,
            split=split, config=config,
        )
    text = (
        f"workspace {r.workspace}: {r.n_pairs} pairs ({r.n_new} new this run, "
        f"{r.n_skipped_invalid} invalid skipped, {ingest.identical} with identical replies skipped); "
        f"{r.tokens:,} tokens in {r.seconds:.1f}s ({r.tokens_per_s:.0f} tok/s)"
    )
    if r.reads():
        text += f"; {r.reads()}"
    if r.n_replies_cut or r.n_prompts_cut:
        text += (
            f"\nwarning: {r.n_replies_cut} replies cut at {r.max_tokens} tokens (or to fit the context), "
            f"{r.n_prompts_cut} prompts read without their start (their last tokens kept)"
        )
    if r.issues:
        text += "\n" + "\n".join(f"  {i}" for i in r.issues[:20])
        if len(r.issues) > 20:
            text += f"\n  ... and {len(r.issues) - 20} more"
    emit({**asdict(r), "tokens_per_s": r.tokens_per_s, "n_identical": ingest.identical}, as_json, text)


def format_shifts(report) -> str:
    """The shifts report as a person reads it: one block per direction, the established first."""
    from core.views import format_q

    lines = [f"{report.n_pairs} pairs, model {report.model}, SAE {report.sae} (layer {report.layer})"]
    if report.n_excluded:
        lines[0] += f"; {report.n_excluded} marked pairs left out"
    lines.append(f"{report.n_established} features established at q < {report.fdr:g} of {report.n_tested:,} tested "
                 "(Benjamini–Hochberg, against labels swapped at random)")
    for title, feats in (("AMPLIFIED (fires more in chosen)", report.amplified),
                         ("SUPPRESSED (fires more in rejected)", report.suppressed)):
        lines += ["", title, f"{'feature':>8} {'shift':>9} {'d':>6} {'95% CI':>19} {'q':>7} {'fire':>5}  label / top pairs"]
        divided = False
        for f in feats:
            if not f.established and not divided:
                lines.append(f"  --- not established at this data size (q >= {report.fdr:g}) ---")
                divided = True
            pairs = " ".join(f"#{p.source_index}({p.delta:+.3f})" for p in f.top_pairs[:4])
            lines.append(
                f"{f.feature:>8} {f.shift:>+9.4f} {f.effect_size:>+6.2f} [{f.ci[0]:>+8.4f},{f.ci[1]:>+8.4f}] "
                f"{format_q(f.q):>7} {f.n_firing:>5}  {' '.join(f.label.split())[:60]}"
            )
            lines.append(f"{'':>60}pairs: {pairs}")
        if not feats:
            lines.append("  (none established, and none with a CI clear of zero)")
    return "\n".join(lines)


@app.command()
def shifts(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    top: int = typer.Option(20, help="Features per direction"),
    exclude_marked: bool = typer.Option(True, help="Leave out pairs marked for removal (what-if)"),
    fdr: float = typer.Option(0.1, help="Shifts are established at q below this (Benjamini–Hochberg)"),
    as_json: bool = JSON,
):
    """Predicted amplified and suppressed features, each with its CI, q and top pairs; the
    established ones (q < --fdr) first."""
    from core.session import Session

    report = Session(workspace).report(top=top, without_marked=exclude_marked, fdr=fdr)
    emit(report.to_json(), as_json, format_shifts(report))


@app.command()
def demo(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Default: the cache dir's demo workspace"),
    top: int = typer.Option(10),
    tui: bool = typer.Option(True, help="Then open datadebug-tui on the workspace (only on a terminal)"),
    as_json: bool = JSON,
):
    """The main job on the embedded default: index the bundled sample, print the ranked hypotheses
    (what DPO will teach, where, by name) and the per-feature shifts, open the TUI."""
    from core.cli.hypotheses import format_hypotheses
    from core.session import Session, demo_paths, index

    default_workspace, sample = demo_paths()
    workspace = workspace or default_workspace
    with ProgressPrinter() as progress:
        index(sample, workspace, progress=progress)
        session = Session(workspace)
        session.hypotheses_engine(progress)
    land, report = session.landing(top=top), session.report(top=top)
    emit({**report.to_json(), "hypotheses": land.hypotheses.to_json(), "workspace": str(workspace)}, as_json,
         "hypotheses (datadebug hypotheses -w WS):\n" + format_hypotheses(land.hypotheses, land.concepts)
         + "\n\nper-feature shifts (datadebug shifts -w WS):\n" + format_shifts(report)
         + f"\n\nworkspace: {workspace}")
    if tui and not as_json and sys.stdin.isatty() and sys.stdout.isatty():
        # exec, not import: core never imports the UI.
        exe = Path(sys.executable).parent / "datadebug-tui"
        if exe.exists():
            os.execv(str(exe), [str(exe), str(workspace)])
