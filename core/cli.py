"""`datadebug`: the command-line front end. Each command parses, calls core, prints (text or --json)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from core import locations

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Predictive data debugging for preference datasets: what DPO will teach your model, before you train.",
)
models_app = typer.Typer(no_args_is_help=True, help="The catalogue and the local store of models and SAEs.")
sae_app = typer.Typer(no_args_is_help=True, help="Train an SAE for a model that has none.")
app.add_typer(models_app, name="models")
app.add_typer(sae_app, name="sae")

JSON = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def _known_errors() -> tuple[type[BaseException], ...]:
    from core.catalog import CatalogError
    from core.ingest import IngestError
    from core.sae import Cancelled
    from core.store import StoreError
    from core.workspace import WorkspaceError

    return (CatalogError, IngestError, StoreError, WorkspaceError, Cancelled, KeyError, FileNotFoundError)


def _fail(exc: BaseException, as_json: bool) -> None:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if as_json:
        print(json.dumps({"error": msg, "type": type(exc).__name__}))
    else:
        print(f"datadebug: error: {msg}", file=sys.stderr)
    raise typer.Exit(2)


def _emit(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False) if as_json else text)


class _ProgressLine:
    """One self-rewriting stderr line (no dependency on a UI toolkit)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet or not sys.stderr.isatty() and os.environ.get("DATADEBUG_PROGRESS") != "1"
        self.last = 0.0

    def __call__(self, p) -> None:
        now = time.monotonic()
        if self.quiet and getattr(p, "stage", "") == "index":
            return
        if getattr(p, "stage", "") == "index":
            if now - self.last < 0.5:
                return
            eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
            line = f"indexing {p.pairs_done}/{p.pairs_total} pairs | {p.tokens_per_s:.0f} tok/s | ETA {eta}"
            print("\r" + line.ljust(78), end="", file=sys.stderr, flush=True)
        else:
            msg = getattr(p, "message", p)
            if msg:
                print(("\n" if self.last else "") + str(msg), file=sys.stderr, flush=True)
        self.last = now


# -- index / shifts ---------------------------------------------------------------------------------


@app.command()
def index(
    data: Path = typer.Argument(..., help="Preference data: .jsonl, .jsonl.gz, .json or .parquet"),
    workspace: Path = typer.Option(..., "--workspace", "-w", help="Workspace folder (created if new)"),
    model: Optional[str] = typer.Option(None, help="Model name from the catalogue (default: the embedded one)"),
    sae: Optional[str] = typer.Option(None, help="SAE name from the catalogue (default: the model's)"),
    limit: Optional[int] = typer.Option(None, help="Index at most this many valid pairs"),
    max_tokens: int = typer.Option(256, help="Reply tokens read per side (the prompt keeps its last 2x)"),
    format: Optional[str] = typer.Option(None, help="standard | conversational | hh-rlhf | sharegpt (default: detect)"),
    skip_invalid: bool = typer.Option(False, help="Skip invalid records and report them instead of stopping"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda when available)"),
    batch_tokens: int = typer.Option(4096, help="Padded tokens per forward batch (memory vs speed)"),
    chunk_pairs: int = typer.Option(64, help="Pairs per write; a killed run resumes from the last write"),
    as_json: bool = JSON,
):
    """Run every pair through the LM + SAE and store per-reply features in a workspace (resumable)."""
    from core.index import IndexSettings, index_dataset

    try:
        r = index_dataset(
            data, workspace, model=model, sae=sae, limit=limit, format=format, skip_invalid=skip_invalid,
            settings=IndexSettings(max_tokens=max_tokens, batch_tokens=batch_tokens, chunk_pairs=chunk_pairs),
            device=device, progress=_ProgressLine(as_json),
        )
    except _known_errors() as exc:
        _fail(exc, as_json)
    print(file=sys.stderr)
    text = (
        f"workspace {r.workspace}: {r.n_pairs} pairs ({r.n_new} new this run, "
        f"{r.n_skipped_invalid} invalid skipped); {r.tokens:,} tokens in {r.seconds:.1f}s "
        f"({r.tokens_per_s:.0f} tok/s)"
    )
    if r.issues and not as_json:
        text += "\n" + "\n".join(f"  {i}" for i in r.issues[:20])
        if len(r.issues) > 20:
            text += f"\n  ... and {len(r.issues) - 20} more"
    _emit({**asdict(r), "tokens_per_s": r.tokens_per_s}, as_json, text)


def format_shifts(report) -> str:
    lines = [f"{report.n_pairs} pairs, model {report.model}, SAE {report.sae} (layer {report.layer})"]
    for title, feats in (("AMPLIFIED (fires more in chosen)", report.amplified), ("SUPPRESSED (fires more in rejected)", report.suppressed)):
        lines += ["", title, f"{'feature':>8} {'shift':>9} {'d':>6} {'95% CI':>19} {'stab':>5} {'fire':>5}  label / top pairs"]
        for f in feats:
            pairs = " ".join(f"#{p.source_index}({p.delta:+.3f})" for p in f.top_pairs[:4])
            lines.append(
                f"{f.feature:>8} {f.shift:>+9.4f} {f.effect_size:>+6.2f} [{f.ci[0]:>+8.4f},{f.ci[1]:>+8.4f}] "
                f"{f.stability:>5.2f} {f.n_firing:>5}  {f.label[:60]}"
            )
            lines.append(f"{'':>58}pairs: {pairs}")
        if not feats:
            lines.append("  (none with a CI clear of zero)")
    return "\n".join(lines)


