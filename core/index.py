"""Indexing: preference pairs -> LM residuals at the SAE layer -> SAE features per reply -> LanceDB.

The job is a function that reports through a `progress` callback and stops when its `cancel` event is
set; it writes in chunks of whole pairs, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from core import __version__
from core.catalog import Catalog, ModelEntry, SAEEntry, load_catalog
from core.errors import Cancelled, WorkspaceError
from core.ingest import IngestResult, Pair, read_pairs
from core.progress import Progress, ProgressFn, reporter
from core.sae import encode, load_sae
from core.dataset_sae import choose_sae
from core.dataset_sae import prepare as prepare_sae
from core.store import sae_dir, sae_sha256
from core.workspace import PAIRS_SCHEMA, SCHEMA_VERSION, Workspace, file_sha256


@dataclass
class IndexResult:
    workspace: str
    n_pairs: int  # pairs in the workspace now
    n_new: int  # pairs indexed by this run
    n_skipped_invalid: int
    issues: list[str] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class IndexSettings:
    max_tokens: int = 256  # reply tokens read per side (prompt keeps its last 2x this)
    positions_per_feature: int = 3  # per reply and firing feature: its strongest token positions stored
    batch_tokens: int = 4096  # padded tokens per forward batch
    chunk_pairs: int = 64  # pairs per LanceDB append (the resume granularity)


def summarise_reply(feats: torch.Tensor, positions_per_feature: int) -> dict:
    """Sparse summary of one reply's SAE activations `feats` (tokens, d_sae), as numpy arrays:

        feat       every feature that fires (> 0) on some token, ascending
        mean, max  its mean over the reply's tokens (zeros included) and its max
        freq       the share of the reply's tokens it fires on
        tok_feat, tok_pos, tok_val   for each firing feature, its `positions_per_feature` strongest
                   positions (feature-major, strongest first)
    """
    T = feats.shape[0]
    if T == 0:
        empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
        return dict(feat=empty_i, mean=empty_f, max=empty_f, freq=empty_f,
                    tok_feat=empty_i, tok_pos=empty_i, tok_val=empty_f)
    count = (feats > 0).sum(0)  # (d_sae,)
    idx = torch.nonzero(count).squeeze(1)  # (n,) firing features
    sub = feats[:, idx]  # (T, n)
    vals, pos = sub.topk(min(positions_per_feature, T), dim=0)  # (P, n) each
    vals, pos = vals.T, pos.T  # (n, P): feature-major
    keep = vals > 0
    return dict(
        feat=idx.cpu().numpy().astype(np.int32),
        mean=(sub.sum(0) / T).cpu().numpy().astype(np.float32),
        max=sub.max(0).values.cpu().numpy().astype(np.float32),
        freq=(count[idx].float() / T).cpu().numpy().astype(np.float32),
        tok_feat=idx[:, None].expand_as(vals)[keep].cpu().numpy().astype(np.int32),
        tok_pos=pos[keep].cpu().numpy().astype(np.int32),
        tok_val=vals[keep].cpu().numpy().astype(np.float32),
    )


def summarise_prompt(feats: torch.Tensor) -> dict:
    """Sparse summary of a prompt's SAE activations `feats` (tokens, d_sae): feat, max, freq."""
    s = summarise_reply(feats, 0)
    return {k: s[k] for k in ("feat", "max", "freq")}


def resolve(catalog: Catalog, model: str | None, sae: str | None) -> tuple[ModelEntry, SAEEntry]:
    """The model and SAE entries to use (catalogue defaults where None)."""
    m = catalog.model(model)
    return m, catalog.sae(sae, m)


