"""Data clusters: regions of the dataset, found from what the replies talk about, not from the labels.

Each pair is its symmetric concept activity s_i (core.analysis.concepts.activity: Σ over a concept's features
of chosen + rejected firing frequency). Symmetric, so a cluster never knows which side was chosen and
asking which side the labels favour inside it is not circular (METHOD.md).

Weighting. Each concept's column is weighted by a smoothed inverse document frequency
idf_m = ln((1 + n) / (1 + df_m)) + 1 (df_m: pairs where the concept is active), then rows are
L2-normalised. Without it a pair's direction is set by the concepts active everywhere (punctuation,
"I", sentence starts) and a behaviour present in 1% of pairs is a rounding error of its vector; with
it, a rare concept that a pair does have weighs ~5x a universal one, so pairs that share it point
the same way and k-means can give them a cluster of their own (as TF-IDF groups documents by their
rare words; core.analysis.clusters weights single features the same way).

Silent pairs. The SILENT_SHARE = 5% least active pairs (smallest ||s_i||, before weighting: short or
empty replies) have directions set by a handful of firings; they form the "silent" bucket (label -1)
and take part in no data cluster's statistics, as in the paper.

K. Spherical k-means (k-means on unit rows; there the Euclidean distance is a function of the cosine)
with K = round(active pairs / PAIRS_PER_CLUSTER), between 2 and K_MAX: the median cluster then holds
tens of pairs (the paper: K = 512 on 247k pairs, median 401). A behaviour local to a region of the
data needs a cluster about that region's size; two halves of the data (what a silhouette search picks
on these vectors) hold no behaviour. Above EXACT_MAX active pairs k-means is fitted by mini-batches
on a seeded sample and every pair is assigned to its nearest centre; with more than MAX_DIMS concepts
it reads the MAX_DIMS most widespread ones (a concept in 1% of 260k pairs is among them; the rest are
single features too rare to shape a cluster of hundreds of pairs), which keeps the assignment of
260k pairs to 512 centres a few seconds.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

SILENT_SHARE = 0.05
PAIRS_PER_CLUSTER = 25
K_MAX = 512
EXACT_MAX = 20_000
SAMPLE = 20_000
MAX_DIMS = 4096  # k-means reads the most widespread concepts only (all of them below this many)


def weighted_vectors(s: sp.csr_matrix) -> sp.csr_matrix:
    """(n, n_concepts) unit rows: idf-weighted symmetric concept activity (module doc)."""
    from sklearn.preprocessing import normalize

    n = s.shape[0]
    df = np.diff(s.tocsc().indptr)
    idf = (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)
    return normalize((s @ sp.diags(idf)).tocsr().astype(np.float32), norm="l2", axis=1)


def choose_k(n_active: int, pairs_per_cluster: int = PAIRS_PER_CLUSTER) -> int:
    """Clusters for `n_active` pairs so the median cluster holds about `pairs_per_cluster`."""
    return int(min(K_MAX, max(2, round(n_active / pairs_per_cluster)))) if n_active >= 4 else 1


def silent_rows(s: sp.csr_matrix, share: float = SILENT_SHARE) -> np.ndarray:
    """(n,) bool: the `share` least active pairs by ||s_i|| (ties broken by row)."""
    n = s.shape[0]
    norm = np.sqrt(np.asarray(s.multiply(s).sum(1)).ravel())
    silent = np.zeros(n, bool)
    silent[np.argsort(norm, kind="stable")[: int(np.floor(share * n))]] = True
    return silent


def cluster_pairs(s: sp.csr_matrix, k: int | None = None, pairs_per_cluster: int = PAIRS_PER_CLUSTER,
                  silent_share: float = SILENT_SHARE, seed: int = 0) -> np.ndarray:
    """(n,) data cluster of each pair, -1 for the silent bucket; clusters numbered by size, largest
    first. `s`: (n, n_concepts) symmetric concept activity. `k` default: `choose_k`."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n = s.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    active = np.nonzero(~silent_rows(s, silent_share))[0]
    if len(active) == 0:
        return labels
    s = s.tocsr()
    df = np.diff(s.tocsc().indptr)
    if s.shape[1] > MAX_DIMS:
        s = s[:, np.sort(np.argsort(-df, kind="stable")[:MAX_DIMS])]
    x = weighted_vectors(s[active])
    k = min(k or choose_k(len(active), pairs_per_cluster), len(active))
    if k <= 1:
        labels[active] = 0
        return labels
    if len(active) <= EXACT_MAX:
        lab = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x).labels_
    else:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(active), size=min(SAMPLE, len(active)), replace=False))
        km = MiniBatchKMeans(n_clusters=k, batch_size=4096, n_init=1, max_iter=10, init="random",
                             random_state=seed).fit(x[sample])  # k-means++ seeding alone costs K x trials passes
        centres = km.cluster_centers_.astype(np.float32)  # (k, n_concepts)
        # nearest centre of every pair: argmin ||x - c||² = argmax x·c - ||c||²/2 (x unit)
        score = np.asarray(x @ centres.T) - 0.5 * (centres**2).sum(1)
        lab = score.argmax(1)
    sizes = np.bincount(lab, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    renumber = np.empty(k, dtype=np.int64)
    renumber[order] = np.arange(k)
    labels[active] = renumber[lab]
    return labels
