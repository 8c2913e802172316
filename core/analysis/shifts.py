"""Predicted shifts: for each SAE feature, how DPO on these pairs would move it.

For feature f and pair i, delta_i = a_f(chosen_i) - a_f(rejected_i), where a_f(reply) is f's mean
activation over the reply's tokens. DPO raises the likelihood of chosen replies relative to rejected
ones, so features with positive mean delta are predicted to be amplified, negative ones suppressed.

Per feature we report:
    shift        mean delta over pairs
    effect_size  Cohen's d of the deltas (mean / SD)
    ci           95% bootstrap CI of the mean (pairs resampled with replacement)
    stability    share of random split-halves in which both halves agree in sign with the whole
    n_firing     pairs in which f fires in either reply
    score        the CI bound nearest zero (0 when the CI crosses zero): the shift we are 95% sure
                 of. A feature that fires strongly in one pair has a CI that reaches zero, so it
                 cannot top the ranking however large its single delta.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from core.analysis.calibration import DEFAULT_FDR, bh_q, check_fdr, sign_flip_p
from core.analysis.concepts import reference_max
from core.errors import UsageError
from core.data.workspace import Workspace

Z95 = 1.959964


@dataclass
class TopPair:
    source_index: int
    delta: float


@dataclass
class FeatureShift:
    feature: int
    label: str
    direction: str  # "amplified" | "suppressed"
    shift: float
    effect_size: float
    ci: tuple[float, float]
    stable: bool
    stability: float
    n_firing: int
    score: float
    top_pairs: list[TopPair] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    p: float = 1.0  # against labels swapped at random per pair (core.analysis.calibration.sign_flip_p)
    q: float = 1.0  # Benjamini–Hochberg over every feature that fires in some kept pair
    established: bool = False  # q < the report's fdr


@dataclass(frozen=True)
class WhatIf:
    """Every feature's predicted shift over the pairs kept (index f is SAE feature f)."""

    n_kept: int
    shift: np.ndarray  # (d_sae,) mean delta
    effect: np.ndarray  # (d_sae,) Cohen's d
    n_firing: np.ndarray  # (d_sae,) pairs where the feature fires in either reply


@dataclass
class ShiftReport:
    model: str
    sae: str
    layer: int
    n_pairs: int
    n_excluded: int
    features: list[FeatureShift]  # per direction: the established first (by score), then the rest
    n_tested: int = 0  # features that fire in some kept pair: q is over these
    n_established: int = 0  # of them, q < fdr (either direction; may exceed the rows listed)
    fdr: float = DEFAULT_FDR

    def to_json(self) -> dict:
        """The stable JSON shape documented in README."""
        out = asdict(self)
        for f in out["features"]:
            f["ci"] = list(f["ci"])
        return out

    @property
    def amplified(self) -> list[FeatureShift]:
        return [f for f in self.features if f.direction == "amplified"]

    @property
    def suppressed(self) -> list[FeatureShift]:
        return [f for f in self.features if f.direction == "suppressed"]


def _sparse(feats: pa.ChunkedArray, vals: pa.ChunkedArray, d_sae: int) -> sp.csr_matrix:
    """CSR (rows, d_sae) straight from Arrow list columns: their flat values and offsets, no Python loop."""
    f = feats.combine_chunks() if isinstance(feats, pa.ChunkedArray) else feats
    v = vals.combine_chunks() if isinstance(vals, pa.ChunkedArray) else vals
    offsets = f.offsets.to_numpy()
    indices = f.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]].astype(np.int32)
    data = v.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]].astype(np.float32)
    return sp.csr_matrix((data, indices, (offsets - offsets[0]).astype(np.int64)), shape=(len(f), d_sae))


