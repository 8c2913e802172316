"""The fitted structure of a workspace: response concepts, prompt concepts, data clusters, prompt groups.

Fitting it (core.analysis.concepts, core.analysis.dataclusters) takes seconds to a minute; reading it back takes
milliseconds, so it is cached in the workspace folder as `structure/<key>.npz`, where the key hashes
everything it was computed from: the workspace schema, the SAE (its sha256 and width), the fitting
parameters, the number of pairs and their source indices. A re-indexed workspace, another SAE or other
parameters get a new key and a fresh fit; marks are not part of the key: they never refit the
structure, they only change the statistics (core.analysis.hypotheses).

Prompt groups (the prompt-conditioned view). c_ik = the share of prompt concept A_k's features that
fire above τ in prompt i (core.analysis.concepts.concept_rate). S(k), the pairs whose prompt expresses A_k:
c_ik >= PROMPT_EXPRESSES (half of the concept's features fire), for grouped prompt concepts only
(single prompt features are single words, too many and too narrow to read as "the prompt asks for X"),
at most PROMPT_MAX_SHARE of the pairs (the most expressed first): a set holding most of the data says
nothing about where in it a behaviour is selected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import zipfile
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from core.analysis import concepts as C
from core.analysis import dataclusters as D
from core.errors import WorkspaceError
from core.progress import Progress, ProgressFn, check_cancel, reporter

PROMPT_EXPRESSES = 0.5
PROMPT_MAX_SHARE = 0.1
FORMAT = 2  # bump when the cached file's layout changes


@dataclass(frozen=True)
class Params:
    """Everything the structure is fitted with (part of the cache key)."""

    tau: float = C.TAU
    rel_max: float = C.REL_MAX
    k_neighbours: int = C.K_NEIGHBOURS
    min_size: int = C.MIN_SIZE
    min_g: float = C.MIN_G
    min_nmi: float = C.MIN_NMI
    resolution: float = C.RESOLUTION
    pairs_per_cluster: int = D.PAIRS_PER_CLUSTER
    silent_share: float = D.SILENT_SHARE
    k: int | None = None  # data clusters; None: from pairs_per_cluster
    prompt_expresses: float = PROMPT_EXPRESSES
    prompt_max_share: float = PROMPT_MAX_SHARE
    seed: int = 0


@dataclass(frozen=True)
class Structure:
    """A workspace's fitted structure (module doc). Row i of every per-pair array is analysis row i.

    clusters:      (n,) data cluster of each pair, -1 for the silent bucket.
    prompt_groups: (n, prompt.n_grouped) 0/1 CSR: pair i is in S(k) (module doc).
    """

    key: str
    params: Params
    source_index: np.ndarray
    response: C.Concepts
    prompt: C.Concepts
    clusters: np.ndarray
    k: int
    prompt_groups: sp.csr_matrix

    @property
    def n(self) -> int:
        return len(self.source_index)


def structure_key(meta: dict, params: Params, source_index: np.ndarray) -> str:
    """Hex key of what a structure is computed from (module doc)."""
    what = {
        "format": FORMAT,
        "schema": meta.get("schema_version"),
        "sae": meta.get("sae"),
        "sae_sha256": meta.get("sae_sha256"),
        "d_sae": meta.get("d_sae"),
        "params": dataclasses.asdict(params),
        "n_pairs": len(source_index),
        "pairs": hashlib.sha256(np.ascontiguousarray(source_index, dtype=np.int64).tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def prompt_groups(prompt: C.Concepts, prompt_freq: sp.csr_matrix, params: Params) -> sp.csr_matrix:
    """(n, prompt.n_grouped) 0/1 CSR: the pairs whose prompt expresses each grouped prompt concept."""
    n = prompt_freq.shape[0]
    c = C.concept_rate(prompt, prompt_freq).tocsc()[:, : prompt.n_grouped]  # (n, grouped)
    cap = max(1, int(params.prompt_max_share * n))
    rows, cols = [], []
    for k in range(prompt.n_grouped):
        lo, hi = c.indptr[k], c.indptr[k + 1]
        r, v = c.indices[lo:hi], c.data[lo:hi]
        keep = v >= params.prompt_expresses
        r, v = r[keep], v[keep]
        r = r[np.argsort(-v, kind="stable")[:cap]]
        rows.append(r)
        cols.append(np.full(len(r), k))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, prompt.n_grouped))


def reply_frequencies(analysis, params: Params, rows=None) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(chosen, rejected) (n, d_sae) CSR firing frequencies of `analysis`'s replies (of its `rows`
    only, in that order, when given), kept only where the firing is strong (core.analysis.concepts.strong,
    `params.rel_max` of each feature's max over all replies): what concepts, data clusters and
    hypotheses read."""
    chosen, rejected = analysis.frequencies()
    mc, mr = analysis.maxima() if params.rel_max > 0 else (None, None)
    if rows is not None:
        rows = np.asarray(rows, np.int64)
        chosen, rejected = chosen[rows], rejected[rows]
        mc, mr = (mc[rows], mr[rows]) if mc is not None else (None, None)
    if params.rel_max <= 0:
        return chosen, rejected
    ref = analysis.reference_max()
    return C.strong(chosen, mc, ref, params.rel_max), C.strong(rejected, mr, ref, params.rel_max)


