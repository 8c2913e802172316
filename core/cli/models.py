"""`datadebug models ...` and `datadebug sae train`: the catalogue and the local store."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer

from core.cli.app import JSON, ProgressPrinter, emit, models_app, sae_app


@models_app.command("list")
def models_list(as_json: bool = JSON):
    """Every catalogue model and SAE, and every SAE trained here: source, ready offline, size on disk."""
    from core.session import models

    rows = models().rows
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
    from core.session import verify

    msg = verify(name)
    emit({"name": name, "ok": True, "detail": msg}, as_json, msg)


@models_app.command("rm")
def models_rm(name: str, as_json: bool = JSON):
    """Delete a model or SAE from the local store."""
    from core.session import remove

    freed = remove(name)
    emit({"name": name, "freed_bytes": freed}, as_json, f"{name}: removed ({freed / 2**20:.1f} MiB freed)")


@sae_app.command("train")
def sae_train(
    name: Optional[str] = typer.Argument(None, help="SAE recipe (default: the default model's SAE)"),
    data: list[Path] = typer.Option([], "--data", help="Preference files the corpus starts with (default: the bundled sample)"),
    device: Optional[str] = typer.Option(None),
    as_json: bool = JSON,
):
    """Train an SAE with a recipe (source = "train") for a corpus: stored as RECIPE@KEY, KEY from the
    data's sha256 (the SAE that `index` uses for that data); prints FVU, L0 and dead fraction."""
    from core.session import train_sae

    with ProgressPrinter() as progress:
        trained, q = train_sae(name, data, device=device, progress=progress)
    emit(
        {"name": trained.name, **asdict(q)}, as_json,
        f"SAE {trained.name}: FVU {q.fvu:.3f}, L0 {q.l0:.1f}, dead {q.dead_fraction:.1%} "
        f"({q.train_tokens:,} training samples, {q.train_seconds:.0f}s)",
    )