@app.command()
def shifts(
    workspace: Path = typer.Option(..., "--workspace", "-w"),
    top: int = typer.Option(20, help="Features per direction"),
    exclude_marked: bool = typer.Option(True, help="Leave out pairs marked for removal (what-if)"),
    as_json: bool = JSON,
):
    """Predicted amplified and suppressed features, each with its CI, stability and top pairs."""
    from core.shifts import Analysis
    from core.workspace import Workspace

    try:
        ws = Workspace(workspace)
        excluded = None
        if exclude_marked:
            from core.marks import marked_set

            excluded = marked_set(ws)
        report = Analysis(ws).report(top=top, excluded=excluded)
    except _known_errors() as exc:
        _fail(exc, as_json)
    _emit(report.to_json(), as_json, format_shifts(report))


@app.command()
def demo(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Default: the cache dir's demo workspace"),
    top: int = typer.Option(10),
    tui: bool = typer.Option(True, help="Then open datadebug-tui on the workspace (only on a terminal)"),
    as_json: bool = JSON,
):
    """The main job on the embedded default: index the bundled sample, print predicted shifts, open the TUI."""
    from core.index import index_dataset
    from core.shifts import Analysis
    from core.workspace import Workspace

    workspace = workspace or locations.cache_dir() / "workspaces" / "demo"
    try:
        index_dataset(locations.sample_data_file(), workspace, progress=_ProgressLine(as_json))
        report = Analysis(Workspace(workspace)).report(top=top)
    except _known_errors() as exc:
        _fail(exc, as_json)
    print(file=sys.stderr)
    _emit(report.to_json(), as_json, format_shifts(report) + f"\n\nworkspace: {workspace}")
    if tui and not as_json and sys.stdin.isatty() and sys.stdout.isatty():
        # exec, not import: core never imports the UI.
        exe = Path(sys.executable).parent / "datadebug-tui"
        if exe.exists():
            os.execv(str(exe), [str(exe), str(workspace)])


# -- models -----------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(as_json: bool = JSON):
    """Every catalogue model and SAE: source, ready offline, size on disk."""
    from core.catalog import load_catalog
    from core.store import status

    try:
        rows = status(load_catalog())
    except _known_errors() as exc:
        _fail(exc, as_json)
    text = "\n".join(
        f"{r.kind:5} {r.name:32} {r.source:12} {'ready' if r.ready else '-':5} {r.size_bytes / 2**20:8.1f} MiB  {r.detail}"
        for r in rows
    )
    _emit([asdict(r) for r in rows], as_json, text)


@models_app.command("pull")
def models_pull(name: str, as_json: bool = JSON):
    """Make a model or SAE ready offline (downloads where a network exists)."""
    from core.catalog import load_catalog
    from core.store import pull_model, pull_sae

    try:
        cat = load_catalog()
        if name in cat.models:
            path = pull_model(cat.models[name], _ProgressLine(as_json))
        elif name in cat.saes:
            path = pull_sae(cat.saes[name], _ProgressLine(as_json))
        else:
            raise KeyError(f"unknown model or SAE {name!r}")
    except _known_errors() as exc:
        _fail(exc, as_json)
    _emit({"name": name, "path": str(path)}, as_json, f"{name}: ready at {path}")


@models_app.command("verify")
def models_verify(name: str, as_json: bool = JSON):
    """Load a stored model or SAE and check it is whole."""
    from core.catalog import load_catalog
    from core.store import verify

    try:
        msg = verify(load_catalog(), name)
    except _known_errors() as exc:
        _fail(exc, as_json)
    _emit({"name": name, "ok": True, "detail": msg}, as_json, msg)


@models_app.command("rm")
def models_rm(name: str, as_json: bool = JSON):
    """Delete a model or SAE from the local store."""
    from core.catalog import load_catalog
    from core.store import remove

    try:
        freed = remove(load_catalog(), name)
    except _known_errors() as exc:
        _fail(exc, as_json)
    _emit({"name": name, "freed_bytes": freed}, as_json, f"{name}: removed ({freed / 2**20:.1f} MiB freed)")


@sae_app.command("train")
def sae_train(
    name: Optional[str] = typer.Argument(None, help="SAE entry (default: the default model's SAE)"),
    data: list[Path] = typer.Option([], "--data", help="Extra preference files for the corpus (besides the bundled sample)"),
    device: Optional[str] = typer.Option(None),
    as_json: bool = JSON,
):
    """Train a catalogue SAE (source = "train") on the default corpus; prints FVU, L0 and dead fraction."""
    from core.catalog import load_catalog
    from core.ingest import read_pairs
    from core.sae_train import train_catalog_sae

    try:
        cat = load_catalog()
        entry = cat.sae(name, cat.model(None))
        extra = [p for d in data for p in read_pairs(d, skip_invalid=True).pairs]
        q = train_catalog_sae(entry, cat, extra_pairs=extra, device=device, progress=_ProgressLine(as_json))
    except _known_errors() as exc:
        _fail(exc, as_json)
    _emit(
        asdict(q), as_json,
        f"SAE {entry.name}: FVU {q.fvu:.3f}, L0 {q.l0:.1f}, dead {q.dead_fraction:.1%} "
        f"({q.train_tokens:,} training samples, {q.train_seconds:.0f}s)",
    )


# Each area's commands live in their own module and register on `app` when imported.
from core import cli_analysis, cli_train, cli_triage  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":
    # Run as `python -m core.cli`, this file is `__main__`, a second copy beside `core.cli`; the area
    # modules register their commands on `core.cli.app`, so run that one.
    from core.cli import main as _main

    _main()
