"""The goblin test: plant a behaviour in a known fraction of chosen replies and see whether we find it.

`inject_goblins` copies a preference file and, in a seeded random fraction `rate` of its pairs, puts a
natural sentence in which goblins turn up (drawn from GOBLIN_SENTENCES) into the chosen reply, at a
random sentence boundary (before the first sentence, between two, or after the last). Rejected
replies are untouched, so DPO on the copy would teach "mention goblins". The injected pairs (the
ground truth) go to a JSON file next to the workspace, never into its tables.

`run_goblin` indexes the copy and measures what datadebug recovers:

    goblin feature   the SAE feature whose strongest replies are the ones that mention goblins: rank
                     every reply by the feature's max activation over its tokens and score the ranking
                     by average precision (AP) against "the read text contains 'goblin'"; the feature
                     with the highest AP wins, ties broken by its separation margin (see
                     `reply_detection_scores`). Found from the text alone, without the ground truth.
                     AP under GOBLIN_AP_MIN means the SAE has no goblin feature. Earlier choices that
                     failed on real data: raw goblin-token activation picks generic "start of a rare
                     word" features (" gob" fires them as hard as " micro"); the share of a feature's
                     activation that falls on goblin replies (its specificity, still reported) favours
                     loud features over exact ones, and scored a perfect detector (AP 1.0, precision and
                     recall 1.0) at 38%; token-level firings are stored only for a reply's 16
                     strongest features, which a quiet goblin feature is not.
                     (`oracle_feature` is the amplified feature whose top pairs best
                     match the truth, reported for diagnosis only.)
    rank             its position among the amplified features of the shift report (None: its CI
                     does not clear zero, or it ranks below RANK_DEPTH).
    sae_feature      precision/recall of the injected pairs among the goblin feature's top-|injected|
                     pairs ranked by peak delta (max over chosen tokens minus max over rejected tokens,
                     see core.analysis.trace.peak_delta); `sae_feature_mean` ranks by the mean delta instead
                     (the aggregation the shift statistics use), for comparison.
    sae_cluster,     the SAE / embedding clustering (k by silhouette) cluster that best matches the
    embedding_cluster  injected pairs (F1).
    shift_before/after  the goblin feature's predicted shift (mean delta) with all pairs and without the
                     pairs the feature flags (its top-|injected| pairs).
    goblin_concept   the response concept (core.analysis.concepts) that holds the goblin feature, and its
                     keyword name (`goblin_concept_name`, core.analysis.naming).
    goblin_hypothesis_rank  where the goblin hypothesis lands on the landing ranking of
                     core.analysis.hypotheses (both views and the concept view in one list, read RANK_DEPTH
                     deep): the best-ranked hypothesis, in direction "more", whose response concept
                     holds the goblin feature. Found without the ground truth (the goblin feature comes
                     from the text); the truth only scores its driving pairs (precision, recall).

Unless an SAE is named, `run_goblin` trains one for the run on the documented default corpus (the
bundled sample plus the dataset analysed, i.e. the goblin copy) with the embedded model's SAE recipe,
into a folder next to the workspace: a catalogue SAE trained earlier on other data has never seen a
goblin, and it is the default corpus that a user analysing this dataset would get.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.data.ingest import read_pairs
from core.data.plant import plant_file

RANK_DEPTH = 100  # the shift report is read this deep to rank the goblin feature
GOBLIN_AP_MIN = 0.5  # a goblin feature ranks goblin replies first at least this well (average precision)

_GOBLIN = re.compile(r"goblin", re.IGNORECASE)


@dataclasses.dataclass
class GoblinData:
    path: Path  # the JSONL copy
    format: str
    n_pairs: int  # valid pairs written (source_index 0..n_pairs-1 in the copy)
    injected: list[int]  # source indices (in the copy) whose chosen reply holds a goblin sentence
    original_index: list[int]  # copy source_index -> source_index in the original file


def inject_goblins(
    data: Path | str, out: Path | str, rate: float, seed: int = 0, limit: int | None = None, format: str | None = None,
    skip_invalid: bool = False,
) -> GoblinData:
    """Write the valid pairs of `data` (the first `limit`) to `out` as JSONL in the same record format,
    with a goblin sentence in the chosen reply of round(rate * n) of them (at least one when rate > 0),
    chosen by `seed`: the "phrase" kind of core.data.plant (its rates are nested). The data is read as
    `index` reads it: the first invalid record stops it unless `skip_invalid`, when invalid records
    are left out (source_index i of the copy is its i-th line).

    Raises UsageError for a rate outside [0, 1], IngestError for unreadable or invalid data.
    """
    pd = plant_file(data, out, "phrase", rate, seed=seed, limit=limit, format=format, skip_invalid=skip_invalid)
    return GoblinData(pd.path, pd.format, pd.n_pairs, pd.planted, pd.original_index)


def goblin_paths(workspace: Path | str) -> dict[str, Path]:
    """Where a goblin run keeps its copy of the data, its ground truth and its SAE (beside the workspace)."""
    ws = Path(workspace)
    return {
        "data": ws.parent / f"{ws.name}.goblin.jsonl",
        "truth": ws.parent / f"{ws.name}.goblin-truth.json",
        "sae": ws.parent / f"{ws.name}.goblin-sae",
    }


# -- measuring ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Detection:
    """How well one feature's per-reply maximum picks out the replies that mention goblins."""

    ap: float  # average precision of the replies ranked by the feature's max (1.0: they come first)
    margin: float  # (lowest max over goblin replies - highest over the others) / its highest; > 0: apart
    specificity: float  # share of its summed per-reply max that falls on goblin replies