def _check_meta(ws: Workspace, meta: dict) -> None:
    old = ws.meta()
    if not old:
        return
    for key in ("dataset_sha256", "model", "sae", "sae_sha256", "layer", "max_tokens", "schema_version"):
        if key in old and key in meta and old[key] != meta[key]:
            raise WorkspaceError(
                f"workspace {ws.path} was indexed with {key}={old[key]!r}, not {meta[key]!r}; "
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
) -> IndexResult:
    """Index `data` into `workspace`, resuming any earlier run of the same settings.

    A trained ("train" recipe) SAE is the dataset's own, trained first when the recipe has not seen
    the dataset (`train_sae` False: the newest SAE of the recipe in the store); see core.dataset_sae.
    Progress: stage "sae" / "load" / "labels" messages, then stage "index" with `done` = pairs saved
    in the workspace (not merely read), `rate` in tokens/s and an ETA.
    Raises IngestError for bad input (unless skip_invalid), WorkspaceError for a workspace indexed
    with other settings, StoreError when the model/SAE cannot be made ready, Cancelled when `cancel`
    is set (after saving every pair read so far: a rerun resumes from there).
    """
    from core.embed import Embedder
    from core.lm import ResidualReader, plan_batches

    progress = reporter(progress)
    catalog = catalog or load_catalog()
    data = Path(data)
    m_entry = catalog.model(model)
    ingest: IngestResult = read_pairs(data, format=format, skip_invalid=skip_invalid, limit=limit)
    dataset_sha256 = file_sha256(data)
    sae_choice = choose_sae(catalog, dataset_sha256, m_entry.name, sae, train=train_sae)
    s_entry = sae_choice.entry

    meta = {
        "dataset": str(data.resolve()),
        "dataset_sha256": dataset_sha256,
        "format": ingest.format,
        "limit": limit,
        "model": m_entry.name,
        "sae": s_entry.name,
        "layer": s_entry.layer,
        "max_tokens": settings.max_tokens,
        "schema_version": SCHEMA_VERSION,
        "n_records": ingest.n_records,
        "issues": [str(i) for i in ingest.issues],
        "versions": {"datadebug": __version__, "torch": torch.__version__},
    }
    ws = Workspace(workspace, create=True)
    ws.require_current()
    _check_meta(ws, meta)

    progress(Progress("sae", sae_choice.reason))
    prepare_sae(sae_choice, catalog, data, device=device, progress=progress, cancel=cancel)

    meta["sae_sha256"] = sae_sha256(s_entry)
    _check_meta(ws, meta)
    ws.write_meta(meta)
    done = set(ws.indexed_source_indices().tolist())
    todo = [p for p in ingest.pairs if p.source_index not in done]
    result = IndexResult(str(ws.path), len(done), 0, ingest.skipped, [str(i) for i in ingest.issues])
    if not todo:
        _write_feature_table(ws, None, None, progress)
        result.n_pairs = len(done)
        return result

    progress(Progress("load", f"loading {m_entry.name} and SAE {s_entry.name}"))
    reader = ResidualReader.from_entry(m_entry, layer=s_entry.layer, device=device)
    sae_model = load_sae(sae_dir(s_entry), device=str(reader.device))
    if sae_model.cfg.d_in != reader.d_model:
        raise WorkspaceError(f"SAE {s_entry.name} reads d_in={sae_model.cfg.d_in}, model has {reader.d_model}")
    embedder = Embedder(device=str(reader.device))
    ws.write_meta({"d_sae": sae_model.cfg.d_sae, "d_model": reader.d_model})

    by_index = {p.source_index: p for p in todo}
    tokenized = [reader.tokenize(p, settings.max_tokens) for p in todo]
    total_tokens = sum(len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids) for t in tokenized)
    start = time.perf_counter()
    tokens_done = 0
    batches = plan_batches(tokenized, settings.batch_tokens)
    pending: list[dict] = []
    cancelled = False
    skip = reader.template_prefix_len()  # the chat template's fixed opening: the same in every prompt
    for batch in batches:
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        reads = reader.read(batch, with_prompt=True)
        for t, (c_acts, r_acts, p_acts) in zip(batch, reads):
            pair = by_index[t.source_index]
            row = {"pair": pair, "t": t}
            for side, acts, ids in (("chosen", c_acts, t.chosen_ids), ("rejected", r_acts, t.rejected_ids)):
                feats = encode(sae_model, acts).float()  # (tokens, d_sae)
                row[side] = summarise_reply(feats, settings.positions_per_feature)
                row[side + "_tokens"] = reader.token_strings(ids)
            row["prompt"] = summarise_prompt(encode(sae_model, p_acts[skip:]).float())  # (prompt tokens, d_sae)
            pending.append(row)
            tokens_done += len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids)
        if len(pending) >= settings.chunk_pairs:
            _flush(ws, pending, embedder)
            result.n_new += len(pending)
            pending = []
        elapsed = time.perf_counter() - start
        rate = tokens_done / elapsed if elapsed else 0.0
        progress(
            Progress(
                "index", done=len(done) + result.n_new, total=len(ingest.pairs), unit="pairs saved",
                rate=rate, rate_unit="tok/s", eta_s=(total_tokens - tokens_done) / rate if rate else None,
            )
        )
    if pending:
        _flush(ws, pending, embedder)
        result.n_new += len(pending)
    result.tokens = tokens_done
    result.seconds = time.perf_counter() - start
    result.n_pairs = len(done) + result.n_new
    if cancelled:
        raise Cancelled(f"indexing cancelled with {result.n_pairs} pairs saved in {ws.path}; rerun to resume")
    _write_feature_table(ws, reader, sae_model, progress)
    ws.compact()
    progress(Progress("index", done=result.n_pairs, total=len(ingest.pairs), unit="pairs saved",
                      rate=result.tokens_per_s, rate_unit="tok/s", eta_s=0))
    return result


def _flush(ws: Workspace, rows: list[dict], embedder) -> None:
    pairs: list[Pair] = [r["pair"] for r in rows]
    emb = embedder.encode(
        [p.prompt_text for p in pairs] + [p.chosen for p in pairs] + [p.rejected for p in pairs]
    )  # (3n, 384)
    n = len(pairs)
    cols: dict[str, list] = {name: [] for name in PAIRS_SCHEMA.names}
    for i, r in enumerate(rows):
        p = r["pair"]
        cols["source_index"].append(p.source_index)
        cols["line"].append(p.line)
        cols["prompt"].append(json.dumps(list(p.prompt), ensure_ascii=False))
        cols["prompt_text"].append(p.prompt_text)
        cols["n_prompt_tokens"].append(len(r["t"].prompt_ids))
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
    ws.add_pairs(pa.table(cols, schema=PAIRS_SCHEMA))


@torch.inference_mode()
def _write_feature_table(ws: Workspace, reader, sae_model, progress, top: int = 8) -> None:
    """Each feature's top promoted tokens: its decoder direction through the final norm and unembedding."""
    if ws.has("features") or reader is None:
        return
    progress(Progress("labels", "feature labels: decoder directions through the unembedding"))
    W_dec = sae_model.W_dec.float()  # (d_sae, d_model)
    W_U = reader.unembed.float().to(W_dec.device)  # (vocab, d_model)
    if reader.final_norm_weight is not None:
        W_dec = W_dec * reader.final_norm_weight.float().to(W_dec.device)
    promoted: list[list[str]] = []
    for s in range(0, W_dec.shape[0], 512):
        logits = W_dec[s : s + 512] @ W_U.T  # (chunk, vocab)
        ids = logits.topk(top, dim=1).indices.cpu().tolist()
        promoted.extend([[reader.tokenizer.decode([i]) for i in row] for row in ids])
    n = len(promoted)
    ws.write_features(pa.table({
        "feature": pa.array(range(n), pa.int32()),
        "promoted": promoted,
        "label": [""] * n,
    }))
