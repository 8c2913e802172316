"""Indexing: preference pairs -> LM residuals at the SAE layer -> SAE features per reply -> LanceDB.

The job is a function that reports through a `progress` callback and stops when its `cancel` event is
set; it writes in chunks of whole pairs, so a killed run resumes where it stopped.

Three stages overlap: a thread tokenises pairs ahead of the model, the calling thread runs
`core.readout.read_batch` (forward, SAE encode and summaries on the model's device), and a writer
thread embeds texts with MiniLM and appends finished chunks to LanceDB.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from core import __version__
from core.catalog import Catalog, ModelEntry, SAEEntry, load_catalog
from core.errors import Cancelled, WorkspaceError
from core.hfdata import identity, open_source
from core.ingest import IngestResult, Pair, read_pairs
from core.progress import Progress, ProgressFn, reporter
from core.dataset_sae import choose_sae
from core.dataset_sae import prepare as prepare_sae
from core.readout import IndexSettings, read_batch
from core.store import sae_dir, sae_sha256
from core.summary import summarise_prompt, summarise_reply  # noqa: F401  (the reference summaries)
from core.workspace import PAIRS_SCHEMA, SCHEMA_VERSION, Workspace, file_sha256, source_fingerprint

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

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def resolve(catalog: Catalog, model: str | None, sae: str | None) -> tuple[ModelEntry, SAEEntry]:
    """The model and SAE entries to use (catalogue defaults where None)."""
    m = catalog.model(model)
    return m, catalog.sae(sae, m)


def model_context(entry: ModelEntry, progress: ProgressFn | None = None) -> int:
    """Tokens per row (prompt + reply) read from `entry`'s model: its max_position_embeddings,
    at most `core.lm.MAX_CONTEXT`. Pulls the model into the store if needed."""
    from transformers import AutoConfig

    from core.lm import MAX_CONTEXT
    from core.store import pull_model

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

    Replies are read whole (up to the model's context, see `core.lm.fit_pair`) unless
    `settings.max_tokens` caps them; the result counts the replies cut and the prompts whose head
    was dropped. A trained ("train" recipe) SAE is the dataset's own, trained first when the recipe
    has not seen the dataset (`train_sae` False: the newest SAE of the recipe in the store); see
    core.dataset_sae. Writes the feature-label table when it is missing, even when no pair is left.
    `data` is a file, or a Hugging Face dataset (a hub id, a save_to_disk folder, a folder of shards;
    `split` and `config` pick from it, see core.hfdata); the workspace meta records its identity.
    `ray` (an address, "auto" or "local") shards the pairs over Ray workers instead (core.distributed).
    Progress: stage "sae" / "load" / "labels" messages, then stage "index" with `done` = pairs saved
    in the workspace (not merely read), `rate` in tokens/s and an ETA.
    Raises IngestError for bad input (unless skip_invalid), WorkspaceError for a workspace indexed
    with other settings or that another index run is writing to (Workspace.index_lock), StoreError
    when the model/SAE cannot be made ready, Cancelled when `cancel` is set (after saving every pair
    read so far: a rerun resumes from there). UsageError for an unknown device or a missing GPU.
    """
    from core.sae import read_sae_config

    from core.lm import pick_device

    if device is not None:
        pick_device(device)  # an unknown device or a missing GPU, refused before any work
    if ray is not None:
        from core.distributed import check_address

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

        progress(Progress("sae", sae_choice.reason))
        prepare_sae(sae_choice, catalog, data, device=device, progress=progress, cancel=cancel)

        meta["sae_sha256"] = sae_sha256(s_entry)
        meta["sae_path"] = str(sae_dir(s_entry).expanduser().resolve())  # core.store.recorded_sae
        _check_meta(ws, meta)
        ws.write_meta(meta)
        done = set(ws.indexed_source_indices().tolist())
        todo = [p for p in ingest.pairs if p.source_index not in done]
        result = IndexResult(str(ws.path), len(done), 0, ingest.skipped, [str(i) for i in ingest.issues],
                             max_tokens=max_tokens)
        if not todo and _features_complete(ws, read_sae_config(sae_dir(s_entry)).d_sae):
            return result

        if ray is not None:  # the same run sharded over Ray workers; this process only writes
            from core.distributed import index_on_ray, model_width

            d_sae = read_sae_config(sae_dir(s_entry)).d_sae
            ws.write_meta({"d_sae": d_sae, "d_model": model_width(m_entry)})
            index_on_ray(ws, m_entry, s_entry, sae_dir(s_entry), todo, settings,
                         labels=not _features_complete(ws, d_sae), address=ray, workers=ray_workers,
                         n_total=len(ingest.pairs), n_done=len(done), result=result, progress=progress, cancel=cancel)
            ws.compact()
            return result

        reader, sae_model = _load(m_entry, s_entry, device, progress)
        ws.write_meta({"d_sae": sae_model.cfg.d_sae, "d_model": reader.d_model})
        if todo:
            _index_pairs(ws, reader, sae_model, todo, len(ingest.pairs), len(done), settings, result, progress, cancel)
        if not _features_complete(ws, sae_model.cfg.d_sae):
            _write_feature_table(ws, reader, sae_model, progress)
        ws.compact()
        return result