class Analysis:
    """A workspace's per-reply feature summaries as sparse matrices, loaded once. Raises
    WorkspaceError for a workspace of an older schema or without indexed pairs.

    Attributes:
        source_index: (n,) source positions of the indexed pairs, ascending; row i of every matrix.
        chosen, rejected: (n, d_sae) CSR mean activations over reply tokens.
        delta: chosen - rejected.
    """

    def __init__(self, ws: Workspace):
        ws.require_current()
        ws.require_pairs()
        self.ws = ws
        self.meta = ws.meta()
        self.d_sae = int(self.meta["d_sae"])
        t = ws.pairs_columns(["source_index", "chosen_feat", "chosen_mean", "rejected_feat", "rejected_mean"])
        self.source_index = t["source_index"].to_numpy()
        self.row_of = {int(s): i for i, s in enumerate(self.source_index)}
        self.chosen = _sparse(t["chosen_feat"], t["chosen_mean"], self.d_sae)
        self.rejected = _sparse(t["rejected_feat"], t["rejected_mean"], self.d_sae)
        self.delta = (self.chosen - self.rejected).tocsr()
        self.delta_sq = self.delta.multiply(self.delta).tocsr()
        fires = ((self.chosen > 0) + (self.rejected > 0)).astype(np.float32)
        self.fires = fires.tocsr()
        self._sum = np.asarray(self.delta.sum(0)).ravel()
        self._sum_sq = np.asarray(self.delta_sq.sum(0)).ravel()
        self._n_firing = np.asarray(self.fires.sum(0)).ravel()
        self._features = None
        self._tokens = None
        self._reply_tokens: dict[tuple[int, str], list[str]] = {}
        self._labels: dict[int, str] = {}
        self._what_if_cache = None
        self._source_set: frozenset | None = None
        self._maxima: tuple[sp.csr_matrix, sp.csr_matrix] | None = None
        self._reference_max: np.ndarray | None = None
        self._freqs: tuple[sp.csr_matrix, sp.csr_matrix] | None = None
        self._prompt_freq: sp.csr_matrix | None = None

    @property
    def n(self) -> int:
        return len(self.source_index)

    def maxima(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(chosen, rejected) (n, d_sae) CSR of each feature's max activation over a reply's tokens,
        read from the workspace on first use (most views need only the means)."""
        if self._maxima is None:
            t = self.ws.pairs_columns(["chosen_feat", "chosen_max", "rejected_feat", "rejected_max"])
            self._maxima = tuple(_sparse(t[f"{s}_feat"], t[f"{s}_max"], self.d_sae) for s in ("chosen", "rejected"))
        return self._maxima

    def reference_max(self) -> np.ndarray:
        """(d_sae,) each feature's largest activation over every reply (core.analysis.concepts.reference_max
        of `maxima`): what a strong firing is measured against. Computed on first use."""
        if self._reference_max is None:
            self._reference_max = reference_max(*self.maxima())
        return self._reference_max

    def frequencies(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(chosen, rejected) (n, d_sae) CSR of each feature's firing frequency in a reply: the share
        of its tokens the feature fires on. Read on first use."""
        if self._freqs is None:
            t = self.ws.pairs_columns(["chosen_feat", "chosen_freq", "rejected_feat", "rejected_freq"])
            self._freqs = tuple(_sparse(t[f"{s}_feat"], t[f"{s}_freq"], self.d_sae) for s in ("chosen", "rejected"))
        return self._freqs

    def prompt_frequencies(self) -> sp.csr_matrix:
        """(n, d_sae) CSR of each feature's firing frequency over the pair's prompt tokens (the chat
        template's fixed opening left out). Read on first use."""
        if self._prompt_freq is None:
            t = self.ws.pairs_columns(["prompt_feat", "prompt_freq"])
            self._prompt_freq = _sparse(t["prompt_feat"], t["prompt_freq"], self.d_sae)
        return self._prompt_freq

    def check_feature(self, feature) -> int:
        """`feature` as an int when it is one of the SAE's features; UsageError naming the range
        otherwise (a negative id would silently index from the end)."""
        if isinstance(feature, bool) or not isinstance(feature, int | np.integer) or not 0 <= feature < self.d_sae:
            raise UsageError(f"feature {feature} is outside 0..{self.d_sae - 1} (this SAE has {self.d_sae} features)")
        return int(feature)

    def rows(self, source_indices) -> np.ndarray:
        """Row numbers of the given source indices (unknown ones are ignored)."""
        return np.array([self.row_of[int(s)] for s in source_indices if int(s) in self.row_of], dtype=np.int64)

    # -- the fast path: every feature's moments, with some pairs left out -------------------------

    def moments(self, excluded_rows: np.ndarray | None = None):
        """(n, mean, sd, n_firing) per feature over all pairs minus `excluded_rows`; O(nnz of excluded)."""
        s, s2, nf, n = self._sum, self._sum_sq, self._n_firing, self.n
        if excluded_rows is not None and len(excluded_rows):
            s = s - np.asarray(self.delta[excluded_rows].sum(0)).ravel()
            s2 = s2 - np.asarray(self.delta_sq[excluded_rows].sum(0)).ravel()
            nf = nf - np.asarray(self.fires[excluded_rows].sum(0)).ravel()
            n = n - len(excluded_rows)
        n = max(n, 1)
        mean = s / n
        var = np.maximum(s2 / n - mean**2, 0.0) * (n / max(n - 1, 1))
        return n, mean, np.sqrt(var), nf

    def top_pairs_of(self, feature: int, n: int, excluded=()) -> list[TopPair]:
        """The `n` pairs with the largest delta in the direction of `feature`'s overall shift.

        Raises UsageError for a feature outside 0..d_sae-1 or `n` under 1."""
        feature = self.check_feature(feature)
        if n < 1:
            raise UsageError(f"top {n}: must be at least 1 pair")
        col = self.delta[:, feature].toarray().ravel()
        if excluded:
            col[self.rows(excluded)] = 0.0
        sign = 1.0 if col.sum() >= 0 else -1.0
        order = np.argsort(-sign * col)[:n]
        return [TopPair(int(self.source_index[r]), float(col[r])) for r in order if sign * col[r] > 0]

    def what_if(self, excluded) -> tuple[int, np.ndarray, np.ndarray]:
        """(pairs kept, mean shift (d_sae,), effect size (d_sae,)) without the `excluded` source indices."""
        w = self.shifts_without(excluded)
        return w.n_kept, w.shift, w.effect

    def shifts_without(self, excluded) -> WhatIf:
        """Every feature's shift, effect size and firing count without the `excluded` source indices.

        Cheap enough for every keypress: it subtracts the excluded rows' sums from cached totals, and
        when called again updates from the previous call, touching only the pairs marked or unmarked
        since then (O(their nnz) plus C-level set algebra on the source indices). Not thread-safe:
        callers serialise (core.session does).
        """
        # C-level set algebra: a keypress with 26k pairs marked must not loop over them in Python
        if self._source_set is None:
            self._source_set = frozenset(self.row_of)
        excluded = (excluded if isinstance(excluded, frozenset) else frozenset(excluded)) & self._source_set
        cache = self._what_if_cache
        added_src = dropped_src = frozenset()
        if cache is not None:
            added_src, dropped_src = excluded - cache[0], cache[0] - excluded
        if cache is not None and len(added_src) + len(dropped_src) < len(excluded):
            # Update from the previous call: only the pairs marked or unmarked since then are touched.
            _, s, s2, nf = cache
            added, dropped = self.rows(added_src), self.rows(dropped_src)
            for rows, sign in ((added, -1.0), (dropped, 1.0)):
                if len(rows):
                    s = s + sign * np.asarray(self.delta[rows].sum(0)).ravel()
                    s2 = s2 + sign * np.asarray(self.delta_sq[rows].sum(0)).ravel()
                    nf = nf + sign * np.asarray(self.fires[rows].sum(0)).ravel()
        else:
            rows = self.rows(excluded)
            s, s2, nf = self._sum, self._sum_sq, self._n_firing
            if len(rows):
                s = s - np.asarray(self.delta[rows].sum(0)).ravel()
                s2 = s2 - np.asarray(self.delta_sq[rows].sum(0)).ravel()
                nf = nf - np.asarray(self.fires[rows].sum(0)).ravel()
        self._what_if_cache = (excluded, s, s2, nf)
        n = max(self.n - len(excluded), 1)
        mean = s / n
        sd = np.sqrt(np.maximum(s2 / n - mean**2, 0.0) * (n / max(n - 1, 1)))
        effect = np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0)
        return WhatIf(self.n - len(excluded), mean, effect, nf)

    # -- the full report ------------------------------------------------------------------------

    def report(
        self,
        top: int = 20,
        excluded: set[int] | None = None,
        n_boot: int = 200,
        n_splits: int = 20,
        seed: int = 0,
        n_top_pairs: int = 10,
        fdr: float = DEFAULT_FDR,
    ) -> ShiftReport:
        """The `top` most amplified and `top` most suppressed features: per direction those whose
        shift is established (q < `fdr` against labels swapped at random, core.analysis.calibration) first,
        then the rest, each by score (module doc).

        Raises UsageError for `top` under 1 or an fdr outside (0, 0.25]."""
        if top < 1:
            raise UsageError(f"top {top}: must be at least 1 feature per direction")
        try:
            fdr = check_fdr(fdr)
        except ValueError as e:
            raise UsageError(str(e)) from None
        excl_rows = self.rows(excluded or ())
        keep = np.ones(self.n, dtype=bool)
        keep[excl_rows] = False
        kept_rows = np.nonzero(keep)[0]
        n, mean, sd, nf = self.moments(excl_rows)
        # the label-swap null per feature, from Σ delta and Σ delta² (sd is the sample SD)
        s1 = mean * n
        s2 = sd**2 * max(n - 1, 1) + n * mean**2
        p = sign_flip_p(s1, s2, nf)
        q = np.ones(self.d_sae)
        tested = np.nonzero(nf > 0)[0]
        q[tested] = bh_q(p[tested])
        established = q < fdr
        # Candidates by the normal-approximation bound, refined by bootstrap below, and every
        # established feature.
        se = sd / np.sqrt(n)
        approx = np.where(mean > 0, np.maximum(mean - Z95 * se, 0), np.minimum(mean + Z95 * se, 0))
        n_cand = min(self.d_sae, 5 * top)
        pos = np.argsort(-approx)[:n_cand]
        neg = np.argsort(approx)[:n_cand]
        cand = np.unique(np.concatenate([pos[approx[pos] > 0], neg[approx[neg] < 0], np.nonzero(established)[0]]))
        counts = dict(n_tested=len(tested), n_established=int(established.sum()), fdr=fdr)
        if len(cand) == 0 or len(kept_rows) == 0:
            return self._empty(len(kept_rows), len(excl_rows), **counts)
        D = self.delta[kept_rows][:, cand].toarray()  # (n_kept, n_cand)
        rng = np.random.default_rng(seed)
        W = rng.multinomial(len(kept_rows), np.full(len(kept_rows), 1 / len(kept_rows)), size=n_boot)
        boot = (W @ D) / len(kept_rows)  # (n_boot, n_cand)
        lo, hi = np.quantile(boot, [0.025, 0.975], axis=0)
        halves = np.zeros((n_splits, len(kept_rows)), dtype=np.float32)
        for s in range(n_splits):
            halves[s, rng.permutation(len(kept_rows))[: len(kept_rows) // 2]] = 1
        a = (halves @ D) / halves.sum(1, keepdims=True)
        b = ((1 - halves) @ D) / (1 - halves).sum(1, keepdims=True)
        sign = np.sign(mean[cand])
        stability = ((np.sign(a) == sign) & (np.sign(b) == sign)).mean(0)
        score = np.where(lo > 0, lo, np.where(hi < 0, hi, 0.0))

        features = []
        est = established[cand]
        up = mean[cand] > 0
        # per direction: established first, then by score (a score of 0 lists only if established)
        order_pos = [j for j in np.lexsort((-score, ~est)) if up[j] and (est[j] or score[j] > 0)][:top]
        order_neg = [j for j in np.lexsort((score, ~est)) if not up[j] and (est[j] or score[j] < 0)][:top]
        info = self.feature_info()
        self.prefetch_contexts([int(cand[j]) for j in order_pos + order_neg])
        for direction, order in (("amplified", order_pos), ("suppressed", order_neg)):
            for j in order:
                f = int(cand[j])
                col = D[:, j]
                best = np.argsort(-col if direction == "amplified" else col)[:n_top_pairs]
                tops = [
                    TopPair(int(self.source_index[kept_rows[r]]), float(col[r]))
                    for r in best
                    if (col[r] > 0 if direction == "amplified" else col[r] < 0)
                ]
                fs = FeatureShift(
                    feature=f,
                    label="",
                    direction=direction,
                    shift=float(mean[f]),
                    effect_size=float(mean[f] / sd[f]) if sd[f] > 0 else 0.0,
                    ci=(float(lo[j]), float(hi[j])),
                    stable=bool(stability[j] >= 0.9),
                    stability=float(stability[j]),
                    n_firing=int(nf[f]),
                    score=float(score[j]),
                    top_pairs=tops,
                    promoted=list(info.get(f, {}).get("promoted") or [])[:5],
                    p=float(p[f]), q=float(q[f]), established=bool(established[f]),
                )
                fs.contexts, fs.label = self.describe(f)
                features.append(fs)
        return ShiftReport(
            model=self.meta.get("model", ""),
            sae=self.meta.get("sae", ""),
            layer=int(self.meta.get("layer", -1)),
            n_pairs=len(kept_rows),
            n_excluded=len(excl_rows),
            features=features,
            **counts,
        )

    def _empty(self, n: int, n_excl: int, **counts) -> ShiftReport:
        return ShiftReport(self.meta.get("model", ""), self.meta.get("sae", ""), int(self.meta.get("layer", -1)), n,
                           n_excl, [], **counts)

    # -- labels ---------------------------------------------------------------------------------

    def feature_info(self) -> dict[int, dict]:
        if self._features is None:
            self._features = self.ws.feature_info()
        return self._features

    def token_firings(self) -> "FiringIndex":
        """feature -> [(value, row, side, token position)] over the stored token-level activations."""
        if self._tokens is None:
            cols = [f"{s}_tok_{k}" for s in ("chosen", "rejected") for k in ("feat", "pos", "val")]
            self._tokens = FiringIndex(self.ws.pairs_columns(["source_index", *cols]))
        return self._tokens

    def _top_firings(self, feature: int, n: int) -> list[tuple[float, int, str, int]]:
        return self.token_firings().top(feature, n)

    def reply_tokens(self, rows: list[int]) -> dict[tuple[int, str], list[str]]:
        """(row, side) -> the reply's token strings, for the given analysis rows. Rows not read
        before are read in one query (not a scan of every pair's tokens) and kept."""
        missing = sorted({int(r) for r in rows} - {r for r, _ in self._reply_tokens})
        if missing:
            t = self.ws.pairs_in([int(self.source_index[r]) for r in missing], ["chosen_tokens", "rejected_tokens"])
            for r, chosen, rejected in zip(missing, t["chosen_tokens"].to_pylist(), t["rejected_tokens"].to_pylist()):
                self._reply_tokens[(r, "chosen")] = chosen
                self._reply_tokens[(r, "rejected")] = rejected
        return {(r, side): self._reply_tokens[(r, side)] for r in rows for side in ("chosen", "rejected")}

    def prefetch_contexts(self, features) -> None:
        """Read, in one query, the reply tokens that `describe` will need for these features."""
        rows = {r for f in features for _, r, _, _ in self._top_firings(int(f), 20)}
        self.reply_tokens(sorted(rows))

    def label(self, feature: int) -> str:
        """`describe(feature)`'s label, computed once per Analysis."""
        if feature not in self._labels:
            self._labels[feature] = self.describe(feature, n_contexts=0)[1]
        return self._labels[feature]

    def labels(self, features) -> dict[int, str]:
        """feature -> label for many features, their reply tokens read in one query."""
        todo = [int(f) for f in features if int(f) not in self._labels]
        if todo:
            self.prefetch_contexts(todo)
        return {int(f): self.label(int(f)) for f in features}

    def describe(self, feature: int, n_contexts: int = 5, published: str | None = None) -> tuple[list[str], str]:
        """(top-activating contexts in this dataset, a short label) for one feature, without a network.

        The label is the published one (`published`, by default the workspace's features table's)
        when the SAE ships labels, else the tokens the feature fires on most strongly here, then the
        tokens its decoder direction promotes.
        """
        if published is None:
            published = self.feature_info().get(feature, {}).get("label") or ""
        top = self._top_firings(feature, max(n_contexts, 20))
        tokens = self.reply_tokens(sorted({r for _, r, _, _ in top}))
        contexts, fired_on = [], Counter()
        for v, r, side, p in top:
            toks = tokens[(r, side)]
            if p >= len(toks):
                continue
            fired_on[token_name(toks[p])] += 1
            if len(contexts) < n_contexts:
                left = "".join(toks[max(0, p - 6) : p])
                right = "".join(toks[p + 1 : p + 4])
                contexts.append(f"{left}[[{toks[p]}]]{right}".replace("\n", " "))
        if published:
            return contexts, published
        promoted = [token_name(t) for t in (self.feature_info().get(feature, {}).get("promoted") or [])[:3] if t.strip()]
        on = ", ".join(tok for tok, _ in fired_on.most_common(3))
        label = on or "(no stored firings)"
        if promoted:
            label += " → " + ", ".join(p for p in promoted if p)
        return contexts, label


def token_name(token: str) -> str:
    """A stored reply token as a label shows it: stripped; whitespace as its repr; a piece of a
    multi-byte character (which decodes alone to U+FFFD, e.g. one byte of an emoji) as ‹byte›."""
    name = token.strip()
    if not name:
        return repr(token)
    if set(name) == {"\ufffd"}:
        return "‹byte›"
    return name.replace("\ufffd", "")


class FiringIndex:
    """Token-level firings grouped by feature, built from Arrow columns without a Python loop."""

    SIDES = ("chosen", "rejected")

    def __init__(self, t: pa.Table):
        feats, rows, sides, poss, vals = [], [], [], [], []
        for side_i, side in enumerate(self.SIDES):
            f = t[f"{side}_tok_feat"].combine_chunks()
            off = f.offsets.to_numpy()
            lo, hi = off[0], off[-1]
            feats.append(f.values.to_numpy(zero_copy_only=False)[lo:hi])
            rows.append(np.repeat(np.arange(len(f), dtype=np.int32), np.diff(off)))
            sides.append(np.full(hi - lo, side_i, dtype=np.int8))
            for name, out in (("pos", poss), ("val", vals)):
                c = t[f"{side}_tok_{name}"].combine_chunks()
                o = c.offsets.to_numpy()
                out.append(c.values.to_numpy(zero_copy_only=False)[o[0] : o[-1]])
        feat = np.concatenate(feats) if feats else np.zeros(0, np.int32)
        order = np.argsort(feat, kind="stable")
        self.feature = feat[order]
        self.row = np.concatenate(rows)[order]
        self.side = np.concatenate(sides)[order]
        self.pos = np.concatenate(poss)[order]
        self.val = np.concatenate(vals)[order]
        # start[f]:start[f + 1] is feature f's slice (features past the largest stored have none)
        n_feat = int(self.feature[-1]) + 2 if len(self.feature) else 1
        self.start = np.searchsorted(self.feature, np.arange(n_feat, dtype=self.feature.dtype))

    def _slice(self, feature: int) -> tuple[int, int]:
        if not 0 <= feature < len(self.start) - 1:
            return 0, 0
        return int(self.start[feature]), int(self.start[feature + 1])

    def get(self, feature: int, default=None) -> list[tuple[float, int, str, int]]:
        """Every stored firing of `feature` as (value, row, side, token position), in storage order."""
        lo, hi = self._slice(feature)
        if lo == hi:
            return default if default is not None else []
        return self._tuples(np.arange(lo, hi))

    def top(self, feature: int, n: int) -> list[tuple[float, int, str, int]]:
        """The `n` largest of `get(feature)` in descending tuple order (as sorted(..., reverse=True)),
        without building the rest: a popular feature fires hundreds of thousands of times."""
        lo, hi = self._slice(feature)
        order = np.lexsort((-self.pos[lo:hi], -self.side[lo:hi], -self.row[lo:hi], -self.val[lo:hi]))
        return self._tuples(lo + order[:n])

    def _tuples(self, idx: np.ndarray) -> list[tuple[float, int, str, int]]:
        return [
            (float(v), int(r), self.SIDES[sd], int(p))
            for v, r, sd, p in zip(self.val[idx], self.row[idx], self.side[idx], self.pos[idx])
        ]

    def __getitem__(self, feature: int):
        return self.get(feature)
