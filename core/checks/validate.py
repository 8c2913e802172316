"""Proving a prediction: compare the shifts DPO actually caused with the predicted ones.

`validate` takes a workspace (the dataset's SAE summaries) and a `core.train.training` run on it,
samples replies from the model before and after training on prompts it was not trained on, reads
both through the *original* model and SAE at the workspace's layer (the lens that made the
prediction, aggregated per reply as indexing does: `core.train.rollout.read_reply_pairs`), and compares,
two ways side by side:

Mean activation, per feature f (the first protocol):

    predicted_f = mean over the trained pairs of a_f(chosen) - a_f(rejected)
    actual_f    = mean over prompts of a_f(reply after) - a_f(reply before)

with a_f = f's activation averaged over the reply's tokens.

The paper's protocol (Goodfire, "Anatomy of Post-Training", global predictivity), thresholded:
a feature *fires in a reply* when it fires on more than `tau` of the reply's tokens (freq > tau).
Per pair, b_f = fires(chosen) - fires(rejected) in {-1, 0, 1}; a concept m (a set R_m of
features) has u_m = mean over f in R_m of b_f, and its prediction is the dataset mean of u_m. The
actual change is the same statistic on (reply after, reply before): the share of replies in which
f fires after minus before, averaged over f in R_m. Predicted and actual are one function of two
reply pairs: (chosen, rejected) of the data, (after, before) of the rollouts.

Agreement (`agreement`), for concepts and for features: the least-squares line actual ~ a *
predicted + b (its R², which with an intercept is Pearson's r²), the R² against y = x after one
global scale (actual ~ s * predicted through the origin, R² = 1 - SS_res / SS_tot about the mean:
negative when the scaled prediction is worse than a constant), Spearman's rank correlation, each
with a bootstrap CI over prompts (prompts resampled with their samples), and for concepts a null:
the same R² for concepts whose features were dealt out at random (same sizes; `permutation_null`),
which says how much of the concept-level agreement is merely the averaging of many features.

Both sides are estimates, and noise in either caps the agreement: the actual shifts' split-half
reliability over prompts, the prediction's over training pairs (`half_means`, Spearman-Brown
corrected), and their product, the noise ceiling: about the best R² a perfect prediction could
show with this many prompts and pairs. R² far under the ceiling says the prediction misses
something systematic; R² near a low ceiling says more data (pairs or prompts) is what would lift it.

Replies are sampled with common random numbers (`core.train.rollout.generate_replies`): the before and
after replies to a prompt share their sampling noise, so an unchanged distribution gives the same
reply and the difference isolates what training changed.

`validate` runs four stages, each a function: predict (`predict_trained`), roll out (`roll_out`:
replies and probe sentences before and after), measure (`measure`: the replies through the original
model and the SAE, against the prediction) and write (`write`: replies, plots, numbers; the report
JSON last).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.errors import ValidationError
from core.progress import Progress, ProgressFn, reporter
from core.train.rollout import Decoding, ReplyStats, probe_lifts, probe_sentences

Z95 = 1.959964
TAU = 0.01  # a feature fires in a reply when it fires on more than this share of its tokens


# -- fits ---------------------------------------------------------------------------------------------


@dataclass
class Fit:
    """Agreement of actual with predicted values over `n_features` points (NaN when undefined)."""

    n_features: int
    slope: float  # a in actual ~ a * predicted + b (least squares)
    intercept: float  # b
    r2: float  # 1 - SS_residual / SS_total of that fit
    pearson_r: float
    pearson_r2: float  # equals r2 for a least-squares fit with an intercept
    spearman: float
    scale: float = float("nan")  # s in actual ~ s * predicted (through the origin)
    r2_scaled: float = float("nan")  # R² of y = x after that one global scale


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `x`, ties given their average rank (as Spearman's rho needs)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if (counts > 1).any():  # average the ranks within each group of ties
        r = (np.bincount(inverse, weights=r) / counts)[inverse]
    return r


def fit(predicted: np.ndarray, actual: np.ndarray) -> Fit:
    """Least-squares line, R², Pearson, Spearman and the scaled-identity R² of `actual` against
    `predicted`, both (points,). Needs at least 3 points and some spread in both; otherwise NaN."""
    x = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    n = len(x)
    nan = float("nan")
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Fit(n, nan, nan, nan, nan, nan, nan)
    slope, intercept = np.polyfit(x, y, 1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - (slope * x + intercept)) ** 2).sum()) / ss_tot
    r = float(np.corrcoef(x, y)[0, 1])
    rho = float(np.corrcoef(ranks(x), ranks(y))[0, 1])
    scale = float((x * y).sum() / (x * x).sum())
    r2_scaled = 1.0 - float(((y - scale * x) ** 2).sum()) / ss_tot
    return Fit(n, float(slope), float(intercept), r2, r, r * r, rho, scale, r2_scaled)


def significant_features(mean: np.ndarray, sd: np.ndarray, n: int) -> np.ndarray:
    """Features whose predicted shift has a 95% CI clear of zero (normal approximation), as indices."""
    se = sd / np.sqrt(max(n, 1))
    return np.nonzero((mean != 0) & (np.abs(mean) > Z95 * se))[0]


def top_k_features(mean: np.ndarray, k: int) -> np.ndarray:
    """The `k` features with the largest |predicted shift| (non-zero ones only), as indices."""
    nonzero = np.nonzero(mean)[0]
    return nonzero[np.argsort(-np.abs(mean[nonzero]), kind="stable")[:k]]


def halves_reliability(halves: np.ndarray) -> float:
    """Split-half reliability from `halves` (splits, 2, points): per split, the Pearson r between
    the two halves' values over the points, averaged over splits (constant halves skipped), then
    Spearman-Brown corrected to the whole: 2r / (1 + r). NaN with fewer than 3 points or no usable
    split."""
    if halves is None or halves.shape[-1] < 3:
        return float("nan")
    rs = [np.corrcoef(a, b)[0, 1] for a, b in halves if np.ptp(a) > 0 and np.ptp(b) > 0]
    if not rs:
        return float("nan")
    r = float(np.mean(rs))
    return 2 * r / (1 + r) if r > -1 else float("nan")


def half_means(x, n_splits: int = 20, seed: int = 0) -> np.ndarray | None:
    """Column means of `x` (n, d), dense or scipy-sparse, over the two halves of `n_splits` random
    splits of its rows: (n_splits, 2, d) float32, or None for fewer than 4 rows. One product with a
    (2 n_splits, n) weight matrix, so a large sparse `x` is never densified or copied."""
    n = x.shape[0]
    if n < 4:
        return None
    rng = np.random.default_rng(seed)
    w = np.zeros((2 * n_splits, n), dtype=np.float32)
    for s in range(n_splits):
        order = rng.permutation(n)
        w[2 * s, order[: n // 2]] = 1 / (n // 2)
        w[2 * s + 1, order[n // 2 :]] = 1 / (n - n // 2)
    means = (x.T @ w.T).T if hasattr(x, "tocsr") else w @ np.asarray(x, dtype=np.float32)  # (2 splits, d)
    return np.asarray(means, dtype=np.float32).reshape(n_splits, 2, -1)


def split_half_reliability(
    diffs: np.ndarray, features: np.ndarray, n_splits: int = 50, seed: int = 0
) -> float:
    """How reproducible the actual shifts are across prompts.

    `diffs` is (prompts, points): after - before per prompt. `halves_reliability` of random halves
    of the prompts, over `features`. NaN for fewer than 4 prompts or 3 points.
    """
    if len(diffs) < 4 or len(features) < 3:
        return float("nan")
    return halves_reliability(half_means(np.asarray(diffs)[:, features], n_splits, seed))


def noise_ceiling(predicted_reliability: float, actual_reliability: float) -> float:
    """The R² a perfect prediction could show through this much noise on both sides: the product of
    the two reliabilities (classical attenuation: an observed r is the true r times the square root
    of both), each clipped to [0, 1]. NaN when either is unknown."""
    if not (math.isfinite(predicted_reliability) and math.isfinite(actual_reliability)):
        return float("nan")
    return float(min(max(predicted_reliability, 0.0), 1.0) * min(max(actual_reliability, 0.0), 1.0))


# -- the thresholded statistic and concepts -----------------------------------------------------------


def fires(freq, tau: float = TAU):
    """(replies, d) float32 1/0: whether each feature fires on more than `tau` of a reply's tokens.
    `freq` is dense (the result is too) or scipy-sparse (the result is sparse CSR)."""
    if hasattr(freq, "tocsr"):
        return (freq.tocsr() > tau).astype(np.float32)
    return (np.asarray(freq) > tau).astype(np.float32)


def disparity(first_freq, second_freq, tau: float = TAU):
    """b = fires(first) - fires(second) per reply pair and feature, (pairs, d) in {-1, 0, 1}:
    (chosen, rejected) for the prediction, (after, before) for the actual change. Sparse in,
    sparse out."""
    return fires(first_freq, tau) - fires(second_freq, tau)


def column_moments(x) -> tuple[np.ndarray, np.ndarray]:
    """(mean, SD with ddof 1) of each column of `x` (n, d), dense or scipy-sparse, without
    densifying a sparse one. SD is 0 for n < 2."""
    n = x.shape[0]
    if hasattr(x, "multiply"):
        s, s2 = np.asarray(x.sum(0)).ravel(), np.asarray(x.multiply(x).sum(0)).ravel()
    else:
        x = np.asarray(x, dtype=np.float64)
        s, s2 = x.sum(0), (x * x).sum(0)
    mean = s / max(n, 1)
    var = np.maximum(s2 / max(n, 1) - mean**2, 0.0) * (n / (n - 1) if n > 1 else 0.0)
    return mean.astype(np.float64), np.sqrt(var)


@dataclass(frozen=True)
class ConceptGroups:
    """Concepts as flat arrays, for aggregating per-feature values without scipy (the GPU
    benchmark runs where scipy may be missing) and for dealing features out at random (the null):
    concept m is features[starts[m]:starts[m + 1]]. `core.analysis.concepts.Concepts` holds the same as a
    membership vector; `from_concepts` converts (its grouped concepts only: single features are
    features, not concepts)."""

    features: np.ndarray  # (total members,) int64
    starts: np.ndarray  # (concepts,) int64
    ids: tuple  # each concept's id as its source numbers it

    @classmethod
    def of(cls, concepts: Sequence[Sequence[int]], ids: Sequence | None = None) -> "ConceptGroups":
        """From feature lists (empty ones dropped, their ids with them)."""
        ids = list(range(len(concepts))) if ids is None else list(ids)
        keep = [i for i, c in enumerate(concepts) if len(c)]
        sizes = np.array([len(concepts[i]) for i in keep], dtype=np.int64)
        flat = (np.concatenate([np.asarray(concepts[i], dtype=np.int64) for i in keep])
                if keep else np.zeros(0, np.int64))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if keep else np.zeros(0, np.int64)
        return cls(flat, starts, tuple(ids[i] for i in keep))

    @classmethod
    def from_concepts(cls, concepts) -> "ConceptGroups":
        """The grouped concepts (ids 0..n_grouped-1) of a `core.analysis.concepts.Concepts`."""
        m = np.asarray(concepts.membership)
        return cls.of([np.nonzero(m == c)[0] for c in range(concepts.n_grouped)])

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(np.append(self.starts, len(self.features)))

    def lists(self) -> list[list[int]]:
        """Each concept's features."""
        ends = np.append(self.starts[1:], len(self.features))
        return [self.features[a:b].tolist() for a, b in zip(self.starts, ends)]

    def restricted(self, keep: np.ndarray) -> "ConceptGroups":
        """The same concepts with only the members in `keep` (feature indices); concepts left empty
        are dropped with their ids."""
        keep = set(np.asarray(keep).tolist())
        return ConceptGroups.of([[f for f in c if f in keep] for c in self.lists()], self.ids)

    def mean(self, per_feature: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Per concept, the mean of `per_feature` (..., d) over its members: (..., concepts).
        `features` replaces the member list (a permutation of it, for the null)."""
        members = self.features if features is None else features
        if not len(self):
            return np.zeros(per_feature.shape[:-1] + (0,), dtype=np.float64)
        sums = np.add.reduceat(np.asarray(per_feature, dtype=np.float64)[..., members], self.starts, axis=-1)
        return sums / self.sizes


def read_concepts(path: Path | str) -> ConceptGroups:
    """Concepts from a JSON file: a list of feature lists, or {"concepts": [{"id", "features"}, ...]}.
    Raises ValidationError when it cannot be read or holds neither."""
    from core.data.jsonfile import read_json_file

    raw = read_json_file(path, "the concepts file", ValidationError)
    if isinstance(raw, dict):
        raw = raw.get("concepts")
    if not isinstance(raw, list):
        raise ValidationError(f"{path}: expected a list of concepts (feature lists)")
    if raw and isinstance(raw[0], dict):
        return ConceptGroups.of([c.get("features", []) for c in raw], [c.get("id", i) for i, c in enumerate(raw)])
    return ConceptGroups.of(raw)


# -- agreement ---------------------------------------------------------------------------------------


def bootstrap_ci(boot: np.ndarray, estimate: float, upper: float | None = None) -> list[float]:
    """95% normal bootstrap interval: estimate ± 1.96 x the SD of the bootstrap values `boot`
    (capped at `upper`). Not the percentile interval: resampling prompts with replacement leaves
    ~63% of them distinct, which adds noise and pulls R²-like statistics down, often below the
    estimate in every resample; their spread still measures the estimate's sampling error. NaN
    when fewer than 2 resamples are finite."""
    v = boot[np.isfinite(boot)]
    if len(v) < 2 or not math.isfinite(estimate):
        return [float("nan")] * 2
    half = Z95 * float(v.std(ddof=1))
    hi = estimate + half
    return [float(estimate - half), float(min(hi, upper) if upper is not None else hi)]


@dataclass
class Agreement:
    """Predicted vs actual over one set of points (concepts or features), with bootstrap CIs over
    prompts and, for concepts, the permutation null (see the module docstring)."""

    level: str  # "concepts" | "features"
    fit: Fit
    r2_ci: list[float]
    r2_scaled_ci: list[float]
    spearman_ci: list[float]
    slope_ci: list[float]
    reliability: float  # split-half reliability of the actual values over prompts
    null: dict | None = None  # {"r2_mean", "r2_p95", "r2_scaled_mean", "p_value", "n"}
    points: list[dict] = field(default_factory=list)  # {"id", "predicted", "actual", "actual_se"}
    predicted_reliability: float = float("nan")  # split-half reliability of the predicted values over pairs
    ceiling: float = float("nan")  # noise_ceiling of the two: about the best R² this much data allows


def agreement(
    level: str,
    predicted: np.ndarray,
    per_prompt: np.ndarray,
    ids: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    predicted_halves: np.ndarray | None = None,
) -> Agreement:
    """`fit` of the prompts' mean of `per_prompt` (prompts, points) against `predicted` (points,),
    with 95% bootstrap CIs over prompts (n_boot multinomial resamples, `bootstrap_ci`) of R²,
    the scaled R², Spearman and the slope, the split-half reliability, and each point's numbers.
    With `predicted_halves` (splits, 2, points: the prediction from random halves of the training
    pairs, `Prediction.fire_halves` mapped to the points) also the prediction's reliability and the
    noise ceiling on R² that the two reliabilities set."""
    per_prompt = np.asarray(per_prompt, dtype=np.float64)
    actual = per_prompt.mean(0)
    n = len(per_prompt)
    f = fit(predicted, actual)
    rng = np.random.default_rng(seed)
    boots = []
    if n > 1 and len(actual) >= 3:
        W = rng.multinomial(n, np.full(n, 1 / n), size=n_boot)  # (n_boot, prompts)
        for sample in (W @ per_prompt) / n:  # (points,) each
            b = fit(predicted, sample)
            boots.append((b.r2, b.r2_scaled, b.spearman, b.slope))
    boots = np.array(boots, dtype=np.float64).reshape(-1, 4)
    se = per_prompt.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(actual)
    ids = list(range(len(actual))) if ids is None else list(ids)
    points = [{"id": ids[i] if not isinstance(ids[i], np.integer) else int(ids[i]),
               "predicted": float(predicted[i]), "actual": float(actual[i]), "actual_se": float(se[i])}
              for i in range(len(actual))]
    cis = [bootstrap_ci(boots[:, i], v, cap) for i, (v, cap) in
           enumerate(((f.r2, 1.0), (f.r2_scaled, 1.0), (f.spearman, 1.0), (f.slope, None)))]
    reliability = split_half_reliability(per_prompt, np.arange(per_prompt.shape[1]), seed=seed)
    predicted_reliability = halves_reliability(predicted_halves)
    return Agreement(level, f, *cis, reliability, None, points, predicted_reliability,
                     noise_ceiling(predicted_reliability, reliability))


def permutation_null(
    concepts: ConceptGroups, predicted_f: np.ndarray, actual_f: np.ndarray, observed: Fit,
    n_perm: int = 1000, seed: int = 0,
) -> dict:
    """R² of concepts whose member features are dealt out at random (the same concept sizes, the
    same features), against the observed fit: {"r2_mean", "r2_p95", "r2_scaled_mean",
    "r2_scaled_p95", "p_value" (share of permutations with R² >= observed, +1 smoothed), "n"}."""
    rng = np.random.default_rng(seed)
    r2, r2s = [], []
    for _ in range(n_perm):
        shuffled = rng.permutation(concepts.features)
        f = fit(concepts.mean(predicted_f, shuffled), concepts.mean(actual_f, shuffled))
        r2.append(f.r2)
        r2s.append(f.r2_scaled)
    r2, r2s = np.array(r2), np.array(r2s)
    ok = np.isfinite(r2)
    if not ok.any() or not math.isfinite(observed.r2):
        return {"r2_mean": float("nan"), "r2_p95": float("nan"), "r2_scaled_mean": float("nan"),
                "r2_scaled_p95": float("nan"), "p_value": float("nan"), "n": int(n_perm)}
    return {
        "r2_mean": float(r2[ok].mean()),
        "r2_p95": float(np.quantile(r2[ok], 0.95)),
        "r2_scaled_mean": float(np.nanmean(r2s)),
        "r2_scaled_p95": float(np.nanquantile(r2s, 0.95)),
        "p_value": float((1 + (r2[ok] >= observed.r2).sum()) / (1 + ok.sum())),
        "n": int(n_perm),
    }


@dataclass
class Prediction:
    """What the training pairs predict, per feature: the mean-activation delta's mean and SD, and
    the thresholded disparity's mean and SD, over `n` pairs, and both again from random halves of
    the pairs (how reproducible the prediction is at this data size: `halves_reliability`)."""

    n: int
    mean: np.ndarray  # (d,)
    sd: np.ndarray
    fire: np.ndarray  # (d,) mean of b
    fire_sd: np.ndarray
    mean_halves: np.ndarray | None = None  # (splits, 2, d) `half_means` of the deltas; None: < 4 pairs
    fire_halves: np.ndarray | None = None  # (splits, 2, d) the same of b


def predict(chosen: ReplyStats, rejected: ReplyStats, tau: float = TAU, n_splits: int = 20,
            seed: int = 0) -> Prediction:
    """The Prediction from per-reply stats (`mean` and `freq`) of the training pairs, dense or
    scipy-sparse (n, d); the halves from `n_splits` seeded random splits of the pairs."""
    delta = chosen.mean - rejected.mean  # (pairs, d)
    b = disparity(chosen.freq, rejected.freq, tau)  # (pairs, d) in {-1, 0, 1}
    mean, sd = column_moments(delta)
    fire, fire_sd = column_moments(b)
    return Prediction(chosen.mean.shape[0], mean, sd, fire, fire_sd,
                      half_means(delta, n_splits, seed), half_means(b, n_splits, seed))


def _halves(halves: np.ndarray | None, index) -> np.ndarray | None:
    """`halves` (splits, 2, d) at feature `index`, or mapped by a callable (a concepts' mean)."""
    if halves is None:
        return None
    return index(halves) if callable(index) else halves[..., index]


def compare(
    prediction: Prediction,
    before: ReplyStats,
    after: ReplyStats,
    n_prompts: int,
    concepts: ConceptGroups | None = None,
    *,
    tau: float = TAU,
    top_k: int = 50,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
) -> dict:
    """Every agreement between `prediction` and the rollouts' change, JSON-ready.

    `before` and `after` hold n_prompts x samples replies, prompt-major (the samples of prompt 0
    first). Returns {"mean_activation": {"significant", "top_k", "nonzero": Fit, "k",
    "reliability"}, "features": Agreement (thresholded, features whose predicted disparity is
    significant), "concepts": Agreement with its null (None without concepts),
    "concepts_mean_activation": the same with the mean-activation statistic, "concepts_clear" and
    "concepts_clear_mean_activation": the two again over each concept's members whose predicted
    shift is CI-clear (None with fewer than 3 such concepts), "per_prompt": {"mean", "fire"}
    (prompts, d) arrays, "sets": the mean-activation feature sets (not JSON)}.
    """
    samples = len(before.mean) // n_prompts
    mean_pp = (after.mean - before.mean).reshape(n_prompts, samples, -1).mean(1)  # (prompts, d)
    fire_pp = disparity(after.freq, before.freq, tau).reshape(n_prompts, samples, -1).mean(1)
    p = prediction
    mean_actual = mean_pp.mean(0)
    significant = significant_features(p.mean, p.sd, p.n)
    sets = {"significant": significant, "top_k": top_k_features(p.mean, top_k),
            "nonzero": np.nonzero(p.mean)[0]}
    mean_activation = {name: asdict(fit(p.mean[idx], mean_actual[idx])) for name, idx in sets.items()}
    # the ceiling over the features with predicted != 0, not a set the prediction picked: picking by
    # the full prediction favours features whose noise agrees in both halves (reliability inflated)
    nonzero = sets["nonzero"]
    nonzero_reliability = split_half_reliability(mean_pp, nonzero, seed=seed)
    predicted_reliability = halves_reliability(_halves(p.mean_halves, nonzero))
    mean_activation.update(k=top_k, reliability=split_half_reliability(mean_pp, significant, seed=seed),
                           nonzero_reliability=nonzero_reliability, predicted_reliability=predicted_reliability,
                           ceiling=noise_ceiling(predicted_reliability, nonzero_reliability))
    feats = significant_features(p.fire, p.fire_sd, p.n)
    out = {
        "mean_activation": mean_activation,
        "features": agreement("features", p.fire[feats], fire_pp[:, feats], feats, n_boot, seed),
        "concepts": None,
        "per_prompt": {"mean": mean_pp.astype(np.float32), "fire": fire_pp.astype(np.float32)},
        "sets": sets,
    }
    for key in ("concepts_mean_activation", "concepts_clear", "concepts_clear_mean_activation"):
        out[key] = None
    if concepts is not None and len(concepts) >= 3:
        out["concepts"] = concept_agreement(concepts, p.fire, fire_pp, n_boot, n_perm, seed, p.fire_halves)
        out["concepts_mean_activation"] = concept_agreement(concepts, p.mean, mean_pp, n_boot, n_perm, seed,
                                                            p.mean_halves)
        # a concept's members that predict nothing clear of noise only dilute its average (no
        # ceiling for these: their members were picked by the prediction, see above)
        for key, clear, predicted, actual in (("concepts_clear", feats, p.fire, fire_pp),
                                              ("concepts_clear_mean_activation", significant, p.mean, mean_pp)):
            kept = concepts.restricted(clear)
            if len(kept) >= 3:
                out[key] = concept_agreement(kept, predicted, actual, n_boot, n_perm, seed)
    return out


def concept_agreement(concepts: ConceptGroups, predicted_fire: np.ndarray, per_prompt_fire: np.ndarray,
                      n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
                      predicted_halves: np.ndarray | None = None) -> Agreement:
    """The concept-level Agreement, with its permutation null, from per-feature values: the
    predicted disparity (d,) and the per-prompt actual change (prompts, d) of the firing share (or
    of any per-feature statistic: the mean activation's delta and change give its concept level);
    `predicted_halves` (splits, 2, d) gives the prediction's reliability and the noise ceiling."""
    c = agreement("concepts", concepts.mean(predicted_fire), concepts.mean(per_prompt_fire), concepts.ids,
                  n_boot, seed, _halves(predicted_halves, concepts.mean))
    c.null = permutation_null(concepts, predicted_fire, per_prompt_fire.mean(0), c.fit, n_perm, seed)
    return c


def summarise_seeds(values: Sequence[float]) -> dict:
    """{"mean", "sd", "min", "max", "n", "values"} of per-seed numbers (NaN ignored)."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"mean": float("nan"), "sd": float("nan"), "min": float("nan"), "max": float("nan"),
                "n": 0, "values": list(values)}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v)), "values": [float(x) for x in values]}


SEED_METRICS = {  # what the summary calls a number -> where it is in a report's JSON
    "concepts R² (fit)": ("concepts", "fit", "r2"),
    "concepts R² (y = s·x)": ("concepts", "fit", "r2_scaled"),
    "concepts Spearman": ("concepts", "fit", "spearman"),
    "concepts slope": ("concepts", "fit", "slope"),
    "concepts null R²": ("concepts", "null", "r2_mean"),
    "concepts null p": ("concepts", "null", "p_value"),
    "concepts reliability, predicted": ("concepts", "predicted_reliability"),
    "concepts reliability, actual": ("concepts", "reliability"),
    "concepts R² noise ceiling": ("concepts", "ceiling"),
    "concepts, mean activation R²": ("concepts_mean_activation", "fit", "r2"),
    "concepts, mean activation null R²": ("concepts_mean_activation", "null", "r2_mean"),
    "concepts of CI-clear members R²": ("concepts_clear", "fit", "r2"),
    "concepts of CI-clear members null R²": ("concepts_clear", "null", "r2_mean"),
    "concepts of CI-clear members, mean activation R²": ("concepts_clear_mean_activation", "fit", "r2"),
    "concepts of CI-clear members, mean activation null R²": ("concepts_clear_mean_activation", "null", "r2_mean"),
    "features R² (fit)": ("thresholded_features", "fit", "r2"),
    "features R² (y = s·x)": ("thresholded_features", "fit", "r2_scaled"),
    "features Spearman": ("thresholded_features", "fit", "spearman"),
    "mean activation R²": ("significant", "r2"),
    "mean activation Spearman": ("significant", "spearman"),
    "mean activation R², all predicted != 0": ("nonzero", "r2"),
    "mean activation R² noise ceiling, all predicted != 0": ("ceiling",),
}


def seed_summary(reports: Sequence[dict]) -> dict:
    """Mean, SD, min and max over runs (data-order seeds) of each SEED_METRICS number of their
    validation reports (`ValidationReport.to_json`), which must validate one workspace with one
    decoding and prompt source and come from distinct runs: {"n_runs", "workspace", "decoding",
    "prompts_source", "runs", "metrics": {name: summarise_seeds}}. Raises ValidationError for fewer
    than two reports, or reports that do not compare."""
    if len(reports) < 2:
        raise ValidationError("a seed summary needs the reports of at least two runs")
    first = reports[0]
    for key in ("workspace", "decoding", "prompts_source", "tau", "match_length"):
        for r in reports[1:]:
            if r.get(key) != first.get(key):
                raise ValidationError(f"the reports differ in {key} ({first.get(key)!r} vs {r.get(key)!r}): "
                                      "summarise runs validated the same way")
    runs = [r.get("trained") for r in reports]
    if len(set(runs)) < len(runs):
        raise ValidationError(f"run {next(x for x in runs if runs.count(x) > 1)} is given twice")

    def value(r: dict, where: tuple[str, ...]) -> float:
        for key in where:  # a report without concepts (or a null) holds None there
            r = r.get(key) if isinstance(r, dict) else None
        return float("nan") if r is None else float(r)

    metrics = {name: summarise_seeds([value(r, where) for r in reports]) for name, where in SEED_METRICS.items()}
    return {"n_runs": len(reports), "workspace": first.get("workspace"), "decoding": first.get("decoding"),
            "prompts_source": first.get("prompts_source"), "runs": runs, "metrics": nan_to_none(metrics)}


def read_report(path: Path | str) -> dict:
    """A validation report: the JSON file, or a train-dpo folder's default one (validation.json).
    Raises ValidationError when there is none or it is no report."""
    from core.data.jsonfile import read_json_file

    path = Path(path)
    if path.is_dir():
        path = path / "validation.json"
    if not path.is_file():
        raise ValidationError(f"{path}: no validation report (run datadebug validate first)")
    raw = read_json_file(path, "the validation report", ValidationError)
    if not isinstance(raw, dict) or "trained" not in raw or "concepts" not in raw:
        raise ValidationError(f"{path}: not a validation report (no 'trained' or 'concepts' field)")
    return raw


# -- prompts ------------------------------------------------------------------------------------------


def held_out_prompts(dataset: Path | str, record, n: int, seed: int = 0) -> list[tuple[int, tuple]]:
    """`n` prompts (seeded random choice, returned in file order) of held-out pairs of `dataset`,
    as (source_index, prompt): the run's held-out split when it has one (`record.heldout_indices`),
    else every pair not in `record.source_indices`. Raises ValidationError when none is left."""
    from core.data.ingest import read_pairs

    pairs = read_pairs(dataset, skip_invalid=True).pairs
    if record.heldout_indices:
        wanted = set(record.heldout_indices)
        pairs = [p for p in pairs if p.source_index in wanted]
    else:
        trained = set(record.source_indices)
        pairs = [p for p in pairs if p.source_index not in trained]
    if not pairs:
        raise ValidationError(
            f"every pair of {dataset} was trained on, so none is held out; train with --holdout "
            "or pass --prompts FILE"
        )
    chosen = sorted(np.random.default_rng(seed).permutation(len(pairs))[:n].tolist())
    return [(pairs[i].source_index, pairs[i].prompt) for i in chosen]


# -- validate -----------------------------------------------------------------------------------------


@dataclass
class FeatureComparison:
    feature: int
    predicted: float
    actual: float
    actual_se: float  # standard error of the actual shift over prompts
    promoted: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    workspace: str
    trained: str
    model: str
    sae: str
    layer: int
    n_pairs_trained: int
    n_pairs_predicted: int  # trained pairs found in the workspace: the prediction's basis
    n_prompts: int
    n_replies: int  # per model: prompts x samples
    prompts_source: str
    prompt_source_indices: list[int]  # held-out pairs whose prompts were used ([] with --prompts)
    decoding: dict
    tau: float
    match_length: bool  # each reply pair read to the shorter one's length
    reply_tokens: dict  # {"before", "after"}: mean tokens per reply (as read, before any match_length cut)
    n_features: int  # mean activation: features with a significant predicted shift (headline set)
    r2: float  # mean activation, over the significant features
    pearson_r2: float
    spearman: float
    significant: Fit
    top_k: Fit
    k: int
    nonzero: Fit
    actual_reliability: float  # split-half over prompts, mean activation, the CI-clear features
    # mean activation over the features with predicted != 0 (`nonzero`): the split-half reliability
    # of the actual shifts (over prompts) and of the prediction (over pairs), and their noise_ceiling
    nonzero_reliability: float
    predicted_reliability: float
    ceiling: float
    thresholded_features: Agreement  # the paper's statistic, per feature
    concepts: Agreement | None  # the paper's statistic, per concept (None: no concepts given)
    concepts_mean_activation: Agreement | None  # the mean activation, per concept (the same concepts)
    concepts_clear: Agreement | None  # per concept, over its members with a CI-clear prediction
    concepts_clear_mean_activation: Agreement | None
    n_concepts: int
    behaviour: dict  # {"refusal" | "url" | "goblin": {"before": rate, "after": rate}}
    probes: dict  # {PROBES name: {"lift": nats per sentence, "se", "n_sentences"}} (probe_lifts)
    features: list[FeatureComparison]  # mean activation, the top-K by |predicted|
    plot: str | None
    concepts_plot: str | None
    generations: str | None
    seconds: float

    def to_json(self) -> dict:
        """JSON-ready dict; NaN becomes null."""
        return nan_to_none(asdict(self))


def nan_to_none(obj):
    """`obj` with every NaN float replaced by None, recursively through dicts and lists."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    return obj


def _workspace_concepts(ws) -> ConceptGroups | None:
    """The workspace's grouped response concepts (`core.analysis.structure.load_concepts`, fitted on first
    use and cached there), or None when it has none."""
    from core.analysis.structure import load_concepts

    groups = ConceptGroups.from_concepts(load_concepts(ws))
    return groups if len(groups) else None


def validate(
    workspace: Path | str,
    trained: Path | str,
    *,
    prompts: Path | str | None = None,
    n_prompts: int = 32,
    decoding: Decoding = Decoding(),
    concepts: ConceptGroups | Path | str | None = None,
    tau: float = TAU,
    top_k: int = 50,
    n_boot: int = 1000,
    n_perm: int = 1000,
    plot: Path | str | None = None,
    match_length: bool = False,
    device: str | None = None,
    catalog=None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> ValidationReport:
    """Compare the workspace's predicted shifts with the shifts DPO actually caused (module doc).

    Args:
        workspace: the indexed workspace of the dataset the model was trained on.
        trained: a `core.train.training.train_on_dataset` output folder (its `model/` and record).
        prompts: a prompt file (see `core.train.rollout.load_prompts`); default: `n_prompts` held-out
            prompts of the workspace's dataset (`held_out_prompts`).
        decoding: how replies are made; T = 1 with several samples is the paper's protocol.
        concepts: ConceptGroups, a JSON file of them (`read_concepts`), or None for the
            workspace's own (`core.analysis.structure.load_concepts`, fitted on first use).
        plot: where to write the feature scatter PNG (default `trained/validation.png`); beside it
            go `<stem>_concepts.png`, the replies (`<stem>_replies.jsonl`), the report
            (`<stem>.json`) and the numbers (`<stem>_shifts.npz`: predicted, predicted_sd,
            predicted_fire, actual, actual_se, significant, per_prompt, per_prompt_fire).
        match_length: read each (before, after) reply pair to the shorter one's token count, so that
            a change of reply length alone does not count as every feature firing more (the report
            gives the mean lengths either way). Off by default: it also cuts what a longer reply added.

    Progress: stages "load", "generate" (replies), "probe", "encode". Returns a ValidationReport.
    Raises ValidationError when the workspace indexed another dataset or model than was trained,
    none of the trained pairs is in the workspace, or no prompt is left; WorkspaceError for no
    workspace; Cancelled when `cancel` is set.
    """
    start = time.perf_counter()
    emit = reporter(progress)
    if catalog is None:
        from core.model.catalog import load_catalog

        catalog = load_catalog()
    trained = Path(trained)
    ws, meta, record = _trained_on_workspace(workspace, trained)
    if isinstance(concepts, str | Path):
        concepts = read_concepts(concepts)
    elif concepts is None:
        concepts = _workspace_concepts(ws)
    prediction = predict_trained(ws, record, tau)
    prompt_list, prompt_indices, source = _prompts(prompts, n_prompts, meta, record, decoding.seed)
    rollout = roll_out(trained, record, meta, prompt_list, decoding, catalog, device, emit, cancel)
    measured = measure(rollout, meta, catalog, prediction, concepts, decoding, tau=tau, top_k=top_k,
                       n_boot=n_boot, n_perm=n_perm, match_length=match_length, emit=emit, cancel=cancel)
    report = _report(ws, trained, record, meta, prediction, measured, rollout, prompt_list, prompt_indices,
                     source, decoding, concepts, tau, top_k, match_length,
                     Path(plot) if plot else trained / "validation.png")
    write(report, prediction, measured, rollout, prompt_list, prompt_indices)
    report.seconds = time.perf_counter() - start
    Path(report.plot).with_suffix(".json").write_text(json.dumps(report.to_json(), indent=1))
    emit(Progress("encode", "done", rollout.n_replies, rollout.n_replies, unit="replies"))
    return report


def _trained_on_workspace(workspace: Path | str, trained: Path):
    """(workspace, its meta, the run's record), after checking the run trained the workspace's dataset
    and model and finished. Raises ValidationError, WorkspaceError."""
    from core.data.workspace import Workspace
    from core.train.training import read_train_record

    ws = Workspace(workspace)
    meta = ws.meta()
    record = read_train_record(trained)
    if record.dataset_sha256 != meta.get("dataset_sha256"):
        raise ValidationError(
            f"{trained} was trained on {record.dataset}, but workspace {workspace} indexed "
            f"{meta.get('dataset')}; index the training file to predict its shifts"
        )
    if record.model != meta.get("model"):
        raise ValidationError(f"{trained} trained {record.model}; the workspace read {meta.get('model')}")
    if not (trained / "model" / "config.json").is_file():
        raise ValidationError(
            f"{trained} has no finished model (training stopped at step {record.steps} of "
            f"{record.total_steps}); rerun the same train-dpo command to resume"
        )
    return ws, meta, record


def predict_trained(ws, record, tau: float = TAU) -> Prediction:
    """Predict: the shifts the workspace predicts from the pairs the run trained on (those it indexed).
    Raises ValidationError when it indexed none of them."""
    from core.analysis.shifts import Analysis

    analysis = Analysis(ws)
    rows = analysis.rows(record.source_indices)
    if not len(rows):
        raise ValidationError(f"none of the pairs the run trained on ({record.dataset}) is in workspace {ws.path}")
    c_freq, r_freq = (m[rows] for m in analysis.frequencies())
    return predict(ReplyStats(analysis.chosen[rows], c_freq, None),
                   ReplyStats(analysis.rejected[rows], r_freq, None), tau)


def _prompts(prompts, n_prompts: int, meta: dict, record, seed: int):
    """(prompts, their source indices in the dataset or [], where they come from)."""
    from core.train.rollout import load_prompts

    if prompts is not None:
        prompt_list, source, indices = load_prompts(prompts)[:n_prompts], str(prompts), []
    else:
        chosen = held_out_prompts(meta["dataset"], record, n_prompts, seed)
        prompt_list, indices = [p for _, p in chosen], [s for s, _ in chosen]
        source = ("held-out split" if record.heldout_indices else "untrained pairs") + f" of {meta['dataset']}"
    if not prompt_list:
        raise ValidationError(f"no prompts in {prompts}")
    return prompt_list, indices, source


@dataclass
class Rollout:
    """Replies of the model before and after training to the same prompts, and the probe sentences'
    log-probabilities under each. `base` and `tokenizer` are the model before training."""

    base: object
    tokenizer: object
    ids: list  # each prompt's token ids
    replies: dict  # "before" / "after" -> per prompt, its replies
    probe_lp: dict  # "before" / "after" -> probe_logprobs
    probe_names: list
    per_prompt: int

    @property
    def n_replies(self) -> int:
        return 2 * len(self.ids) * self.per_prompt


def roll_out(trained: Path, record, meta: dict, prompt_list, decoding: Decoding, catalog, device, emit,
             cancel) -> Rollout:
    """Roll out: replies of the base (or the run's starting model) and of the trained model, decoded
    alike, and the probe sentences' log-probabilities under each. Progress "load", "generate", "probe"."""
    from transformers import AutoModelForCausalLM

    from core.model.chat import chat_prompt_ids
    from core.model.lm import load_full_model
    from core.train.rollout import generate_replies, probe_logprobs

    emit(Progress("load", f"loading {record.model} (base and trained)"))
    base, tokenizer = load_full_model(catalog.model(record.model), device=device)
    if record.init_model:  # the run started from another model (e.g. an SFT run): that is "before"
        from core.train.dpo import load_weights

        load_weights(base, Path(record.init_model))
    max_tokens = int(meta.get("max_tokens", 256))
    ids = [chat_prompt_ids(tokenizer, p, 2 * max_tokens) for p in prompt_list]
    out = Rollout(base, tokenizer, ids, {}, {}, [], decoding.replies_per_prompt)
    total = out.n_replies
    out.probe_names, sentences = probe_sentences()
    for which in ("before", "after"):
        if which == "before":
            lm = base
        else:  # the base's dtype and device: identical decoding
            first = next(base.parameters())
            lm = AutoModelForCausalLM.from_pretrained(trained / "model", dtype=first.dtype)
            lm.to(first.device).eval()
        offset = 0 if which == "before" else total // 2

        def on_batch(done: int, _total: int, which=which, offset=offset) -> None:
            emit(Progress("generate", f"replies {which} training", offset + done, total, unit="replies"))

        out.replies[which] = generate_replies(lm, tokenizer, ids, decoding, cancel=cancel, on_batch=on_batch)
        emit(Progress("probe", f"probe sentences {which} training"))
        out.probe_lp[which] = probe_logprobs(lm, tokenizer, ids, sentences, cancel)
        if which == "after":
            del lm
    return out


@dataclass
class Measured:
    """What the rollout's replies show through the original model and the SAE, against the prediction."""

    result: dict  # compare()'s
    actual: np.ndarray  # (d_sae,) mean shift per feature over prompts
    actual_se: np.ndarray  # (d_sae,)
    flat_before: list
    flat_after: list
    reply_tokens: dict


def measure(rollout: Rollout, meta: dict, catalog, prediction: Prediction, concepts, decoding: Decoding, *,
            tau: float, top_k: int, n_boot: int, n_perm: int, match_length: bool, emit, cancel) -> Measured:
    """Measure: read both models' replies through the original model and the workspace's SAE, and
    compare the shifts they show with the prediction (`compare`). Progress "encode"."""
    from core.model.lm import ResidualReader
    from core.model.sae import encode, load_sae
    from core.model.store import recorded_sae, sae_dir
    from core.train.rollout import read_reply_pairs

    emit(Progress("encode", "reading replies through the original model + SAE"))
    max_tokens = int(meta.get("max_tokens", 256))
    reader = ResidualReader(rollout.base, rollout.tokenizer, int(meta["layer"]))
    sae_entry = recorded_sae(meta["sae"], meta.get("sae_path"), meta.get("sae_sha256"), catalog)
    sae = load_sae(sae_dir(sae_entry), device=str(reader.device))
    ids, per_prompt = rollout.ids, rollout.per_prompt
    flat_ids = [ids[i] for i in range(len(ids)) for _ in range(per_prompt)]
    flat_before = [r for rs in rollout.replies["before"] for r in rs]
    flat_after = [r for rs in rollout.replies["after"] for r in rs]
    before, after = read_reply_pairs(reader, lambda acts: encode(sae, acts), flat_ids, flat_before,
                                     flat_after, max_tokens, cancel=cancel, common_length=match_length)
    reply_tokens = {which: float(np.mean([len(reader.reply_ids(r)[:max_tokens]) for r in rs]))
                    for which, rs in (("before", flat_before), ("after", flat_after))}
    result = compare(prediction, before, after, len(ids), concepts, tau=tau, top_k=top_k,
                     n_boot=n_boot, n_perm=n_perm, seed=decoding.seed)
    mean_pp = result["per_prompt"]["mean"]
    actual = mean_pp.mean(0)
    actual_se = mean_pp.std(0, ddof=1) / np.sqrt(len(mean_pp)) if len(mean_pp) > 1 else np.zeros_like(actual)
    return Measured(result, actual, actual_se, flat_before, flat_after, reply_tokens)


def _report(ws, trained: Path, record, meta: dict, p: Prediction, m: Measured, rollout: Rollout, prompt_list,
            prompt_indices, source: str, decoding: Decoding, concepts, tau: float, top_k: int,
            match_length: bool, plot_path: Path) -> ValidationReport:
    from core.train.rollout import behaviour_rates

    result = m.result
    info = ws.feature_info()
    top = result["sets"]["top_k"]
    features = [
        FeatureComparison(int(f), float(p.mean[f]), float(m.actual[f]), float(m.actual_se[f]),
                          list(info.get(int(f), {}).get("promoted") or [])[:3])
        for f in top
    ]
    rates_before, rates_after = behaviour_rates(m.flat_before), behaviour_rates(m.flat_after)
    behaviour = {k: {"before": rates_before[k], "after": rates_after[k]} for k in rates_before}
    ma = result["mean_activation"]
    sig = Fit(**ma["significant"])
    return ValidationReport(
        workspace=str(ws.path),
        trained=str(trained),
        model=record.model,
        sae=str(meta["sae"]),
        layer=int(meta["layer"]),
        n_pairs_trained=len(record.source_indices),
        n_pairs_predicted=int(p.n),
        n_prompts=len(prompt_list),
        n_replies=len(m.flat_before),
        prompts_source=source,
        prompt_source_indices=prompt_indices,
        decoding=asdict(decoding),
        tau=tau,
        match_length=match_length,
        reply_tokens=m.reply_tokens,
        n_features=sig.n_features,
        r2=sig.r2,
        pearson_r2=sig.pearson_r2,
        spearman=sig.spearman,
        significant=sig,
        top_k=Fit(**ma["top_k"]),
        k=top_k,
        nonzero=Fit(**ma["nonzero"]),
        actual_reliability=ma["reliability"],
        nonzero_reliability=ma["nonzero_reliability"],
        predicted_reliability=ma["predicted_reliability"],
        ceiling=ma["ceiling"],
        thresholded_features=result["features"],
        concepts=result["concepts"],
        concepts_mean_activation=result["concepts_mean_activation"],
        concepts_clear=result["concepts_clear"],
        concepts_clear_mean_activation=result["concepts_clear_mean_activation"],
        n_concepts=len(concepts) if concepts is not None else 0,
        behaviour=behaviour,
        probes=probe_lifts(rollout.probe_lp["before"], rollout.probe_lp["after"], rollout.probe_names),
        features=features,
        plot=str(plot_path),
        concepts_plot=None,
        generations=str(plot_path.with_name(plot_path.stem + "_replies.jsonl")),
        seconds=0.0,
    )


def write(report: ValidationReport, p: Prediction, m: Measured, rollout: Rollout, prompt_list,
          prompt_indices) -> None:
    """Write: the replies (JSONL), the feature scatter and concept plots, and the numbers (npz) beside
    `report.plot`; sets `report.concepts_plot`."""
    from core.checks.plots import agreement_plot, scatter_plot

    plot_path = Path(report.plot)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    with Path(report.generations).open("w", encoding="utf-8") as f:
        for i, prompt in enumerate(prompt_list):
            f.write(json.dumps({
                "source_index": prompt_indices[i] if prompt_indices else None,
                "prompt": list(prompt),
                "before": rollout.replies["before"][i],
                "after": rollout.replies["after"][i],
            }, ensure_ascii=False) + "\n")
    result = m.result
    scatter_plot(p.mean, m.actual, result["sets"]["significant"], result["sets"]["top_k"], report, plot_path)
    if report.concepts is not None:
        report.concepts_plot = str(agreement_plot(report.concepts, f"{report.model} / {report.sae}",
                                                  plot_path.with_name(plot_path.stem + "_concepts.png")))
    np.savez_compressed(
        plot_path.with_name(plot_path.stem + "_shifts.npz"),
        predicted=p.mean, predicted_sd=p.sd, predicted_fire=p.fire, actual=m.actual,
        actual_se=m.actual_se, significant=result["sets"]["significant"], per_prompt=result["per_prompt"]["mean"],
        per_prompt_fire=result["per_prompt"]["fire"],
    )
