"""Clusters of pairs and the SAE-vs-embedding comparison.

Two ways to group the pairs of a workspace:

    sae        each pair is the vector of its SAE features' symmetric activity
               (|a(chosen)| + |a(rejected)|) / 2 (mean over reply tokens), each feature weighted by a
               smoothed inverse document frequency idf_f = ln((1 + n) / (1 + df_f)) + 1, where df_f is
               the number of pairs where f fires: a feature firing in every pair says nothing about
               which pairs belong together, a rare one says a lot (as TF-IDF down-weights "the").
    embedding  each pair is the MiniLM embedding of its prompt plus that of its chosen reply.

Either way rows are L2-normalised and grouped by k-means (spherical k-means: on unit vectors the
Euclidean distance is a function of the cosine). Unless given, k is the one of 2..K_MAX (capped by n)
with the best cosine silhouette, searched on a seeded sample of SEARCH_SAMPLE pairs (all of them
when fewer). The centres are fitted on at most FIT_MAX pairs (a seeded sample) and every pair joins
its nearest centre, so 260k pairs cost one assignment pass more than 10k. Clusters are numbered by
size, largest first.

Per cluster (whatever the grouping), from the SAE features:

    shift_contrast  for each feature, contrast = mean delta inside the cluster minus mean delta
                    outside (delta = a(chosen) - a(rejected)), Welch's t-test, Benjamini-Hochberg
                    q-values over the features tested; the significant ones (q < ALPHA) by |contrast|.
                    A cluster whose pairs push a feature harder than the rest shows here.
    top_features    the features most characteristic of the cluster: largest mean symmetric activity
                    inside minus outside (contrast, p and q here are of activity, not of delta).
    representative  the pairs nearest the cluster's centroid (cosine), nearest first.

Every cluster's sums come from one sparse product (clusters x pairs indicator times pairs x
features), not from a pass over the matrix per cluster.

Tracing a feature to its pairs is `core.analysis.trace`; scoring against planted pairs is `core.analysis.recovery`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
from scipy import stats

from core.errors import UsageError, WorkspaceError
from core.analysis.recovery import best_cluster, best_matching_feature
from core.analysis.shifts import Analysis

K_MAX = 16  # largest k tried by the silhouette search
MIN_CLUSTER = 3  # the search tries k only up to n / MIN_CLUSTER
SEARCH_SAMPLE = 2000  # pairs the k search clusters and scores (all of them when fewer)
FIT_MAX = 10_000  # k-means fits at most this many pairs (a seeded sample); the others join the nearest centre
ALPHA = 0.05  # BH false discovery rate for shift_contrast
N_TOP_FEATURES = 10
N_SHIFT_FEATURES = 20
N_REPRESENTATIVE = 3
BY = ("sae", "embedding")


@dataclass
class ClusterFeature:
    feature: int
    label: str
    contrast: float  # mean inside minus mean outside (of delta in shift_contrast, of activity in top_features)
    p_value: float  # Welch's t-test, two-sided
    q_value: float  # Benjamini-Hochberg over the features tested for this cluster


@dataclass
class Cluster:
    id: int
    size: int
    source_indices: list[int]
    top_features: list[ClusterFeature]
    shift_contrast: list[ClusterFeature]
    representative: list[int]


@dataclass
class Clustering:
    by: str  # "sae" | "embedding"
    k: int
    clusters: list[Cluster]
    labels: np.ndarray  # (n,) labels[i] = cluster id of analysis row i

    def to_json(self) -> dict:
        """{"by", "k", "clusters": [{"id", "size", "source_indices", "top_features", "shift_contrast", "representative"}]}"""
        return {"by": self.by, "k": self.k, "clusters": [asdict(c) for c in self.clusters]}

    def cluster(self, cluster_id: int) -> Cluster:
        """The cluster with this id; UsageError naming the ids there are."""
        for c in self.clusters:
            if c.id == cluster_id:
                return c
        raise UsageError(f"no {self.by} cluster {cluster_id} (there are {self.k}: 0..{self.k - 1})")


# -- pair vectors -----------------------------------------------------------------------------------


def pair_activity(analysis: Analysis) -> sp.csr_matrix:
    """(n, d_sae) each pair's symmetric feature activity (|a(chosen)| + |a(rejected)|) / 2."""
    return ((abs(analysis.chosen) + abs(analysis.rejected)) / 2).tocsr()


