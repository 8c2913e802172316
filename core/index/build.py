"""Indexing: preference pairs -> LM residuals at the SAE layer -> SAE features per reply -> LanceDB.

The job is a function that reports through a `progress` callback and stops when its `cancel` event is
set; it writes in chunks of whole pairs, so a killed run resumes where it stopped.

Three stages overlap: a thread tokenises pairs ahead of the model, the calling thread runs
`core.index.readout.read_batch` (forward, SAE encode and summaries on the model's device), and a writer
thread embeds texts with MiniLM and appends finished chunks to LanceDB. When the dataset's SAE was
trained just before, the pairs its corpus read skip the forward: they are encoded from the residuals
that read kept (core.model.residuals), deleted once the index completes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core import __version__
from core.model.catalog import Catalog, ModelEntry, SAEEntry, load_catalog
from core.errors import Cancelled, StoreError, WorkspaceError
from core.data.hfdata import identity, open_source
from core.data.ingest import IngestResult, read_pairs
from core.progress import Progress, ProgressFn, reporter
from core.model.dataset_sae import choose_sae
from core.model.dataset_sae import prepare as prepare_sae
from core.model.residuals import Keep, ResidualStore, ResidualWriter, discard, residuals_dir
from core.index.readout import IndexSettings, read_batch
from core.model.store import sae_dir, sae_sha256
from core.index.stages import Prefetch, Writer, features_complete, rows_table, write_feature_table
from core.index.summary import summarise_prompt, summarise_reply  # noqa: F401  (the reference summaries)
from core.data.workspace import SCHEMA_VERSION, Workspace, file_sha256, source_fingerprint

__all__ = ["IndexResult", "IndexSettings", "index_dataset", "read_batch", "rows_table", "summarise_reply"]


@dataclass
class IndexResult:
    workspace: str
    n_pairs: int  # pairs in the workspace now
    n_new: int  # pairs indexed by this run
    n_skipped_invalid: int
    issues: list[str] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    max_tokens: int = 0  # reply tokens read at most per side (the model's context with whole replies)
    n_replies_cut: int = 0  # replies of this run's pairs cut at max_tokens (or to fit the context)
    n_prompts_cut: int = 0  # prompts of this run's pairs whose head was dropped (their tail is read)
    n_from_residuals: int = 0  # pairs of this run encoded from residuals kept by the SAE's training (no second read)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def reads(self) -> str:
        """How the model read this run's pairs, for a person (both front ends show it): the pairs encoded
        from the residuals the SAE's training read, when any; '' otherwise."""
        if not self.n_from_residuals:
            return ""
        return f"{self.n_from_residuals:,} of {self.n_new:,} pairs encoded from the residuals read for the SAE's training"


def resolve(catalog: Catalog, model: str | None, sae: str | None) -> tuple[ModelEntry, SAEEntry]:
    """The model and SAE entries to use (catalogue defaults where None)."""
    m = catalog.model(model)
    return m, catalog.sae(sae, m)


def model_context(entry: ModelEntry, progress: ProgressFn | None = None) -> int:
    """Tokens per row (prompt + reply) read from `entry`'s model: its max_position_embeddings,
    at most `core.model.lm.MAX_CONTEXT`. Pulls the model into the store if needed."""
    from transformers import AutoConfig

    from core.model.lm import MAX_CONTEXT
    from core.model.store import pull_model

    cfg = AutoConfig.from_pretrained(pull_model(entry, progress))
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg.get_text_config(), "max_position_embeddings", None)
    return min(int(n or MAX_CONTEXT), MAX_CONTEXT)


def _check_meta(ws: Workspace, meta: dict) -> None:
    old = ws.meta()
    if not old:
        return
    keys = ("dataset_sha256", "model", "sae", "sae_sha256", "layer", "max_tokens", "context_tokens", "schema_version")
    for key in keys:
        if key in old and key in meta and old[key] != meta[key]:
            hint = f" (pass --max-tokens {old[key]} to resume it)" if key == "max_tokens" else ""
            raise WorkspaceError(
                f"workspace {ws.path} was indexed with {key}={old[key]!r}, not {meta[key]!r}{hint}; "
                "use a new workspace (or delete this one) to index with other settings"
            )