def _load(m_entry: ModelEntry, s_entry: SAEEntry, device: str | None, progress):
    from core.lm import ResidualReader
    from core.sae import load_sae

    progress(Progress("load", f"loading {m_entry.name} and SAE {s_entry.name}"))
    reader = ResidualReader.from_entry(m_entry, layer=s_entry.layer, device=device)
    sae_model = load_sae(sae_dir(s_entry), device=str(reader.device))
    if sae_model.cfg.d_in != reader.d_model:
        raise WorkspaceError(f"SAE {s_entry.name} reads d_in={sae_model.cfg.d_in}, model has {reader.d_model}")
    return reader, sae_model


def _index_pairs(ws, reader, sae_model, todo, n_total, n_done, settings, result, progress, cancel) -> None:
    """Read `todo` pairs into `ws`, tokenising ahead and writing behind the model; fills `result`."""
    from core.embed import Embedder

    by_index = {p.source_index: p for p in todo}
    tokenizer = _Prefetch(reader, todo, settings)
    writer = _Writer(ws, by_index, Embedder(device=str(reader.device)))
    start = time.perf_counter()
    pending: list[dict] = []
    n_read = 0
    cancelled = failed = False
    try:
        for batch in tokenizer:
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            pending += read_batch(reader, sae_model, batch, settings)
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