def sae_vectors(analysis: Analysis, act: sp.csr_matrix | None = None) -> sp.csr_matrix:
    """(n, d_sae) unit rows: each pair's idf-weighted symmetric feature activity (module doc);
    `act` is `pair_activity(analysis)` when the caller has it already."""
    activity = pair_activity(analysis) if act is None else act
    df = np.bincount(activity.indices, minlength=activity.shape[1])  # pairs where each feature fires
    idf = np.log((1 + analysis.n) / (1 + df)) + 1
    return _unit_rows(activity @ sp.diags(idf.astype(np.float32)))


def embedding_vectors(analysis: Analysis) -> np.ndarray:
    """(n, 384) unit rows: MiniLM embedding of the prompt plus that of the chosen reply."""
    t = analysis.ws.pairs_columns(["source_index", "emb_prompt", "emb_chosen"])
    if t["source_index"].to_numpy().tolist() != analysis.source_index.tolist():
        raise WorkspaceError("the workspace changed since it was loaded; reload it")
    prompt = _fixed_list(t["emb_prompt"])  # (n, 384)
    chosen = _fixed_list(t["emb_chosen"])
    return _unit_rows(prompt + chosen)


def _fixed_list(column) -> np.ndarray:
    """(n, dim) float32 from an Arrow fixed-size-list column, without a Python loop."""
    arr = column.combine_chunks()
    dim = arr.type.list_size
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(arr), dim)


def _unit_rows(x):
    from sklearn.preprocessing import normalize

    return normalize(x, norm="l2", axis=1)


# -- partition --------------------------------------------------------------------------------------