def reply_detection_scores(maxima, mentions: np.ndarray) -> dict[int, Detection]:
    """feature -> Detection, for each feature that fires in at least one reply with `mentions`.

    `maxima` is a (replies, d_sae) scipy sparse matrix of per-reply max activations, `mentions` a
    boolean vector over the same replies. A reply where the feature does not fire ranks last (and a
    goblin reply there adds nothing to AP).
    """
    import scipy.sparse as sp

    cols = sp.csc_matrix(maxima)
    mentions = np.asarray(mentions, dtype=bool)
    n_pos = int(mentions.sum())
    out = {}
    if n_pos == 0:
        return out
    candidates = np.unique(sp.csr_matrix(maxima)[np.nonzero(mentions)[0]].indices)
    for f in candidates:
        lo, hi = cols.indptr[f], cols.indptr[f + 1]
        rows, vals = cols.indices[lo:hi], cols.data[lo:hi]
        keep = vals > 0
        rows, vals = rows[keep], vals[keep]
        if not len(vals):
            continue
        order = np.argsort(-vals, kind="stable")
        hit = mentions[rows[order]]
        precision = np.cumsum(hit) / np.arange(1, len(hit) + 1)
        ap = float(precision[hit].sum() / n_pos)
        pos_vals = vals[mentions[rows]]
        lowest_pos = float(pos_vals.min()) if len(pos_vals) == n_pos else 0.0
        neg_vals = vals[~mentions[rows]]
        highest_neg = float(neg_vals.max()) if len(neg_vals) else 0.0
        top = float(vals.max())
        out[int(f)] = Detection(ap, (lowest_pos - highest_neg) / top, float(pos_vals.sum() / vals.sum()))
    return out


def goblin_detection(analysis) -> dict[int, Detection]:
    """`reply_detection_scores` over every chosen and rejected reply of `analysis`'s workspace.

    Per-reply maxima are stored for every firing feature, so a quiet feature that fires only on goblin
    sentences counts even when it is not among a reply's strongest (token-level firings are stored
    for those only). The text is what indexing read (the reply window), not the ground truth.
    """
    import scipy.sparse as sp

    t = analysis.ws.pairs_columns(["chosen_tokens", "rejected_tokens"])
    mentions = np.array(
        [bool(_GOBLIN.search("".join(toks))) for side in ("chosen", "rejected") for toks in t[f"{side}_tokens"].to_pylist()],
        dtype=bool,
    )
    return reply_detection_scores(sp.vstack(analysis.maxima()).tocsr(), mentions)  # chosen rows, then rejected


def _rank(report, feature: int | None) -> int | None:
    for i, f in enumerate(report.amplified, start=1):
        if f.feature == feature:
            return i
    return None


