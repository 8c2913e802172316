"""Clusters of pairs, feature traces and the SAE-vs-embedding comparison.

Two ways to group the pairs of a workspace:

    sae        each pair is the vector of its SAE features' symmetric activity
               (|a(chosen)| + |a(rejected)|) / 2 (mean over reply tokens), each feature weighted by a
               smoothed inverse document frequency idf_f = ln((1 + n) / (1 + df_f)) + 1, where df_f is
               the number of pairs where f fires: a feature firing in every pair says nothing about
               which pairs belong together, a rare one says a lot (as TF-IDF down-weights "the").
    embedding  each pair is the MiniLM embedding of its prompt plus that of its chosen reply.

Either way rows are L2-normalised and grouped by k-means (spherical k-means: on unit vectors the
Euclidean distance is a function of the cosine). Unless given, k is the one of 2..K_MAX (capped by n)
with the best cosine silhouette. Clusters are numbered by size, largest first.

Per cluster (whatever the grouping), from the SAE features:

    shift_contrast  for each feature, contrast = mean delta inside the cluster minus mean delta
                    outside (delta = a(chosen) - a(rejected)), Welch's t-test, Benjamini-Hochberg
                    q-values over the features tested; the significant ones (q < ALPHA) by |contrast|.
                    A cluster whose pairs push a feature harder than the rest shows here.
    top_features    the features most characteristic of the cluster: largest mean symmetric activity
                    inside minus outside (contrast, p and q here are of activity, not of delta).
    representative  the pairs nearest the cluster's centroid (cosine), nearest first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
from scipy import stats

from core.errors import UsageError, WorkspaceError
from core.shifts import Analysis

K_MAX = 16  # largest k tried by the silhouette search
MIN_CLUSTER = 3  # the search tries k only up to n / MIN_CLUSTER
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


# -- pair vectors -----------------------------------------------------------------------------------


def sae_vectors(analysis: Analysis) -> sp.csr_matrix:
    """(n, d_sae) unit rows: each pair's idf-weighted symmetric feature activity (module doc)."""
    activity = ((abs(analysis.chosen) + abs(analysis.rejected)) / 2).tocsr()
    df = np.asarray((activity > 0).sum(0)).ravel()
    idf = np.log((1 + analysis.n) / (1 + df)) + 1
    return _unit_rows(activity @ sp.diags(idf.astype(np.float32)))


def embedding_vectors(analysis: Analysis) -> np.ndarray:
    """(n, 384) unit rows: MiniLM embedding of the prompt plus that of the chosen reply."""
    t = analysis.ws.pairs_columns(["source_index", "emb_prompt", "emb_chosen"])
    if t["source_index"].to_numpy().tolist() != analysis.source_index.tolist():
        raise WorkspaceError("the workspace changed since it was loaded; reload it")
    prompt = np.stack(t["emb_prompt"].to_numpy(zero_copy_only=False)).astype(np.float64)
    chosen = np.stack(t["emb_chosen"].to_numpy(zero_copy_only=False)).astype(np.float64)
    return _unit_rows(prompt + chosen)


def _unit_rows(x):
    from sklearn.preprocessing import normalize

    return normalize(x, norm="l2", axis=1)


# -- partition --------------------------------------------------------------------------------------


