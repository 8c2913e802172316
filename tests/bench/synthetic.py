"""A synthetic workspace of realistic shape and any size, for benchmarks (what-if, clusters, compare,
the shift report): a real LanceDB workspace (schema 2) that core.analysis.shifts.Analysis loads as it would
an indexed one, built in seconds per 100k pairs without a model.

Shape: each reply fires ~`nnz` of `d_sae` features drawn from a power law (a few features fire
often, most rarely); every pair belongs to one of `topics` topics whose own 40 features it fires
more, and whose MiniLM-like embedding it sits near, so clusterings have something to find; chosen
replies fire a few "preferred" features more, so shifts have something to show. With `tokens` > 0
each reply also gets that many token strings and the token firings of its features (3 positions
each), so labels and contexts (Analysis.describe) read real columns.

    from tests.bench.synthetic import synthetic_workspace
    ws = synthetic_workspace(path, n=260_000)          # d_sae 65,536, ~150 features per reply
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from core.data.workspace import EMBED_DIM, FEATURES_SCHEMA, PAIRS_SCHEMA, SCHEMA_VERSION, Workspace

CHUNK = 20_000  # pairs per LanceDB append


def _lists(values: np.ndarray, lengths: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=type_))


def _fixed(rows: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.astype(np.float32).ravel()), rows.shape[1])


def synthetic_workspace(path: Path | str, n: int, d_sae: int = 65_536, nnz: int = 150, topics: int = 8,
                        tokens: int = 0, seed: int = 0) -> Workspace:
    """Build (or overwrite) a synthetic workspace of `n` pairs at `path` (module doc)."""
    rng = np.random.default_rng(seed)
    ws = Workspace(path, create=True)
    ws.write_meta({"model": "synthetic", "sae": "synthetic", "sae_sha256": "0" * 64, "layer": 0,
                   "d_sae": d_sae, "d_model": 0, "schema_version": SCHEMA_VERSION, "n_records": n,
                   "dataset": "synthetic", "dataset_sha256": "0" * 64})
    popularity = 1.0 / np.arange(1, d_sae + 1) ** 0.8
    rng.shuffle(popularity)
    popularity /= popularity.sum()
    topic_features = rng.choice(d_sae, size=(topics, 40), replace=False)
    preferred = rng.choice(d_sae, size=12, replace=False)
    centres = rng.normal(size=(topics, EMBED_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vocab = np.array([f" tok{i}" for i in range(5000)], dtype=object)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        topic = rng.integers(topics, size=m)
        cols: dict[str, object] = {}
        for side in ("chosen", "rejected"):
            drawn = rng.choice(d_sae, size=(m, nnz), p=popularity)  # (m, nnz)
            drawn[:, :10] = topic_features[topic][:, rng.integers(40, size=10)]
            if side == "chosen":
                drawn[:, 10:13] = preferred[rng.integers(len(preferred), size=(m, 3))]
            drawn.sort(axis=1)
            keep = np.ones_like(drawn, dtype=bool)
            keep[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
            lengths = keep.sum(1)
            feats = drawn[keep].astype(np.int32)
            mean = rng.exponential(0.5, len(feats)).astype(np.float32)
            cols[f"{side}_feat"] = _lists(feats, lengths, pa.int32())
            cols[f"{side}_mean"] = _lists(mean, lengths, pa.float32())
            cols[f"{side}_max"] = _lists(mean * 4, lengths, pa.float32())
            cols[f"{side}_freq"] = _lists(np.full(len(feats), 0.25, np.float32), lengths, pa.float32())
            cols[side] = [f"{side} reply {start + i}" for i in range(m)]
            if tokens:
                toks = vocab[rng.integers(len(vocab), size=m * tokens)]
                cols[f"{side}_tokens"] = _lists(toks, np.full(m, tokens), pa.string())
                per = 3
                cols[f"{side}_tok_feat"] = _lists(np.repeat(feats, per), lengths * per, pa.int32())
                cols[f"{side}_tok_pos"] = _lists(rng.integers(tokens, size=len(feats) * per).astype(np.int32),
                                                 lengths * per, pa.int32())
                cols[f"{side}_tok_val"] = _lists(np.repeat(mean * 4, per), lengths * per, pa.float32())
            else:
                zero = np.zeros(m, np.int64)
                cols[f"{side}_tokens"] = _lists(np.array([], dtype=object), zero, pa.string())
                cols[f"{side}_tok_feat"] = _lists(np.zeros(0, np.int32), zero, pa.int32())
                cols[f"{side}_tok_pos"] = _lists(np.zeros(0, np.int32), zero, pa.int32())
                cols[f"{side}_tok_val"] = _lists(np.zeros(0, np.float32), zero, pa.float32())
            emb = centres[topic] + rng.normal(scale=0.06, size=(m, EMBED_DIM))  # (m, 384)
            cols[f"emb_{side}"] = _fixed(emb / np.linalg.norm(emb, axis=1, keepdims=True))
        prompt_emb = centres[topic] + rng.normal(scale=0.06, size=(m, EMBED_DIM))
        zero = np.zeros(m, np.int64)
        cols.update(
            source_index=np.arange(start, start + m), line=np.arange(start, start + m) + 1,
            prompt=["[]"] * m, prompt_text=[f"prompt {start + i}" for i in range(m)],
            n_prompt_tokens=np.ones(m, np.int32),
            prompt_feat=_lists(np.zeros(0, np.int32), zero, pa.int32()),
            prompt_max=_lists(np.zeros(0, np.float32), zero, pa.float32()),
            prompt_freq=_lists(np.zeros(0, np.float32), zero, pa.float32()),
            emb_prompt=_fixed(prompt_emb / np.linalg.norm(prompt_emb, axis=1, keepdims=True)),
        )
        ws.add_pairs(pa.table({k: cols[k] for k in PAIRS_SCHEMA.names}, schema=PAIRS_SCHEMA))
    return ws


def finish_index(ws: Workspace, dataset: str = "") -> Workspace:
    """Write what a finished index run writes last (a features table without labels; the dataset's
    name in meta when given), so the app opens a built workspace as an indexed one."""
    d_sae = int(ws.meta()["d_sae"])
    ws.write_features(
        pa.table({"feature": np.arange(d_sae, dtype=np.int32), "promoted": [[]] * d_sae,
                  "label": [""] * d_sae}, schema=FEATURES_SCHEMA)
    )
    if dataset:
        ws.write_meta({"dataset": dataset})
    return ws
