"""`datadebug models ...` and `datadebug sae train`: the catalogue and the local store."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from core.cli.app import JSON, ProgressPrinter, emit, models_app, sae_app


@models_app.command("list")
def models_list(as_json: bool = JSON):
    """Every catalogue model and SAE: source, ready offline, size on disk."""
    from core.catalog import load_catalog
    from core.store import status

    rows = status(load_catalog())
    text = "\n".join(
        f"{r.kind:5} {r.name:32} {r.source:12} {'ready' if r.ready else '-':5} {r.size_bytes / 2**20:8.1f} MiB  {r.detail}"
        for r in rows
    )
    emit([asdict(r) for r in rows], as_json, text)


@models_app.command("pull")
def models_pull(name: str, as_json: bool = JSON):
    """Make a model or SAE ready offline (downloads where a network exists)."""
    from core.session import pull

    with ProgressPrinter() as progress:
        path = pull(name, progress)
    emit({"name": name, "path": str(path)}, as_json, f"{name}: ready at {path}")


@models_app.command("verify")
def models_verify(name: str, as_json: bool = JSON):
    """Load a stored model or SAE and check it is whole."""
    from core.catalog import load_catalog
    from core.store import verify

    msg = verify(load_catalog(), name)
    emit({"name": name, "ok": True, "detail": msg}, as_json, msg)


@models_app.command("rm")
def models_rm(name: str, as_json: bool = JSON):
    """Delete a model or SAE from the local store."""
    from core.catalog import load_catalog
    from core.store import remove

    freed = remove(load_catalog(), name)
    emit({"name": name, "freed_bytes": freed}, as_json, f"{name}: removed ({freed / 2**20:.1f} MiB freed)")


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

    cat = load_catalog()
    entry = cat.sae(name, cat.model(None))
    extra = [p for d in data for p in read_pairs(d, skip_invalid=True).pairs]
    with ProgressPrinter() as progress:
        q = train_catalog_sae(entry, cat, extra_pairs=extra, device=device, progress=progress)
    emit(
        asdict(q), as_json,
        f"SAE {entry.name}: FVU {q.fvu:.3f}, L0 {q.l0:.1f}, dead {q.dead_fraction:.1%} "
        f"({q.train_tokens:,} training samples, {q.train_seconds:.0f}s)",
    )