def _kmeans(x, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    return km.labels_, km.cluster_centers_


def partition(analysis: Analysis, by: str = "sae", k: int | None = None, seed: int = 0) -> tuple[np.ndarray, int]:
    """(labels (n,), k): the rows of `analysis` grouped as in `cluster_pairs`, clusters numbered by size.

    Raises UsageError for an unknown `by` or a `k` outside 1..n, WorkspaceError for an empty workspace.
    """
    labels, k, _ = _partition(analysis, by, k, seed)
    return labels, k


def _partition(analysis: Analysis, by: str, k: int | None, seed: int):
    if by not in BY:
        raise UsageError(f"unknown clustering {by!r}; expected one of {', '.join(BY)}")
    n = analysis.n
    if n == 0:
        raise WorkspaceError(f"workspace {analysis.ws.path} has no pairs")
    if k is not None and not 1 <= k <= n:
        raise UsageError(f"k={k} must be between 1 and the number of pairs ({n})")
    x = sae_vectors(analysis) if by == "sae" else embedding_vectors(analysis)
    if k is None:
        k = _choose_k(x, seed)
    labels = np.zeros(n, dtype=np.int64) if k == 1 else _kmeans(x, k, seed)[0]
    # Number clusters by size (largest first), ties by first row, so ids are stable and readable.
    sizes = np.bincount(labels, minlength=k)
    first = np.array([np.argmax(labels == c) if sizes[c] else n for c in range(k)])
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    renumber = np.empty(k, dtype=np.int64)
    renumber[order] = np.arange(k)
    return renumber[labels], k, x


def _choose_k(x, seed: int) -> int:
    """The k of 2..min(K_MAX, n / MIN_CLUSTER) with the best cosine silhouette (1 when n is too small)."""
    from sklearn.metrics import silhouette_score

    n = x.shape[0]
    k_max = min(K_MAX, n // MIN_CLUSTER)
    if k_max < 2:
        return 1
    best_k, best = 1, -np.inf
    for k in range(2, k_max + 1):
        labels, _ = _kmeans(x, k, seed)
        if len(np.unique(labels)) < 2:
            continue
        s = silhouette_score(x, labels, metric="cosine", sample_size=min(n, 3000), random_state=seed)
        if s > best:
            best_k, best = k, s
    return best_k


# -- per-cluster statistics -------------------------------------------------------------------------


def welch(m: sp.csr_matrix, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(contrast, p) per column of `m` (n, d): mean over `inside` rows minus mean over the others, and
    Welch's two-sided p. Columns without variance on either side, or a side under 2 rows, get p = 1."""
    m = m.astype(np.float64)
    n_in, n_out = int(inside.sum()), int((~inside).sum())
    total = np.asarray(m.sum(0)).ravel()
    total_sq = np.asarray(m.multiply(m).sum(0)).ravel()
    sub = m[np.nonzero(inside)[0]]
    s_in = np.asarray(sub.sum(0)).ravel()
    sq_in = np.asarray(sub.multiply(sub).sum(0)).ravel()
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


class _Labels:
    """Feature labels from `analysis.describe`, each computed once per call of the public functions."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self.cache: dict[int, str] = {}

    def __call__(self, f: int) -> str:
        if f not in self.cache:
            published = self.analysis.feature_info().get(f, {}).get("label") or ""
            self.cache[f] = self.analysis.describe(f, n_contexts=0, published=published)[1]
        return self.cache[f]


def _features(contrast, p, tested, keep, label: _Labels, limit: int, key) -> list[ClusterFeature]:
    q = np.ones_like(p)
    q[tested] = benjamini_hochberg(p[tested])
    chosen = [int(f) for f in tested if keep(contrast[f], q[f])]
    chosen.sort(key=lambda f: key(contrast[f], p[f]))
    return [ClusterFeature(f, label(f), float(contrast[f]), float(p[f]), float(q[f])) for f in chosen[:limit]]


def cluster_pairs(analysis: Analysis, by: str = "sae", k: int | None = None, seed: int = 0) -> Clustering:
    """Group the pairs of `analysis` (module doc) and describe each cluster.

    Args:
        by: "sae" (idf-weighted SAE feature activity) or "embedding" (MiniLM prompt + chosen).
        k: number of clusters; None picks it by silhouette.
    Returns a Clustering whose labels[i] is the cluster of analysis row i.
    Raises UsageError (unknown `by`, k outside 1..n), WorkspaceError (empty workspace).
    """
    labels, k, x = _partition(analysis, by, k, seed)
    activity = ((abs(analysis.chosen) + abs(analysis.rejected)) / 2).tocsr()
    tested_delta, tested_act = _tested(analysis.delta), _tested(activity)
    label = _Labels(analysis)
    clusters = []
    for c in range(k):
        inside = labels == c
        rows = np.nonzero(inside)[0]
        d_contrast, d_p = welch(analysis.delta, inside)
        a_contrast, a_p = welch(activity, inside)
        shift = _features(d_contrast, d_p, tested_delta, lambda con, q: q < ALPHA, label, N_SHIFT_FEATURES,
                          key=lambda con, p: (-abs(con), p))
        top = _features(a_contrast, a_p, tested_act, lambda con, q: con > 0, label, N_TOP_FEATURES,
                        key=lambda con, p: (-con, p))
        centroid = np.asarray(x[rows].mean(0)).ravel()
        sims = np.asarray(x[rows] @ centroid).ravel() / max(np.linalg.norm(centroid), 1e-12)
        rep = rows[np.argsort(-sims, kind="stable")[:N_REPRESENTATIVE]]
        clusters.append(
            Cluster(
                id=c,
                size=len(rows),
                source_indices=[int(s) for s in analysis.source_index[rows]],
                top_features=top,
                shift_contrast=shift,
                representative=[int(analysis.source_index[r]) for r in rep],
            )
        )
    return Clustering(by=by, k=k, clusters=clusters, labels=labels)


# -- trace ------------------------------------------------------------------------------------------


def _firing(row: dict, side: str, feature: int) -> list[list]:
    trip = zip(row[f"{side}_tok_feat"], row[f"{side}_tok_pos"], row[f"{side}_tok_val"])
    return sorted([int(p), float(v)] for f, p, v in trip if f == feature)


def _value(row: dict, side: str, key: str, feature: int) -> float:
    feats = row[f"{side}_feat"]
    return float(row[f"{side}_{key}"][list(feats).index(feature)]) if feature in feats else 0.0


def trace_feature(analysis: Analysis, feature: int, top: int = 20) -> dict:
    """The pairs driving `feature`'s predicted shift, with their texts and where the feature fires.

    Pairs are ranked by delta in the direction of the shift (largest first); only pairs that push that
    way are listed. Token firing ({side}_firing, [[token position, activation], ...]) is stored for
    each reply's 16 strongest features only, so it is empty where the feature fired weakly.

    Returns {"feature", "label", "direction", "shift", "n_firing", "pairs": [{"source_index", "delta",
    "prompt", "chosen", "rejected", "chosen_tokens", "rejected_tokens", "chosen_firing",
    "rejected_firing", "chosen_mean", "rejected_mean", "chosen_max", "rejected_max"}]}.
    Raises UsageError for a feature outside 0..d_sae-1, WorkspaceError for an empty workspace.
    """
    if not 0 <= feature < analysis.d_sae:
        raise UsageError(f"feature {feature} is outside 0..{analysis.d_sae - 1}")
    if analysis.n == 0:
        raise WorkspaceError(f"workspace {analysis.ws.path} has no pairs")
    _, mean, _, nf = analysis.moments()
    direction = "amplified" if mean[feature] >= 0 else "suppressed"
    sign = 1.0 if direction == "amplified" else -1.0
    col = sign * analysis.delta[:, feature].toarray().ravel()  # (n,)
    order = [r for r in np.argsort(-col, kind="stable") if col[r] > 0][:top]
    pairs = []
    for r in order:
        row = analysis.ws.pair(int(analysis.source_index[r]))
        item = {
            "source_index": int(row["source_index"]),
            "delta": float(sign * col[r]),
            "prompt": row["prompt_text"],
            "chosen": row["chosen"],
            "rejected": row["rejected"],
        }
        for side in ("chosen", "rejected"):
            item[f"{side}_tokens"] = list(row[f"{side}_tokens"])
            item[f"{side}_firing"] = _firing(row, side, feature)
            item[f"{side}_mean"] = _value(row, side, "mean", feature)
            item[f"{side}_max"] = _value(row, side, "max", feature)
        pairs.append(item)
    return {
        "feature": int(feature),
        "label": _Labels(analysis)(feature),
        "direction": direction,
        "shift": float(mean[feature]),
        "n_firing": int(nf[feature]),
        "pairs": pairs,
    }


# -- comparison -------------------------------------------------------------------------------------


def peak_delta(analysis: Analysis) -> sp.csc_matrix:
    """(n, d_sae) per pair and feature: max activation over chosen tokens minus over rejected tokens.

    The per-pair score used to find the pairs behind a feature: a sentence that fires a feature hard
    in a long reply is diluted in the mean but not in the max.
    """
    chosen, rejected = analysis.maxima()
    return (chosen - rejected).tocsc()


def top_rows(scores: sp.csc_matrix, feature: int, n: int) -> np.ndarray:
    """Rows of the `n` largest positive scores of one feature column, largest first."""
    lo, hi = scores.indptr[feature], scores.indptr[feature + 1]
    rows, vals = scores.indices[lo:hi], scores.data[lo:hi]
    keep = vals > 0
    rows, vals = rows[keep], vals[keep]
    return rows[np.argsort(-vals, kind="stable")[:n]]


def precision_recall(found, truth) -> tuple[float, float]:
    found, truth = set(found), set(truth)
    hit = len(found & truth)
    return (hit / len(found) if found else 0.0), (hit / len(truth) if truth else 0.0)


def best_cluster(labels: np.ndarray, truth_rows: np.ndarray) -> dict:
    """The cluster that best matches the truth rows (highest F1): {"cluster", "precision", "recall"}."""
    truth = set(truth_rows.tolist())
    best = {"cluster": None, "precision": 0.0, "recall": 0.0}
    best_f1 = -1.0
    for c in np.unique(labels):
        p, r = precision_recall(np.nonzero(labels == c)[0].tolist(), truth)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best_f1:
            best, best_f1 = {"cluster": int(c), "precision": p, "recall": r}, f1
    return best


def best_matching_feature(analysis: Analysis, truth_rows: np.ndarray, scores: sp.csc_matrix | None = None) -> dict:
    """Among amplified features (mean delta > 0), the one whose top-|truth| pairs by peak delta hold
    the most truth pairs (ties: larger shift). {"feature", "precision", "recall"} (feature None if none)."""
    scores = peak_delta(analysis) if scores is None else scores
    _, mean, _, _ = analysis.moments()
    truth = set(truth_rows.tolist())
    best, best_key = {"feature": None, "precision": 0.0, "recall": 0.0}, (-1, 0.0)
    for f in np.nonzero(mean > 0)[0]:
        found = top_rows(scores, int(f), len(truth)).tolist()
        key = (len(truth & set(found)), float(mean[f]))
        if key > best_key:
            p, r = precision_recall(found, truth)
            best, best_key = {"feature": int(f), "precision": p, "recall": r}, key
    return best


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