def index_dataset(
    data: Path | str,
    workspace: Path | str,
    *,
    model: str | None = None,
    sae: str | None = None,
    limit: int | None = None,
    format: str | None = None,
    skip_invalid: bool = False,
    settings: IndexSettings = IndexSettings(),
    device: str | None = None,
    catalog: Catalog | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    train_sae: bool = True,
    ray: str | None = None,
    ray_workers: int | None = None,
    split: str | None = None,
    config: str | None = None,
) -> IndexResult:
    """Index `data` into `workspace`, resuming any earlier run of the same settings.

    Replies are read whole (up to the model's context, see `core.model.lm.fit_pair`) unless
    `settings.max_tokens` caps them; the result counts the replies cut and the prompts whose head
    was dropped. A trained ("train" recipe) SAE is the dataset's own, trained first when the recipe
    has not seen the dataset (`train_sae` False: the newest SAE of the recipe in the store); see
    core.model.dataset_sae. Writes the feature-label table when it is missing, even when no pair is left.
    `data` is a file, or a Hugging Face dataset (a hub id, a save_to_disk folder, a folder of shards;
    `split` and `config` pick from it, see core.data.hfdata); the workspace meta records its identity.
    `ray` (an address, "auto" or "local") shards the pairs over Ray workers instead (core.index.distributed).
    When the SAE is trained first, the pairs its corpus reads are read as this index reads them and
    their residuals kept (core.model.residuals), so they are encoded without a second read (one
    process only: Ray workers read every pair); the kept residuals are deleted once the index completes.
    Progress: stage "sae" / "load" / "labels" messages, then stage "index" with `done` = pairs saved
    in the workspace (not merely read), `rate` in tokens/s and an ETA.
    Raises IngestError for bad input (unless skip_invalid), WorkspaceError for a workspace indexed
    with other settings or that another index run is writing to (Workspace.index_lock), StoreError
    when the model/SAE cannot be made ready, Cancelled when `cancel` is set (after saving every pair
    read so far: a rerun resumes from there). UsageError for an unknown device or a missing GPU.
    """
    from core.model.sae import read_sae_config

    from core.model.lm import pick_device

    if device is not None:
        pick_device(device)  # an unknown device or a missing GPU, refused before any work
    if ray is not None:
        from core.index.distributed import check_address

        check_address(ray)  # an address nothing answers at, refused in seconds, not after minutes
    progress = reporter(progress)
    catalog = catalog or load_catalog()
    source = open_source(data, split=split, config=config)  # a Hugging Face dataset, or None: a file
    data = source or Path(data)
    m_entry = catalog.model(model)
    ingest: IngestResult = read_pairs(data, format=format, skip_invalid=skip_invalid, limit=limit)
    hf = identity(source) if source else None
    dataset_stat = None if source else data.stat()  # before hashing: a change while it is hashed reads as one
    dataset_sha256 = hf["sha256"] if hf else file_sha256(data)
    sae_choice = choose_sae(catalog, dataset_sha256, m_entry.name, sae, train=train_sae)
    s_entry = sae_choice.entry

    meta = {
        "dataset": source.location if source else str(data.resolve()),
        "dataset_sha256": dataset_sha256,
        **({"hf": hf} if hf else source_fingerprint(dataset_stat)),
        "format": ingest.format,
        "limit": limit,
        "model": m_entry.name,
        "sae": s_entry.name,
        "layer": s_entry.layer,
        "schema_version": SCHEMA_VERSION,
        "n_records": ingest.n_records,
        "issues": [str(i) for i in ingest.issues],
        "versions": {"datadebug": __version__, "torch": torch.__version__},
    }
    ws = Workspace(workspace, create=True)
    # One writer at a time: two runs appending to one Lance table corrupt it (a Rust panic).
    with ws.index_lock():
        ws.require_current()
        _check_meta(ws, meta)
        context = model_context(m_entry, progress)
        # The reply cap actually applied, so that "whole replies" and an explicit cap as large as the
        # context are the same setting, and a workspace indexed with --max-tokens 256 refuses a rerun
        # with whole replies (its pairs would be read differently).
        max_tokens = min(settings.max_tokens, context) if settings.max_tokens is not None else context
        meta.update(max_tokens=max_tokens, context_tokens=context)
        _check_meta(ws, meta)

        done = set(ws.indexed_source_indices().tolist())
        todo = [p for p in ingest.pairs if p.source_index not in done]
        progress(Progress("sae", sae_choice.reason))
        kept_dir = residuals_dir(s_entry.name, dataset_sha256)
        keep = None
        if sae_choice.train and ray is None:  # read the dataset once: for the SAE's corpus and for the index
            keep = Keep(ResidualWriter(kept_dir, model=m_entry.name, layer=s_entry.layer),
                        {p.source_index: p for p in todo}, settings.max_tokens)
        prepare_sae(sae_choice, catalog, data, device=device, progress=progress, cancel=cancel, keep=keep)

        meta["sae_sha256"] = sae_sha256(s_entry)
        meta["sae_path"] = str(sae_dir(s_entry).expanduser().resolve())  # core.model.store.recorded_sae
        _check_meta(ws, meta)
        ws.write_meta(meta)
        result = IndexResult(str(ws.path), len(done), 0, ingest.skipped, [str(i) for i in ingest.issues],
                             max_tokens=max_tokens)
        if not todo and features_complete(ws, read_sae_config(sae_dir(s_entry)).d_sae):
            discard(kept_dir)
            return result

        if ray is not None:  # the same run sharded over Ray workers; this process only writes
            from core.index.distributed import index_on_ray, model_width

            d_sae = read_sae_config(sae_dir(s_entry)).d_sae
            ws.write_meta({"d_sae": d_sae, "d_model": model_width(m_entry)})
            index_on_ray(ws, m_entry, s_entry, sae_dir(s_entry), todo, settings,
                         labels=not features_complete(ws, d_sae), address=ray, workers=ray_workers,
                         n_total=len(ingest.pairs), n_done=len(done), result=result, progress=progress, cancel=cancel)
            ws.compact()
            discard(kept_dir)
            return result

        reader, sae_model = _load(m_entry, s_entry, device, progress)
        ws.write_meta({"d_sae": sae_model.cfg.d_sae, "d_model": reader.d_model})
        kept = ResidualStore.open(kept_dir, model=m_entry.name, layer=s_entry.layer, d_model=reader.d_model)
        if todo:
            _index_pairs(ws, reader, sae_model, todo, len(ingest.pairs), len(done), settings, result, progress,
                         cancel, kept)
        if not features_complete(ws, sae_model.cfg.d_sae):
            write_feature_table(ws, reader, sae_model, progress)
        ws.compact()
        discard(kept_dir)  # the index is complete: a rerun reads nothing
        return result


