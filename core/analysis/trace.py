"""Tracing a feature to the pairs behind it: which pairs drive its predicted shift, and where in
their replies it fires.

Two per-pair scores rank a feature's pairs:

    delta       a(chosen) - a(rejected) of the mean over reply tokens: what the shift statistics
                average, so its largest values are the pairs that make the predicted shift.
    peak delta  max over chosen tokens minus max over rejected tokens: a sentence that fires the
                feature hard in a long reply is diluted in the mean but not in the max, so this
                finds the pairs that *contain* what the feature detects (the goblin test's score).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from core.errors import UsageError, WorkspaceError
from core.analysis.shifts import Analysis


def _firing(row: dict, side: str, feature: int) -> list[list]:
    trip = zip(row[f"{side}_tok_feat"], row[f"{side}_tok_pos"], row[f"{side}_tok_val"])
    return sorted([int(p), float(v)] for f, p, v in trip if f == feature)


def _value(row: dict, side: str, key: str, feature: int) -> float:
    feats = row[f"{side}_feat"]
    return float(row[f"{side}_{key}"][list(feats).index(feature)]) if feature in feats else 0.0


def trace_feature(analysis: Analysis, feature: int, top: int = 20) -> dict:
    """The pairs driving `feature`'s predicted shift, with their texts and where the feature fires.

    Pairs are ranked by delta in the direction of the shift (largest first); only pairs that push that
    way are listed. Token firing ({side}_firing, [[token position, activation], ...]) holds the
    feature's strongest positions in each reply (the workspace keeps a few per firing feature).

    Returns {"feature", "label", "direction", "shift", "n_firing", "pairs": [{"source_index", "delta",
    "prompt", "chosen", "rejected", "chosen_tokens", "rejected_tokens", "chosen_firing",
    "rejected_firing", "chosen_mean", "rejected_mean", "chosen_max", "rejected_max"}]}.
    Raises UsageError for a feature outside 0..d_sae-1 or `top` under 1, WorkspaceError for an
    empty workspace.
    """
    feature = analysis.check_feature(feature)
    if top < 1:
        raise UsageError(f"top {top}: must be at least 1 pair")
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
        "feature": feature,
        "label": analysis.label(feature),
        "direction": direction,
        "shift": float(mean[feature]),
        "n_firing": int(nf[feature]),
        "pairs": pairs,
    }


def peak_delta(analysis: Analysis) -> sp.csc_matrix:
    """(n, d_sae) per pair and feature: max activation over chosen tokens minus over rejected tokens
    (module doc), column-major for `top_rows`."""
    chosen, rejected = analysis.maxima()
    return (chosen - rejected).tocsc()


def top_rows(scores: sp.csc_matrix, feature: int, n: int) -> np.ndarray:
    """Rows of the `n` largest positive scores of one feature column of `scores` (n_pairs, d_sae),
    largest first."""
    lo, hi = scores.indptr[feature], scores.indptr[feature + 1]
    rows, vals = scores.indices[lo:hi], scores.data[lo:hi]
    keep = vals > 0
    rows, vals = rows[keep], vals[keep]
    return rows[np.argsort(-vals, kind="stable")[:n]]