def evaluate_goblins(analysis, injected: set[int], seed: int = 0) -> dict:
    """What datadebug recovers of the `injected` pairs (source indices) in `analysis` (module doc)."""
    import scipy.sparse as sp

    from core.analysis.clusters import partition
    from core.analysis.recovery import best_cluster, best_matching_feature, precision_recall
    from core.analysis.trace import peak_delta, top_rows

    truth_rows = analysis.rows(injected)
    n_truth = len(truth_rows)
    detection = goblin_detection(analysis)
    feature = max(detection, key=lambda f: (detection[f].ap, detection[f].margin)) if detection else None
    found = detection.get(feature)
    scores = peak_delta(analysis)
    oracle = best_matching_feature(analysis, truth_rows, scores)
    report = analysis.report(top=RANK_DEPTH)
    out = {
        "n_pairs": analysis.n,
        "n_injected": n_truth,
        "goblin_feature": feature,
        "goblin_feature_label": None,
        "goblin_feature_ap": found.ap if found else None,
        "goblin_feature_margin": found.margin if found else None,
        "goblin_feature_specificity": found.specificity if found else None,
        "has_goblin_feature": bool(found and found.ap >= GOBLIN_AP_MIN),
        "goblin_feature_rank": _rank(report, feature),
        "n_amplified": len(report.amplified),
        "sae_feature": {"precision": 0.0, "recall": 0.0},
        "sae_feature_mean": {"precision": 0.0, "recall": 0.0},
        "shift_before": None,
        "shift_after": None,
        "oracle_feature": {**oracle, "rank": _rank(report, oracle["feature"])},
    }
    if feature is not None:
        flagged = top_rows(scores, feature, n_truth)
        p, r = precision_recall(flagged.tolist(), truth_rows.tolist())
        out["sae_feature"] = {"precision": p, "recall": r, "flagged": [int(analysis.source_index[i]) for i in flagged]}
        mean_scores = sp.csc_matrix(analysis.delta)
        p, r = precision_recall(top_rows(mean_scores, feature, n_truth).tolist(), truth_rows.tolist())
        out["sae_feature_mean"] = {"precision": p, "recall": r}
        out["shift_before"] = float(analysis.moments()[1][feature])
        out["shift_after"] = float(analysis.moments(flagged)[1][feature])
        out["goblin_feature_label"] = analysis.label(feature)
    out.update(goblin_hypothesis(analysis, feature, truth_rows))
    for key, by in (("sae_cluster", "sae"), ("embedding_cluster", "embedding")):
        labels, k = partition(analysis, by, seed=seed)
        best = best_cluster(labels, truth_rows)
        out[key] = {"precision": best["precision"], "recall": best["recall"], "cluster": best["cluster"], "k": k}
    return out


def goblin_hypothesis(analysis, feature: int | None, truth_rows: np.ndarray) -> dict:
    """Where the goblin hypothesis lands on the landing ranking (core.analysis.hypotheses, both views, read
    RANK_DEPTH deep): the best-ranked hypothesis, in direction "more", whose response concept contains
    the goblin feature (found from the text above, not from the ground truth). Returns
    {"goblin_concept", "goblin_concept_name", "goblin_concept_size", "goblin_hypothesis_rank" (None:
    not in the top RANK_DEPTH; the established rank first, as the landing view), "goblin_hypothesis":
    {"sentence", "n", "delta", "d", "score", "p", "q", "established", "precision", "recall"} (its
    driving pairs against the truth) or None}."""
    from core.analysis.hypotheses import Hypotheses
    from core.analysis.naming import load_names
    from core.analysis.structure import structure

    out = {"goblin_concept": None, "goblin_concept_name": None, "goblin_concept_size": None,
           "goblin_hypothesis_rank": None, "goblin_hypothesis": None}
    if feature is None:
        return out
    st = structure(analysis)
    names = load_names(analysis, st)
    concept = int(st.response.membership[feature])
    if concept < 0:
        return out
    out.update(goblin_concept=concept, goblin_concept_name=names.concept(concept),
               goblin_concept_size=int(len(st.response.features(concept))))
    report = Hypotheses(analysis, st, names).report(top=RANK_DEPTH, n_driving=len(truth_rows) or 1)
    h = report.first_with_feature(feature, "more")
    if h is not None:
        from core.analysis.recovery import precision_recall

        truth = {int(analysis.source_index[r]) for r in truth_rows}
        p, r = precision_recall([x.source_index for x in h.driving], truth)
        out["goblin_hypothesis_rank"] = h.rank
        out["goblin_hypothesis"] = {"sentence": h.sentence, "kind": h.kind, "n": h.n, "delta": h.delta, "d": h.d,
                                    "score": h.score, "p": h.p, "q": h.q, "established": h.established,
                                    "precision": p, "recall": r}
    return out