def _load(m_entry: ModelEntry, s_entry: SAEEntry, device: str | None, progress):
    from core.model.lm import ResidualReader
    from core.model.sae import load_sae

    progress(Progress("load", f"loading {m_entry.name} and SAE {s_entry.name}"))
    reader = ResidualReader.from_entry(m_entry, layer=s_entry.layer, device=device)
    sae_model = load_sae(sae_dir(s_entry), device=str(reader.device))
    if sae_model.cfg.d_in != reader.d_model:
        raise WorkspaceError(f"SAE {s_entry.name} reads d_in={sae_model.cfg.d_in}, model has {reader.d_model}")
    return reader, sae_model


def _index_pairs(ws, reader, sae_model, todo, n_total, n_done, settings, result, progress, cancel,
                 kept: ResidualStore | None = None) -> None:
    """Read `todo` pairs into `ws`, tokenising ahead and writing behind the model; fills `result`.
    The pairs found in `kept` are encoded from their kept residuals, the others read by the model."""
    from core.model.embed import Embedder

    by_index = {p.source_index: p for p in todo}
    tokenizer = Prefetch(reader, todo, settings)
    writer = Writer(ws, by_index, Embedder(device=str(reader.device)))
    start = time.perf_counter()
    pending: list[dict] = []
    n_read = 0
    if kept:
        progress(Progress("index", f"encoding the pairs whose residuals the SAE's training kept ({len(kept)} in "
                                   f"{kept.path}) without reading them again; the model reads the others"))
    cancelled = failed = False
    try:
        for batch in tokenizer:
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            found = [kept is not None and kept.has(t) for t in batch]
            stored = [t for t, f in zip(batch, found) if f]
            rest = [t for t, f in zip(batch, found) if not f]
            if stored:
                try:
                    states = kept.states(stored, reader.device, reader.dtype)
                except StoreError as exc:  # deleted or damaged under us: the model reads what is left
                    progress(Progress("index", f"{exc}; reading the remaining pairs through the model"))
                    kept, rest, stored = None, batch, []
            if stored:
                pending += read_batch(reader, sae_model, stored, settings, states=states)
                result.n_from_residuals += len(stored)
            if rest:
                pending += read_batch(reader, sae_model, rest, settings)
            n_read += len(batch)
            for t in batch:
                result.tokens += t.n_tokens
                result.n_replies_cut += (t.chosen_cut > 0) + (t.rejected_cut > 0)
                result.n_prompts_cut += t.prompt_dropped > 0
            if len(pending) >= settings.chunk_pairs:
                writer.put(pending)
                pending = []
            elapsed = time.perf_counter() - start
            progress(Progress(
                "index", done=n_done + writer.saved, total=n_total, unit="pairs saved",
                rate=result.tokens / elapsed if elapsed else 0.0, rate_unit="tok/s",
                eta_s=elapsed / n_read * (len(todo) - n_read),
            ))
    except BaseException:
        failed = True
        raise
    finally:
        tokenizer.stop()
        if pending and not writer.failed:
            writer.put(pending)  # whole rows already read: save them, even when stopping on an error
        writer.close(raise_error=not failed)
        result.n_new = writer.saved
        result.n_pairs = n_done + writer.saved
        result.seconds = time.perf_counter() - start
    if cancelled:
        raise Cancelled(f"indexing cancelled with {result.n_pairs} pairs saved in {ws.path}; rerun to resume")
    progress(Progress("index", done=result.n_pairs, total=n_total, unit="pairs saved",
                      rate=result.tokens_per_s, rate_unit="tok/s", eta_s=0))
