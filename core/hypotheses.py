"""Hypotheses: "within this region of the data, preference labels select for (against) this concept".

Two views, as in the paper (METHOD.md), computed the same way over a *group* of pairs:

    cluster  a data cluster B_k (core.dataclusters; the silent bucket is left out of both sides)
    prompt   S(k), the pairs whose prompt expresses prompt concept A_k (core.structure; every pair
             takes part)

For group G and response concept R (u: core.concepts.disparity):
    Δ     = mean of u over pairs in G − mean over the other pairs of the view
    d     = Δ / pooled SD (Cohen's d);  t = Welch's statistic (inflated: pairs are not independent;
            for reading, not a p-value)
    Δ_A, Δ_B = Δ on the even and on the odd rows (split halves); the halves agree when both have Δ's sign
    Δmin  = min(|Δ_A|, |Δ_B|) (the paper's ranking key)

Ranking (the landing screen): by `score`, Δmin made robust for small groups, in three ways.
    1. Shrinkage. Each half's Δ is computed as if PSEUDO_PAIRS pairs with the outside mean joined the
       group: Δ_h · n_h / (n_h + PSEUDO_PAIRS). A group of 2 pairs that both happen to go one way has
       its Δ cut to 40%, a group of 30 keeps 91%. Without it the top of the list is groups of 2-3
       pairs with |Δ| = 1 by chance (any rare concept in any small cluster).
    2. Support. At least MIN_SUPPORT pairs of the group move the concept in Δ's direction (u of that
       sign), and each half holds at least one of them: a Δ carried by one pair is not a hypothesis.
    3. Halves agree in sign (else score 0), as in the paper.
    score = min over halves of the shrunk |Δ_h|; 0 when 2 or 3 fail.
Nothing here knows which behaviour was planted: a behaviour planted in a few pairs ranks high when
the pairs share a concept that the rest of the data lacks (it then gets a data cluster of its own,
core.dataclusters) and the labels move it the same way in all of them (Δ near its maximum in both
halves); see README, "Hypotheses", for what this does on the goblin test and on real data.

What-if. `Hypotheses.report(excluded=...)` recomputes every statistic without the excluded pairs, but
never refits the structure. Per (group, concept) cell the engine keeps the sums of u, u², and the
counts of positive and negative u per half; leaving pairs out subtracts their rows' sums (a sparse
product over those rows only), and a later call starts from the previous one and touches only the
pairs marked or unmarked since (as core.shifts.Analysis.what_if). Cells are the (group, concept)
pairs with MIN_SUPPORT supporting pairs over all the data: leaving pairs out can only lower support,
so no other cell can ever qualify.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from core import concepts as C
from core.errors import UsageError
from core.progress import ProgressFn

PSEUDO_PAIRS = 3.0
MIN_SUPPORT = 3
N_DRIVING = 10
KINDS = ("cluster", "prompt", "concept")
CONCEPT_VIEW = True
CONCEPT_MAX_SHARE = 0.1


@dataclass(frozen=True)
class DrivingPair:
    source_index: int
    u: float  # the pair's disparity on the hypothesis' concept (> 0: chosen has more of it)


@dataclass(frozen=True)
class Hypothesis:
    """One ranked hypothesis (module doc). `group` is the data cluster id (kind "cluster") or the prompt
    concept id (kind "prompt"); `concept` the response concept; `features` its SAE features."""

    rank: int
    kind: str
    group: int
    group_name: str
    concept: int
    concept_name: str
    direction: str  # "more" (chosen replies have more of the concept) | "less"
    n: int  # pairs in the group (marked ones left out)
    n_support: int  # pairs of the group whose u has Δ's sign
    delta: float
    d: float
    t: float
    delta_a: float
    delta_b: float
    halves_agree: bool
    delta_min: float
    score: float
    sentence: str
    driving: tuple[DrivingPair, ...]
    features: tuple[int, ...]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HypothesisReport:
    """The ranked hypotheses of a workspace, with marked pairs left out."""

    n_pairs: int  # pairs counted (marked ones left out)
    n_excluded: int
    n_silent: int
    k: int  # data clusters
    n_concepts: int  # response concepts (grouped + single features)
    n_grouped: int  # response concepts that are communities of >= 4 features
    n_prompt_groups: int
    n_cells: int  # (group, concept) cells with enough support to be ranked
    structure_key: str
    hypotheses: tuple[Hypothesis, ...]

    def to_json(self) -> dict:
        return asdict(self)

    def of_kind(self, kind: str) -> tuple[Hypothesis, ...]:
        return tuple(h for h in self.hypotheses if h.kind == kind)

    def first_with_feature(self, feature: int, direction: str | None = None) -> Hypothesis | None:
        """The best-ranked hypothesis whose response concept contains `feature` (and goes in
        `direction`, "more" or "less", when given), or None."""
        for h in self.hypotheses:
            if feature in h.features and (direction is None or h.direction == direction):
                return h
        return None


class _Sums:
    """Per half (2) sums over a set of rows: per cell s1, s2, pos, neg; per group its size; per view
    and concept the totals t1, t2; per view the row count."""

    def __init__(self, n_cells: int, n_groups: int, n_concepts: int):
        self.cell = np.zeros((4, 2, n_cells))  # s1, s2, pos, neg
        self.size = np.zeros((2, n_groups))
        self.total = np.zeros((2, 2, 2, n_concepts))  # (t1 | t2, half, view)
        self.rows = np.zeros((2, 2))  # (half, view)

    def combine(self, other: "_Sums", sign: float) -> "_Sums":
        out = _Sums.__new__(_Sums)
        out.cell = self.cell + sign * other.cell
        out.size = self.size + sign * other.size
        out.total = self.total + sign * other.total
        out.rows = self.rows + sign * other.rows
        return out


class Hypotheses:
    """The hypothesis engine of one workspace: its structure, u, and the cached per-cell sums.

    Build once (`Hypotheses(analysis)` reads or fits the cached structure), then call `report`
    with any set of excluded source indices as often as needed (module doc, What-if).
    """

    def __init__(self, analysis, structure=None, names=None, progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None):
        from core.structure import structure as fit_or_load

        self.analysis = analysis
        self.st = structure if structure is not None else fit_or_load(analysis, progress=progress, cancel=cancel)
        self.names = names
        n = analysis.n
        chosen, rejected = analysis.frequencies()
        self.u = C.disparity(self.st.response, chosen, rejected)  # (n, M)
        self.u_csc = self.u.tocsc()
        M = self.st.response.n_concepts
        active = self.st.clusters >= 0
        K, P = self.st.k, self.st.prompt_groups.shape[1]
        cl_rows = np.nonzero(active)[0]
        G_cl = sp.csr_matrix((np.ones(len(cl_rows), np.float32), (cl_rows, self.st.clusters[cl_rows])), shape=(n, K))
        self.G = sp.hstack([G_cl, self.st.prompt_groups]).tocsr().astype(np.float32)  # (n, K + P)
        self.G_csc = self.G.tocsc()
        # The concept view: per concept, the pairs where it fires (above τ) in either reply.
        fired = (C.fires(chosen, self.st.response.tau) + C.fires(rejected, self.st.response.tau)) \
            @ self.st.response.indicator()
        self.A = (fired > 0).astype(np.float32).tocsr()  # (n, M)
        self.A_csc = self.A.tocsc()
        df = np.diff(self.A_csc.indptr)
        self.diag = np.nonzero((df >= MIN_SUPPORT) & (df <= CONCEPT_MAX_SHARE * n))[0] if CONCEPT_VIEW else \
            np.zeros(0, np.int64)
        self.view_rows = np.stack([active, np.ones(n, bool)])  # (view, n): who takes part in each view
        self.half = np.arange(n) % 2
        self.M = M
        # Cells: (group, concept) with MIN_SUPPORT pairs moving the concept one way; in the concept
        # view only the concept's own group.
        pos = (self.G.T @ (self.u > 0).astype(np.float32)).tocoo()
        neg = (self.G.T @ (self.u < 0).astype(np.float32)).tocoo()
        keys = np.concatenate([pos.row.astype(np.int64) * M + pos.col,
                               neg.row.astype(np.int64) * M + neg.col])
        ok = np.concatenate([pos.data >= MIN_SUPPORT, neg.data >= MIN_SUPPORT])
        u_pos = np.diff((self.u > 0).tocsc().indptr)
        u_neg = np.diff((self.u < 0).tocsc().indptr)
        diag = self.diag[np.maximum(u_pos, u_neg)[self.diag] >= MIN_SUPPORT]
        self.diag = diag
        self.n_groups = K + P + len(diag)
        self.group_kind = np.r_[np.zeros(K, np.int64), np.ones(P, np.int64), np.full(len(diag), 2)]
        self.group_view = np.minimum(self.group_kind, 1)  # the concept view compares with every pair
        diag_keys = (K + P + np.arange(len(diag), dtype=np.int64)) * M + diag
        self.keys = np.concatenate([np.unique(keys[ok]), diag_keys])  # sorted: diagonal groups come last
        self.diag_cells = np.arange(len(self.keys) - len(diag), len(self.keys))
        self.cell_group = (self.keys // M).astype(np.int64)
        self.cell_concept = (self.keys % M).astype(np.int64)
        # Per cell, its view and where its (view, concept) total sits in a flattened (view, M) array:
        # statistics gathers with these on every keypress.
        self.cell_view = self.group_view[self.cell_group]
        self._cell_total = self.cell_view * M + self.cell_concept
        self.full = self._sums(np.arange(n))
        self._cache: tuple[frozenset, _Sums] | None = None
        self._source_set = frozenset(int(s) for s in analysis.source_index)

    # -- sums over rows ---------------------------------------------------------------------------

    def _into_cells(self, m: sp.spmatrix) -> np.ndarray:
        coo = m.tocoo()
        key = coo.row.astype(np.int64) * self.M + coo.col
        idx = np.searchsorted(self.keys, key)
        idx = np.minimum(idx, len(self.keys) - 1) if len(self.keys) else idx
        hit = (self.keys[idx] == key) if len(self.keys) else np.zeros(len(key), bool)
        hit &= ~np.isin(idx, self.diag_cells) if len(self.diag_cells) else True
        return np.bincount(idx[hit], weights=coo.data[hit], minlength=len(self.keys))

    def _sums(self, rows: np.ndarray) -> _Sums:
        out = _Sums(len(self.keys), self.n_groups, self.M)
        rows = np.asarray(rows, dtype=np.int64)
        for h in (0, 1):
            r = rows[self.half[rows] == h]
            if not len(r):
                continue
            g, u = self.G[r], self.u[r]
            u2 = u.multiply(u).tocsr()
            gt = g.T.tocsr()
            n_gp = g.shape[1]
            for j, m in enumerate((u, u2, (u > 0).astype(np.float32), (u < 0).astype(np.float32))):
                out.cell[j, h] = self._into_cells(gt @ m)
                # the concept view: a concept's u is 0 outside its own group, so its column sums are the group's
                out.cell[j, h, self.diag_cells] = np.asarray(m[:, self.diag].sum(0)).ravel()
            out.size[h, :n_gp] = np.asarray(g.sum(0)).ravel()
            out.size[h, n_gp:] = np.asarray(self.A[r][:, self.diag].sum(0)).ravel()
            for view in (0, 1):
                inv = self.view_rows[view, r]
                sel = np.nonzero(inv)[0]
                out.rows[h, view] = len(sel)
                if len(sel):
                    out.total[0, h, view] = np.asarray(u[sel].sum(0)).ravel()
                    out.total[1, h, view] = np.asarray(u2[sel].sum(0)).ravel()
        return out

    def _state(self, excluded: frozenset) -> _Sums:
        """The sums without the `excluded` source indices, from the previous call when that is cheaper."""
        cache = self._cache
        if cache is not None:
            added, dropped = excluded - cache[0], cache[0] - excluded
            if len(added) + len(dropped) < len(excluded):
                st = cache[1]
                if added:
                    st = st.combine(self._sums(self.analysis.rows(added)), -1.0)
                if dropped:
                    st = st.combine(self._sums(self.analysis.rows(dropped)), +1.0)
                self._cache = (excluded, st)
                return st
        st = self.full if not excluded else self.full.combine(self._sums(self.analysis.rows(excluded)), -1.0)
        self._cache = (excluded, st)
        return st

    # -- statistics -------------------------------------------------------------------------------

    def statistics(self, excluded=frozenset()) -> dict[str, np.ndarray]:
        """Per cell (aligned with `cell_group`, `cell_concept`): n, delta, d, t, delta_a, delta_b,
        support (per half and total, in Δ's direction), score (module doc)."""
        excluded = (excluded if isinstance(excluded, frozenset) else frozenset(excluded)) & self._source_set
        st = self._state(excluded)
        g, at, view = self.cell_group, self._cell_total, self.cell_view
        # (t1 | t2, half) -> per cell: its concept's total over its view, one flat gather each
        t = [[np.take(st.total[i, h].reshape(-1), at) for h in (0, 1)] for i in (0, 1)]
        n_rows = [np.take(st.rows[h], view) for h in (0, 1)]

        def moments(s1, s2, n_in, t1, t2, n_all, spread: bool = True):
            n_out = n_all - n_in
            with np.errstate(divide="ignore", invalid="ignore"):
                mi = np.where(n_in > 0, s1 / np.maximum(n_in, 1), 0.0)
                mo = np.where(n_out > 0, (t1 - s1) / np.maximum(n_out, 1), 0.0)
                if not spread:  # a half's Δ alone
                    return mi - mo, None, None, n_out
                vi = np.maximum(s2 - n_in * mi**2, 0) / np.maximum(n_in - 1, 1)
                vo = np.maximum((t2 - s2) - n_out * mo**2, 0) / np.maximum(n_out - 1, 1)
            return mi - mo, vi, vo, n_out

        halves = []
        for h in (0, 1):
            n_in = np.take(st.size[h], g)
            delta_h, *_ = moments(st.cell[0, h], st.cell[1, h], n_in, t[0][h], t[1][h], n_rows[h], spread=False)
            halves.append((delta_h, n_in))
        s1, s2 = st.cell[0, 0] + st.cell[0, 1], st.cell[1, 0] + st.cell[1, 1]
        n_in = halves[0][1] + halves[1][1]
        delta, vi, vo, n_out = moments(s1, s2, n_in, t[0][0] + t[0][1], t[1][0] + t[1][1], n_rows[0] + n_rows[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            pooled = np.sqrt(((n_in - 1) * vi + (n_out - 1) * vo) / np.maximum(n_in + n_out - 2, 1))
            d = np.where(pooled > 0, delta / pooled, 0.0)
            se = np.sqrt(vi / np.maximum(n_in, 1) + vo / np.maximum(n_out, 1))
            t = np.where(se > 0, delta / se, 0.0)
        sign = np.sign(delta)
        support_h = np.where(sign >= 0, st.cell[2], st.cell[3])  # (2, cells)
        (da, na), (db, nb) = halves
        agree = (np.sign(da) == sign) & (np.sign(db) == sign) & (sign != 0)
        supported = (support_h.sum(0) >= MIN_SUPPORT) & (support_h.min(0) >= 1) & (n_out > 0)
        shrunk = np.minimum(np.abs(da) * na / (na + PSEUDO_PAIRS), np.abs(db) * nb / (nb + PSEUDO_PAIRS))
        score = np.where(agree & supported, shrunk, 0.0)
        return {
            "n": n_in, "delta": delta, "d": d, "t": t, "delta_a": da, "delta_b": db, "agree": agree,
            "delta_min": np.minimum(np.abs(da), np.abs(db)), "support": support_h.sum(0), "score": score,
        }

    # -- the report -------------------------------------------------------------------------------

    def kind_of(self, group: int) -> tuple[str, int]:
        """(kind, id) of a group column: a data cluster or a prompt concept."""
        k, p = self.st.k, self.st.prompt_groups.shape[1]
        if group < k:
            return "cluster", group
        return ("prompt", group - k) if group < k + p else ("concept", int(self.diag[group - k - p]))

    def cell_of(self, kind: str, group: int, concept: int) -> int | None:
        """The cell (index into `keys` and `statistics()`) of a hypothesis' (kind, group, concept),
        None when that cell is not ranked (too little support). The inverse of `kind_of`."""
        k, p = self.st.k, self.st.prompt_groups.shape[1]
        if kind == "concept":
            hit = np.nonzero(self.diag == concept)[0]
            if not len(hit):
                return None
            column = k + p + int(hit[0])
        elif kind in ("cluster", "prompt"):
            column = group + (k if kind == "prompt" else 0)
        else:
            raise UsageError(f"unknown hypothesis kind {kind!r}: expected one of {', '.join(KINDS)}")
        key = np.int64(column) * self.M + concept
        i = int(np.searchsorted(self.keys, key))
        return i if i < len(self.keys) and self.keys[i] == key else None

    def standing(self, cell: int, s: dict) -> int | None:
        """The rank `report` gives `cell` (1 = first) under the statistics `s` (of `statistics()`),
        None when its score is 0 (it is not ranked)."""
        score = s["score"]
        if score[cell] <= 0:
            return None
        ahead = (score > score[cell]) | ((score == score[cell]) & (self.keys < self.keys[cell]))
        return int(ahead.sum()) + 1

    def driving_pairs(self, group: int, concept: int, sign: float, excluded=frozenset(), n: int = N_DRIVING
                      ) -> tuple[DrivingPair, ...]:
        """The pairs of `group` whose u on `concept` goes most strongly in direction `sign`."""
        g = self.G_csc
        if group >= g.shape[1]:
            g, group = self.A_csc, concept
        lo, hi = g.indptr[group], g.indptr[group + 1]
        rows = g.indices[lo:hi]
        col = self.u_csc[:, concept]
        u = np.asarray(col[rows].todense()).ravel() * sign
        order = [i for i in np.argsort(-u, kind="stable") if u[i] > 0]
        src = self.analysis.source_index
        out = []
        for i in order:
            s = int(src[rows[i]])
            if s in excluded:
                continue
            out.append(DrivingPair(s, float(sign * u[i])))
            if len(out) == n:
                break
        return tuple(out)

    def report(self, excluded=frozenset(), top: int = 20, kind: str | None = None, n_driving: int = N_DRIVING
               ) -> HypothesisReport:
        """The `top` hypotheses by score (module doc), without the `excluded` source indices; `kind`
        "cluster" or "prompt" keeps one view (default: both, in one ranking). Raises UsageError."""
        if kind is not None and kind not in KINDS:
            raise UsageError(f"unknown hypothesis kind {kind!r}: expected one of {', '.join(KINDS)}")
        excluded = (excluded if isinstance(excluded, frozenset) else frozenset(excluded)) & self._source_set
        s = self.statistics(excluded)
        score = s["score"].copy()
        if kind is not None:
            score[self.group_kind[self.cell_group] != KINDS.index(kind)] = 0
        cand = np.nonzero(score > 0)[0]
        if len(cand) > top:
            cand = cand[np.argpartition(-score[cand], top - 1)[:top]]
        cand = cand[np.lexsort((self.keys[cand], -score[cand]))]
        hyps = []
        for rank, c in enumerate(cand, start=1):
            hyps.append(self._hypothesis(rank, int(c), s, excluded, n_driving))
        return HypothesisReport(
            n_pairs=self.analysis.n - len(excluded), n_excluded=len(excluded),
            n_silent=int((self.st.clusters < 0).sum()), k=self.st.k, n_concepts=self.M,
            n_grouped=self.st.response.n_grouped, n_prompt_groups=self.st.prompt_groups.shape[1],
            n_cells=len(self.keys), structure_key=self.st.key, hypotheses=tuple(hyps),
        )

    def _hypothesis(self, rank: int, c: int, s: dict, excluded: frozenset, n_driving: int) -> Hypothesis:
        group, concept = int(self.cell_group[c]), int(self.cell_concept[c])
        kind, gid = self.kind_of(group)
        sign = 1.0 if s["delta"][c] >= 0 else -1.0
        names = self.names
        group_name = names.group(kind, gid) if names is not None and kind != "concept" else ""
        concept_name = names.concept(concept) if names is not None else ""
        h = dict(
            rank=rank, kind=kind, group=gid, group_name=group_name, concept=concept, concept_name=concept_name,
            direction="more" if sign > 0 else "less", n=int(s["n"][c]), n_support=int(s["support"][c]),
            delta=float(s["delta"][c]), d=float(s["d"][c]), t=float(s["t"][c]), delta_a=float(s["delta_a"][c]),
            delta_b=float(s["delta_b"][c]), halves_agree=bool(s["agree"][c]), delta_min=float(s["delta_min"][c]),
            score=float(s["score"][c]),
        )
        return Hypothesis(
            **h, sentence=sentence(**h),
            driving=self.driving_pairs(group, concept, sign, excluded, n_driving),
            features=tuple(int(f) for f in self.st.response.features(concept)),
        )


def sentence(kind: str, group: int, group_name: str, concept: int, concept_name: str, direction: str, n: int,
             delta: float, d: float, **_) -> str:
    """A hypothesis as a person reads it."""
    what = f"concept {concept}" + (f" «{concept_name}»" if concept_name else "")
    if kind == "concept":
        return f"where replies have {what} at all, chosen replies have {direction} of it ({n} pairs, Δ {delta:+.2f})"
    if kind == "cluster":
        where = f"in data cluster {group}" + (f" «{group_name}»" if group_name else "")
    else:
        where = f"when the prompt is about prompt concept {group}" + (f" «{group_name}»" if group_name else "")
    return f"{where}, chosen replies have {direction} {what} ({n} pairs, Δ {delta:+.2f}, d {d:+.2f})"


# -- the facade both front ends call ----------------------------------------------------------------


def open_hypotheses(workspace, params=None, progress: ProgressFn | None = None,
                    cancel: threading.Event | None = None) -> Hypotheses:
    """The hypothesis engine of a workspace folder (or of a core.shifts.Analysis already loaded), with
    keyword names: the structure and names are read from the workspace's cache, or fitted and cached on first use (core.structure, core.naming).
    Raises WorkspaceError (not a workspace, an old schema, no pairs), Cancelled."""
    from core.naming import load_names
    from core.shifts import Analysis
    from core.structure import Params, structure
    from core.workspace import Workspace

    from core.progress import Progress, reporter

    analysis = workspace if isinstance(workspace, Analysis) else Analysis(Workspace(workspace))
    st = structure(analysis, params or Params(), progress=progress, cancel=cancel)
    emit = reporter(progress)
    emit(Progress("names", "keyword names of concepts and clusters", 0, 2, "steps"))
    names = load_names(analysis, st)
    emit(Progress("hypotheses", "per-(group, concept) sums", 1, 2, "steps"))
    return Hypotheses(analysis, st, names)


@dataclass(frozen=True)
class NamedConceptShift:
    """A concept's global predicted shift (core.concepts.ConceptShift) with its name and features."""

    shift: C.ConceptShift
    name: str
    features: tuple[int, ...]


def concept_report(engine: Hypotheses, excluded=frozenset(), top: int = 20, grouped_only: bool = False
                   ) -> tuple[NamedConceptShift, ...]:
    """The `top` response concepts by |global shift| (mean u) without the `excluded` pairs; with
    `grouped_only`, communities of >= 4 features only."""
    keep = np.ones(engine.analysis.n, bool)
    keep[engine.analysis.rows(excluded)] = False
    out = []
    for c in C.concept_shifts(engine.st.response, engine.u, np.nonzero(keep)[0]):
        if grouped_only and c.concept >= engine.st.response.n_grouped:
            continue
        name = engine.names.concept(c.concept) if engine.names is not None else ""
        out.append(NamedConceptShift(c, name, tuple(int(f) for f in engine.st.response.features(c.concept))))
        if len(out) == top:
            break
    return tuple(out)