class _Prefetch:
    """Tokenises pairs in a thread, window by window, and yields each window's length-sorted batches.

    A window (not the whole dataset) is sorted so that the model starts after the first window is
    tokenised; the first window is small for the same reason.
    """

    def __init__(self, reader, pairs: list[Pair], settings: IndexSettings, window: int = 2048):
        self._q: queue.Queue = queue.Queue(maxsize=64)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(reader, pairs, settings, window), name="datadebug-tokenize", daemon=True
        )
        self._thread.start()

    def _run(self, reader, pairs, settings, window) -> None:
        from core.lm import plan_batches

        try:
            start, size = 0, min(window, 128)
            while start < len(pairs) and not self._stop.is_set():
                toks = [reader.tokenize(p, settings.max_tokens) for p in pairs[start : start + size]]
                for batch in plan_batches(toks, settings.batch_tokens):
                    if not self._put(batch):
                        return
                start, size = start + size, window
        except BaseException as exc:  # handed to the consuming thread
            self._error = exc
        self._put(None)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[list]:
        while True:
            batch = self._q.get()
            if batch is None:
                if self._error is not None:
                    raise self._error
                return
            yield batch

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _Writer:
    """Appends chunks of finished rows to the workspace in a thread: MiniLM embeddings, then one
    LanceDB append per chunk (a chunk is saved whole or not at all). `saved` counts pairs written."""

    def __init__(self, ws: Workspace, pairs: dict[int, Pair], embedder):
        self.ws, self.pairs, self.embedder = ws, pairs, embedder
        self.saved = 0
        self.error: BaseException | None = None
        self._q: queue.Queue = queue.Queue(maxsize=2)  # bounded: the reader waits when writing lags
        self._thread = threading.Thread(target=self._run, name="datadebug-write", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def _run(self) -> None:
        while True:
            rows = self._q.get()
            if rows is None:
                return
            if self.error is not None:
                continue  # drain without writing after a failure
            try:
                self.ws.add_pairs(rows_table(rows, self.pairs, self.embedder))
                self.saved += len(rows)
            except BaseException as exc:
                self.error = exc

    def put(self, rows: list[dict]) -> None:
        """Queue a chunk; raises the writer's error if an earlier chunk failed."""
        self._raise()
        self._q.put(rows)

    def close(self, raise_error: bool = True) -> None:
        """Wait until every queued chunk is written."""
        self._q.put(None)
        self._thread.join()
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def rows_table(rows: list[dict], pairs: dict[int, Pair], embedder) -> pa.Table:
    """The pairs-table rows (PAIRS_SCHEMA) of `read_batch` rows: their pairs' texts from `pairs`
    (by source_index) and MiniLM embeddings of prompt, chosen and rejected from `embedder`."""
    ps: list[Pair] = [pairs[r["source_index"]] for r in rows]
    emb = embedder.encode(
        [p.prompt_text for p in ps] + [p.chosen for p in ps] + [p.rejected for p in ps]
    )  # (3n, 384)
    n = len(ps)
    cols: dict[str, list] = {name: [] for name in PAIRS_SCHEMA.names}
    for i, (r, p) in enumerate(zip(rows, ps)):
        cols["source_index"].append(p.source_index)
        cols["line"].append(p.line)
        cols["prompt"].append(json.dumps(list(p.prompt), ensure_ascii=False))
        cols["prompt_text"].append(p.prompt_text)
        cols["n_prompt_tokens"].append(r["n_prompt_tokens"])
        for key in ("feat", "max", "freq"):
            cols[f"prompt_{key}"].append(r["prompt"][key])
        cols["emb_prompt"].append(emb[i])
        for side, text, e in (("chosen", p.chosen, emb[n + i]), ("rejected", p.rejected, emb[2 * n + i])):
            s = r[side]
            cols[side].append(text)
            cols[f"{side}_tokens"].append(r[f"{side}_tokens"])
            for key in ("feat", "mean", "max", "freq", "tok_feat", "tok_pos", "tok_val"):
                cols[f"{side}_{key}"].append(s[key])
            cols[f"emb_{side}"].append(e)
    return pa.table(cols, schema=PAIRS_SCHEMA)


def _features_complete(ws: Workspace, d_sae: int) -> bool:
    """Whether the feature-label table holds a committed row for each of the SAE's features."""
    return ws.has("features") and ws.table("features").count_rows() == d_sae


@torch.inference_mode()
def _write_feature_table(ws: Workspace, reader, sae_model, progress, top: int = 8) -> None:
    """Each feature's top promoted tokens: its decoder direction through the final norm and unembedding.

    Written in one LanceDB commit (overwriting any table a killed run left behind), so a reader
    sees either no table or the whole one."""
    progress(Progress("labels", "feature labels: decoder directions through the unembedding"))
    W_dec = sae_model.W_dec.float()  # (d_sae, d_model)
    W_U = reader.unembed.float().to(W_dec.device)  # (vocab, d_model)
    if reader.final_norm_weight is not None:
        W_dec = W_dec * reader.final_norm_weight.float().to(W_dec.device)
    promoted: list[list[str]] = []
    for s in range(0, W_dec.shape[0], 512):
        logits = W_dec[s : s + 512] @ W_U.T  # (chunk, vocab)
        ids = logits.topk(top, dim=1).indices.cpu().tolist()
        promoted.extend([reader.token_strings(row) for row in ids])
    n = len(promoted)
    ws.write_features(pa.table({
        "feature": pa.array(range(n), pa.int32()),
        "promoted": promoted,
        "label": [""] * n,
    }))