def fit_structure(analysis, params: Params = Params(), progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None) -> Structure:
    """Fit the structure of `analysis` (a core.analysis.shifts.Analysis) without reading or writing the cache.
    Raises WorkspaceError for an empty workspace, Cancelled."""
    emit = reporter(progress)
    if analysis.n == 0:
        raise WorkspaceError(f"workspace {analysis.ws.path} has no pairs")
    chosen, rejected = reply_frequencies(analysis, params)
    emit(Progress("concepts", "response concepts: co-firing graph and Leiden", 0, 4, "steps"))
    replies = sp.vstack([chosen, rejected]).tocsr()
    response = C.fit_concepts(replies, "response", params.tau, params.k_neighbours, params.min_size,
                              params.resolution, min_g=params.min_g, min_nmi=params.min_nmi, seed=params.seed)
    check_cancel(cancel, "fitting concepts")
    emit(Progress("concepts", "prompt concepts", 1, 4, "steps"))
    pf = analysis.prompt_frequencies()
    prompt = C.fit_concepts(pf, "prompt", params.tau, params.k_neighbours, params.min_size, params.resolution,
                            min_g=params.min_g, min_nmi=params.min_nmi, seed=params.seed)
    check_cancel(cancel, "fitting concepts")
    emit(Progress("concepts", "data clusters: spherical k-means on concept activity", 2, 4, "steps"))
    s = C.activity(response, chosen, rejected)
    clusters = D.cluster_pairs(s, k=params.k, pairs_per_cluster=params.pairs_per_cluster,
                               silent_share=params.silent_share, seed=params.seed)
    check_cancel(cancel, "clustering pairs")
    groups = prompt_groups(prompt, pf, params)
    emit(Progress("concepts", "done", 4, 4, "steps"))
    key = structure_key(analysis.meta, params, analysis.source_index)
    return Structure(key, params, analysis.source_index.copy(), response, prompt, clusters,
                     int(clusters.max()) + 1 if (clusters >= 0).any() else 0, groups)


# -- the cache --------------------------------------------------------------------------------------


def cache_dir(workspace) -> "object":
    """The folder inside a workspace where fitted structures and names are kept."""
    return workspace.path / "structure"


def _save(workspace, st: Structure) -> None:
    folder = cache_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    g = st.prompt_groups.tocoo()
    tmp = folder / f".{st.key}.tmp.npz"
    np.savez_compressed(
        tmp,
        source_index=st.source_index, clusters=st.clusters, k=st.k,
        response=st.response.membership, response_grouped=st.response.n_grouped, response_n=st.response.n_concepts,
        prompt=st.prompt.membership, prompt_grouped=st.prompt.n_grouped, prompt_n=st.prompt.n_concepts,
        group_rows=g.row, group_cols=g.col, n=st.n,
        params=json.dumps(dataclasses.asdict(st.params)),
    )
    tmp.replace(folder / f"{st.key}.npz")  # a reader never sees half a file


def _load(workspace, key: str) -> Structure | None:
    path = cache_dir(workspace) / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        z = np.load(path)
        params = Params(**json.loads(str(z["params"])))
        n = int(z["n"])
        resp = C.Concepts("response", z["response"], int(z["response_n"]), int(z["response_grouped"]), params.tau)
        prom = C.Concepts("prompt", z["prompt"], int(z["prompt_n"]), int(z["prompt_grouped"]), params.tau)
        groups = sp.csr_matrix((np.ones(len(z["group_rows"]), np.float32), (z["group_rows"], z["group_cols"])),
                               shape=(n, prom.n_grouped))
        return Structure(key, params, z["source_index"], resp, prom, z["clusters"], int(z["k"]), groups)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None  # a cut or damaged cache (a crash, a full disk): it is derived, so fit it again


def structure(analysis, params: Params = Params(), progress: ProgressFn | None = None,
              cancel: threading.Event | None = None) -> Structure:
    """The structure of `analysis`: read from the workspace's cache when one was fitted from the same
    inputs (module doc), else fitted and cached. Raises WorkspaceError, Cancelled."""
    key = structure_key(analysis.meta, params, analysis.source_index)
    cached = _load(analysis.ws, key)
    if cached is not None:
        return cached
    st = fit_structure(analysis, params, progress, cancel)
    _save(analysis.ws, st)
    return st


def load_concepts(workspace, kind: str = "response", params: Params = Params()) -> C.Concepts:
    """The concepts (feature membership per concept) of a workspace (a core.data.workspace.Workspace),
    fitted on first use and cached. kind: "response" or "prompt". Raises WorkspaceError."""
    from core.analysis.shifts import Analysis

    if kind not in ("response", "prompt"):
        raise WorkspaceError(f"unknown concept kind {kind!r}: expected response or prompt")
    st = structure(Analysis(workspace), params)
    return st.response if kind == "response" else st.prompt
