"""How well a method recovers planted pairs (the goblin test's ground truth): precision and recall of
a set of pairs, of the best-matching cluster, and of the best-matching feature's top pairs.

Used by the goblin test (`core.checks.goblin`) and by the SAE-vs-embedding comparison with a truth file
(`core.analysis.clusters.compare_clusterings`). Rows are analysis rows (`Analysis.rows(source_indices)`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from core.analysis.shifts import Analysis
from core.analysis.trace import peak_delta, top_rows


def precision_recall(found, truth) -> tuple[float, float]:
    """(share of `found` that is in `truth`, share of `truth` that is found); 0.0 for an empty side."""
    found, truth = set(found), set(truth)
    hit = len(found & truth)
    return (hit / len(found) if found else 0.0), (hit / len(truth) if truth else 0.0)


def best_cluster(labels: np.ndarray, truth_rows: np.ndarray) -> dict:
    """The cluster that best matches the truth rows (highest F1, ties: the lower id):
    {"cluster", "precision", "recall"}; `labels` (n,) is each row's cluster."""
    labels = np.asarray(labels)
    truth_rows = np.unique(np.asarray(truth_rows, dtype=np.int64))
    clusters = np.unique(labels)
    if len(clusters) == 0:
        return {"cluster": None, "precision": 0.0, "recall": 0.0}
    size = np.array([np.count_nonzero(labels == c) for c in clusters], dtype=np.float64)
    hits = np.array([np.count_nonzero(labels[truth_rows] == c) for c in clusters], dtype=np.float64)
    precision = hits / size
    recall = hits / len(truth_rows) if len(truth_rows) else np.zeros_like(hits)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    best = int(np.argmax(f1))
    return {"cluster": int(clusters[best]), "precision": float(precision[best]), "recall": float(recall[best])}


def best_matching_feature(analysis: Analysis, truth_rows: np.ndarray, scores: sp.csc_matrix | None = None) -> dict:
    """Among amplified features (mean delta > 0), the one whose top-|truth| pairs by peak delta hold
    the most truth pairs (ties: larger shift). {"feature", "precision", "recall"} (feature None if none).

    Diagnosis only: it looks at the truth, which a user never has."""
    scores = peak_delta(analysis) if scores is None else scores
    _, mean, _, _ = analysis.moments()
    truth = set(np.asarray(truth_rows).tolist())
    best, best_key = {"feature": None, "precision": 0.0, "recall": 0.0}, (-1, 0.0)
    for f in np.nonzero(mean > 0)[0]:
        found = top_rows(scores, int(f), len(truth)).tolist()
        key = (len(truth & set(found)), float(mean[f]))
        if key > best_key:
            p, r = precision_recall(found, truth)
            best, best_key = {"feature": int(f), "precision": p, "recall": r}, key
    return best