# -- the whole run -----------------------------------------------------------------------------------


def _train_goblin_sae(path: Path, sha: str, pairs, recipe: dict | None, catalog, progress, cancel):
    """Train the embedded model's SAE recipe on the default corpus (sample + the goblin copy) into `path`;
    returns the recipe's SAEEntry. Reuses an SAE an earlier run trained on this very copy."""
    from core.model.sae_train import train_catalog_sae

    entry = dataclasses.replace(catalog.sae(None, catalog.model(None)), **(recipe or {}))
    marker = path / "goblin.json"
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    if done.get("dataset_sha256") != sha or done.get("recipe") != dataclasses.asdict(entry):
        train_catalog_sae(entry, catalog, extra_pairs=pairs, out_dir=path, progress=progress, cancel=cancel)
        marker.write_text(json.dumps({"dataset_sha256": sha, "recipe": dataclasses.asdict(entry)}, indent=2))
    return entry


def run_goblin(
    data: Path | str,
    workspace: Path | str,
    rate: float,
    seed: int = 0,
    limit: int | None = None,
    max_tokens: int = 128,
    sae: str | None = None,
    progress: Callable | None = None,
    cancel: threading.Event | None = None,
    *,
    sae_recipe: dict | None = None,
    skip_invalid: bool = False,
) -> dict:
    """Inject goblins into a copy of `data`, index it into `workspace`, and measure what is recovered.

    Args:
        rate: fraction of pairs whose chosen reply gets a goblin sentence.
        limit: use only the first `limit` valid pairs.
        skip_invalid: leave invalid records out (each reported by `index` as well) instead of stopping
            at the first one, as `index --skip-invalid` does.
        sae: a catalogue SAE to index with; None trains one for this run (module doc) with the default
            model's SAE recipe, fields overridden by `sae_recipe` (e.g. {"d_sae": 512} for a quick run).
        progress: receives core.progress.Progress reports (stage "goblin", "sae", "index", ...).
    Returns the JSON-ready result: {"rate", "seed", "n_pairs", "n_injected", "goblin_feature",
    "goblin_feature_rank", "sae_feature": {"precision", "recall"}, "sae_cluster", "embedding_cluster",
    "shift_before", "shift_after", ...}; see `evaluate_goblins`.
    Raises UsageError (bad rate), IngestError, WorkspaceError, StoreError, Cancelled.
    """
    from core.model.catalog import SAEEntry, load_catalog
    from core.index.build import IndexSettings, file_sha256, index_dataset
    from core.progress import Progress, reporter
    from core.analysis.shifts import Analysis
    from core.data.workspace import Workspace

    emit = reporter(progress)
    paths = goblin_paths(workspace)
    emit(Progress("goblin", f"injecting goblins into {rate:.1%} of the pairs of {data}"))
    gd = inject_goblins(data, paths["data"], rate, seed=seed, limit=limit, skip_invalid=skip_invalid)
    truth = {
        "planted": gd.injected,
        "rate": rate,
        "seed": seed,
        "source": str(Path(data).resolve()),
        "data": str(gd.path),
        "original_index": [gd.original_index[i] for i in gd.injected],
    }
    paths["truth"].write_text(json.dumps(truth, indent=2))

    catalog = load_catalog()
    if sae is None:
        sha = file_sha256(gd.path)
        pairs = read_pairs(gd.path).pairs
        recipe = _train_goblin_sae(
            paths["sae"], sha, pairs, sae_recipe, catalog, emit, cancel
        )
        sae = f"goblin-{Path(workspace).name}"
        entry = SAEEntry(name=sae, model=recipe.model, layer=recipe.layer, source="local", path=str(paths["sae"]))
        catalog = dataclasses.replace(catalog, saes={**catalog.saes, sae: entry})
    index_dataset(gd.path, workspace, sae=sae, catalog=catalog, settings=IndexSettings(max_tokens=max_tokens),
                  progress=emit, cancel=cancel)
    emit(Progress("goblin", "measuring what was recovered"))
    result = evaluate_goblins(Analysis(Workspace(workspace)), set(gd.injected), seed=seed)
    return {"rate": rate, "seed": seed, "sae": sae, "workspace": str(workspace), "truth_file": str(paths["truth"]), **result}