def _kmeans(x, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,), centres (k, d)) of `x`: k-means with 4 inits on every row up to FIT_MAX rows;
    above, on a seeded sample of FIT_MAX rows, then every row goes to its nearest centre."""
    from sklearn.cluster import KMeans

    n = x.shape[0]
    if n <= FIT_MAX:
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
        return km.labels_, km.cluster_centers_
    sample = np.sort(np.random.default_rng(seed).choice(n, FIT_MAX, replace=False))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x[sample])
    return km.predict(x), km.cluster_centers_


def partition(analysis: Analysis, by: str = "sae", k: int | None = None, seed: int = 0) -> tuple[np.ndarray, int]:
    """(labels (n,), k): the rows of `analysis` grouped as in `cluster_pairs`, clusters numbered by size
    (k can come out smaller than asked when the pairs have fewer distinct vectors than k).

    Raises UsageError for an unknown `by` or a `k` outside 1..n, WorkspaceError for an empty workspace.
    """
    labels, k, _ = _partition(analysis, by, k, seed)
    return labels, k


def _partition(analysis: Analysis, by: str, k: int | None, seed: int, act: sp.csr_matrix | None = None):
    if by not in BY:
        raise UsageError(f"unknown clustering {by!r}; expected one of {', '.join(BY)}")
    n = analysis.n
    if n == 0:
        raise WorkspaceError(f"workspace {analysis.ws.path} has no pairs")
    if k is not None and not 1 <= k <= n:
        raise UsageError(f"k={k} must be between 1 and the number of pairs ({n})")
    x = sae_vectors(analysis, act) if by == "sae" else embedding_vectors(analysis)
    from threadpoolctl import threadpool_limits

    # One BLAS/OpenMP thread: these products are small, and on a busy machine oversubscribed threads
    # made the k search 30x slower (measured: 18 s vs 0.6 s for 8 fits of 4,000 x 384).
    with threadpool_limits(limits=1):
        if k is None:
            k = _choose_k(x, seed)
        labels = np.zeros(n, dtype=np.int64) if k == 1 else _kmeans(x, k, seed)[0]
    # Number clusters by size (largest first), ties by first row, so ids are stable and readable.
    sizes = np.bincount(labels, minlength=k)
    first = np.full(k, n)
    np.minimum.at(first, labels, np.arange(n))
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    renumber = np.empty(k, dtype=np.int64)
    renumber[order] = np.arange(k)
    # k-means leaves a cluster empty when the rows have fewer distinct points than k: drop it
    return renumber[labels], int(np.count_nonzero(sizes)), x


def _choose_k(x, seed: int) -> int:
    """The k of 2..min(K_MAX, n / MIN_CLUSTER) with the best cosine silhouette (1 when n is too
    small), searched on a seeded sample of SEARCH_SAMPLE rows."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = x.shape[0]
    k_max = min(K_MAX, n // MIN_CLUSTER)
    if k_max < 2:
        return 1
    if n > SEARCH_SAMPLE:
        x = x[np.sort(np.random.default_rng(seed).choice(n, SEARCH_SAMPLE, replace=False))]
    best_k, best = 1, -np.inf
    for k in range(2, min(k_max, x.shape[0] // MIN_CLUSTER) + 1):
        labels = KMeans(n_clusters=k, n_init=2, random_state=seed).fit(x).labels_
        if len(np.unique(labels)) < 2:
            continue
        s = silhouette_score(x, labels, metric="cosine", sample_size=min(x.shape[0], 3000), random_state=seed)
        if s > best:
            best_k, best = k, s
    return best_k


# -- per-cluster statistics -------------------------------------------------------------------------


def welch(m: sp.csr_matrix, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(contrast, p) per column of `m` (n, d): mean over `inside` rows minus mean over the others, and
    Welch's two-sided p. Columns without variance on either side, or a side under 2 rows, get p = 1."""
    labels = np.asarray(inside, dtype=np.int64)  # cluster 1 = inside
    sums, sq = _cluster_sums(m, labels, 2)
    return _welch(sums[1], sq[1], int(labels.sum()), sums.sum(0), sq.sum(0), len(labels))


def _cluster_sums(m: sp.csr_matrix, labels: np.ndarray, k: int, m_sq: sp.csr_matrix | None = None):
    """(sums (k, d), sums of squares (k, d)) of the rows of `m` (n, d) in each cluster: two sparse
    products of the (k, n) indicator, float64."""
    n = m.shape[0]
    indicator = sp.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))  # (k, n)
    m_sq = m.multiply(m).tocsr() if m_sq is None else m_sq
    return (indicator @ m).toarray(), (indicator @ m_sq).toarray()


def _welch(s_in, sq_in, n_in: int, total, total_sq, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(contrast, p) per feature from the sums inside one cluster and over all rows (see `welch`)."""
    n_out = n - n_in
    s_out, sq_out = total - s_in, total_sq - sq_in
    mean_in = s_in / max(n_in, 1)
    mean_out = s_out / max(n_out, 1)
    contrast = mean_in - mean_out
    p = np.ones_like(contrast)
    if n_in < 2 or n_out < 2:
        return contrast, p
    var_in = np.maximum(sq_in - n_in * mean_in**2, 0) / (n_in - 1)
    var_out = np.maximum(sq_out - n_out * mean_out**2, 0) / (n_out - 1)
    a, b = var_in / n_in, var_out / n_out
    se2 = a + b
    ok = se2 > 1e-24
    t = contrast[ok] / np.sqrt(se2[ok])
    dof = se2[ok] ** 2 / (a[ok] ** 2 / (n_in - 1) + b[ok] ** 2 / (n_out - 1))
    p[ok] = 2 * stats.t.sf(np.abs(t), dof)
    return contrast, p


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of p-values `p` (same order); q >= p, q <= 1."""
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def _tested(m: sp.csr_matrix) -> np.ndarray:
    """Columns that are non-zero in some row: the features a test is run for (BH counts only these)."""
    return np.unique(m.indices)


def _features(contrast, p, tested, keep: np.ndarray, limit: int, order: np.ndarray) -> list[ClusterFeature]:
    """The first `limit` tested features that `keep` (a mask over `tested`) selects, in `order` (a
    ranking of `tested`), as ClusterFeatures with their BH q-values (labels are filled in later)."""
    q = np.ones_like(p)
    q[tested] = benjamini_hochberg(p[tested])
    chosen = tested[order][keep[order]][:limit]
    return [ClusterFeature(int(f), "", float(contrast[f]), float(p[f]), float(q[f])) for f in chosen]


def _shift_features(contrast, p, tested) -> list[ClusterFeature]:
    q = np.ones_like(p)
    q[tested] = benjamini_hochberg(p[tested])
    order = np.lexsort((p[tested], -np.abs(contrast[tested])))  # largest |contrast|, then smallest p
    return _features(contrast, p, tested, q[tested] < ALPHA, N_SHIFT_FEATURES, order)


def _top_features(contrast, p, tested) -> list[ClusterFeature]:
    order = np.lexsort((p[tested], -contrast[tested]))  # largest contrast, then smallest p
    return _features(contrast, p, tested, contrast[tested] > 0, N_TOP_FEATURES, order)


def cluster_pairs(analysis: Analysis, by: str = "sae", k: int | None = None, seed: int = 0) -> Clustering:
    """Group the pairs of `analysis` (module doc) and describe each cluster.

    Args:
        by: "sae" (idf-weighted SAE feature activity) or "embedding" (MiniLM prompt + chosen).
        k: number of clusters; None picks it by silhouette.
    Returns a Clustering whose labels[i] is the cluster of analysis row i.
    Raises UsageError (unknown `by`, k outside 1..n), WorkspaceError (empty workspace).
    """
    act = pair_activity(analysis)
    labels, k, x = _partition(analysis, by, k, seed, act)
    n = analysis.n
    sizes = np.bincount(labels, minlength=k)
    d_sum, d_sq = _cluster_sums(analysis.delta, labels, k, analysis.delta_sq)  # (k, d_sae) each
    a_sum, a_sq = _cluster_sums(act, labels, k)
    tested_delta, tested_act = _tested(analysis.delta), _tested(act)
    clusters = []
    for c in range(k):
        rows = np.nonzero(labels == c)[0]
        d_contrast, d_p = _welch(d_sum[c], d_sq[c], int(sizes[c]), d_sum.sum(0), d_sq.sum(0), n)
        a_contrast, a_p = _welch(a_sum[c], a_sq[c], int(sizes[c]), a_sum.sum(0), a_sq.sum(0), n)
        centroid = np.asarray(x[rows].mean(0)).ravel()
        sims = np.asarray(x[rows] @ centroid).ravel() / max(np.linalg.norm(centroid), 1e-12)
        rep = rows[np.argsort(-sims, kind="stable")[:N_REPRESENTATIVE]]
        clusters.append(
            Cluster(
                id=c,
                size=len(rows),
                source_indices=analysis.source_index[rows].tolist(),
                top_features=_top_features(a_contrast, a_p, tested_act),
                shift_contrast=_shift_features(d_contrast, d_p, tested_delta),
                representative=[int(analysis.source_index[r]) for r in rep],
            )
        )
    shown = [f for cl in clusters for f in cl.top_features + cl.shift_contrast]
    labels_of = analysis.labels({f.feature for f in shown})  # one read of the tokens they need
    for f in shown:
        f.label = labels_of[f.feature]
    return Clustering(by=by, k=k, clusters=clusters, labels=labels)


# -- comparison -------------------------------------------------------------------------------------


def _spread(a: np.ndarray, b: np.ndarray) -> list[dict]:
    out = []
    for c in np.unique(a):
        counts = np.bincount(b[a == c])
        spread = {str(int(o)): int(counts[o]) for o in np.argsort(-counts, kind="stable") if counts[o]}
        out.append({"cluster": int(c), "size": int((a == c).sum()), "spread": spread})
    return out


def compare_clusterings(analysis: Analysis, truth: set[int] | None = None, k: int | None = None) -> dict:
    """SAE clusters against embedding clusters (same k: the given one, else the SAE search's).

    Returns {"k", "n_pairs", "ari", "nmi", "sae_to_embedding": [{"cluster", "size", "spread": {embedding
    cluster: pairs}}], "embedding_to_sae": [...]}; with `truth` (source indices of planted pairs) also
    "n_truth", "sae": {"cluster", "cluster_precision", "cluster_recall", "feature", "feature_precision",
    "feature_recall"} and "embedding": {"cluster", "cluster_precision", "cluster_recall"}: each method's
    best cluster (by F1) and, for the SAE, the amplified feature whose top-|truth| pairs (by peak delta)
    best match. Raises as `cluster_pairs`.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    sae_labels, k = partition(analysis, "sae", k)
    emb_labels, _ = partition(analysis, "embedding", k)
    out = {
        "k": k,
        "n_pairs": analysis.n,
        "ari": float(adjusted_rand_score(sae_labels, emb_labels)),
        "nmi": float(normalized_mutual_info_score(sae_labels, emb_labels)),
        "sae_to_embedding": _spread(sae_labels, emb_labels),
        "embedding_to_sae": _spread(emb_labels, sae_labels),
    }
    if truth is not None:
        truth_rows = analysis.rows(truth)
        out["n_truth"] = len(truth_rows)
        s, e = best_cluster(sae_labels, truth_rows), best_cluster(emb_labels, truth_rows)
        f = best_matching_feature(analysis, truth_rows)
        out["sae"] = {
            "cluster": s["cluster"], "cluster_precision": s["precision"], "cluster_recall": s["recall"],
            "feature": f["feature"], "feature_precision": f["precision"], "feature_recall": f["recall"],
        }
        out["embedding"] = {"cluster": e["cluster"], "cluster_precision": e["precision"], "cluster_recall": e["recall"]}
    return out
