"""Hypotheses: "within this region of the data, preference labels select for (against) this concept".

Two views, as in the paper (METHOD.md), computed the same way over a *group* of pairs:

    cluster  a data cluster B_k (core.analysis.dataclusters; the silent bucket is left out of both sides)
    prompt   S(k), the pairs whose prompt expresses prompt concept A_k (core.analysis.structure; every pair
             takes part)
    concept  the pairs where either reply expresses response concept R itself (EXPRESSES = half of
             its features fire, as for prompts), at most CONCEPT_MAX_SHARE of the data; every pair
             takes part. "Where replies have R at all, chosen replies have more of it."

For group G and response concept R (u: core.analysis.concepts.disparity):
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
    4. Lean. The score reads each half's Δ of v, not of u: v = u − E[u | the pair's lean]
       (`beyond_lean`). A pair's lean is which reply fires more of the *other* features (those
       outside R) on one side only: when the rejected reply is the long one, most features that fire
       on one side do so on the rejected side, and u < 0 for any concept there says nothing about R.
       Without it, the top of the list is rare concepts that happen to sit on the longer side in 5-15
       pairs ("chosen replies have less of it"), or one data cluster where chosen replies say more of
       everything fills ten rows (tests/bench/README.md, "How the structure is built"). Δ, d and t
       shown are still those of u (the paper's).
    score = min over halves of the shrunk Δ_h of v in Δ's direction (0 if negative); 0 when 2 or 3
    fail.
How sure (core.analysis.calibration). Every cell also gets a p under the nulls matched to its claim (labels
swapped at random inside the group; for data clusters and prompt concepts also membership drawn at
random among the view's pairs) and a Benjamini–Hochberg q over every cell, whichever kind a report
shows (a kind filter hides rows, it does not shrink the family). `report` lists the cells
*established* at q < fdr (with score > 0) first, by score, then the rest, by score, so that a
label-shuffled copy of a dataset, whose rows still rank by score, shows nothing above the divider.
The score stays the order; q decides what is claimed.
Nothing here knows which behaviour was planted: a behaviour planted in a few pairs ranks high when
the pairs share a concept that the rest of the data lacks (it then gets a data cluster of its own,
core.analysis.dataclusters) and the labels move it the same way in all of them (Δ near its maximum in both
halves); see tests/bench/README.md (goblin test, UltraFeedback 1k) for what this does on the goblin
test and on real data.

What-if. `Hypotheses.report(excluded=...)` recomputes every statistic without the excluded pairs, but
never refits the structure. Per (group, concept) cell the engine keeps the sums of u, u², v, and the
counts of positive and negative u per half (a pair's lean does not depend on marks). The sums are
integers (u·|R| is one; v is summed in fixed point, V_SCALE), so leaving pairs out and putting them
back, in any order, gives the very sums a full recompute gives, and so the same statistics bit for
bit. A call starts from the previous one and adds or subtracts, in place, only the rows of the pairs
marked or unmarked since (as core.analysis.shifts.Analysis.what_if): a sparse product over those rows touches
only their cells. Every cell's Δ still moves a little (the outside mean counts every pair), but
a cell's score is bounded by what it was at the last full pass plus how far the totals, the row
counts and its group's size have moved since (`_Reference`), so the ranking scores exactly only the
cells that can reach the top (thousands of 2 million on the 260k-pair benchmark) and the cells whose
own sums changed; Δ's spread, d and t and the driving pairs are computed for the rows shown only.
Cells are the (group, concept) pairs with MIN_SUPPORT supporting pairs over all the data: leaving
pairs out can only lower support, so no other cell can ever qualify.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from core.analysis import concepts as C
from core.analysis.kinds import KINDS, Kind  # noqa: F401  (KINDS: the names, for importers)
from core.analysis.calibration import DEFAULT_FDR, bh_q, check_fdr, detectable_pairs, membership_p, sign_test_p
from core.errors import UsageError
from core.progress import ProgressFn

PSEUDO_PAIRS = 3.0
MIN_SUPPORT = 3
N_DRIVING = 10
CONCEPT_MAX_SHARE = 0.1
V_SCALE = 2.0**32  # v is summed in fixed point, v·V_SCALE rounded (module doc, What-if)
REFRESH_ROWS = 1000  # a what-if touching up to this many rows goes on from the last one, not from all pairs
CALIBRATIONS = 2  # (p, q) kept per state of the marks (a preview alternates between two)
DRIVING_CACHE = 4096  # (group, concept, direction) orders of driving pairs kept
EXPRESSES = 0.5  # a reply expresses a concept when this share of its features fire (as prompts: core.analysis.structure)


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
    n_moving: int  # pairs of the group whose u is not 0 (either sign)
    delta: float
    d: float | None  # None where u is constant inside and outside (Δ = ±1 or 0): no spread
    t: float
    delta_a: float
    delta_b: float
    halves_agree: bool
    delta_min: float
    score: float
    p: float  # the claim's p under its nulls (core.analysis.calibration)
    q: float  # Benjamini–Hochberg q over every cell tested (every kind)
    established: bool  # q < the report's fdr (and the halves agree, enough support: score > 0)
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
    hypotheses: tuple[Hypothesis, ...]  # the established first (by score), then the rest (by score)
    n_tested: int = 0  # cells tested: q is over these (every kind, whichever kind the report shows)
    fdr: float = DEFAULT_FDR  # established: q below it
    n_established: int = 0  # established cells in the view (may exceed the rows shown)
    detectable_pairs: int = 0  # fewest pairs all moving one way that the first finding needs here

    def to_json(self) -> dict:
        return asdict(self)

    def first_with_feature(self, feature: int, direction: str | None = None) -> Hypothesis | None:
        """The best-ranked hypothesis whose response concept contains `feature` (and goes in
        `direction`, "more" or "less", when given), or None."""
        for h in self.hypotheses:
            if feature in h.features and (direction is None or h.direction == direction):
                return h
        return None


class _Sums:
    """Per half (2) integer sums over a set of rows (module doc, What-if): per cell Σ u·|R|, Σ (u·|R|)²,
    the counts of u > 0 and of u < 0, Σ v·V_SCALE; per group its size; per view and concept the totals
    of Σ u·|R|, Σ (u·|R|)², Σ v·V_SCALE; per view the row count."""

    def __init__(self, n_cells: int, n_groups: int, n_concepts: int):
        self.cell = np.zeros((5, 2, n_cells), np.int64)
        self.size = np.zeros((2, n_groups), np.int64)
        # (sum, half, view, concept); sums Σ u·|R|, Σ (u·|R|)², Σ v·V_SCALE, count u > 0, count u < 0
        self.total = np.zeros((5, 2, 2, n_concepts), np.int64)
        self.rows = np.zeros((2, 2), np.int64)  # (half, view)

    def copy(self) -> "_Sums":
        out = _Sums.__new__(_Sums)
        out.cell, out.size, out.total, out.rows = (a.copy() for a in (self.cell, self.size, self.total, self.rows))
        return out


def _mean_difference(inside, total, inv_in, inv_out):
    """Mean inside − mean outside from the sums inside and over the view (a side without rows has sum
    0, so mean 0: the sums are exact integers)."""
    return inside * inv_in - (total - inside) * inv_out


def _integer(m: sp.csr_matrix, factor) -> sp.csr_matrix:
    """`m` with each stored value times `factor` (a scalar, or one per stored value) rounded to int64.
    `m` is left as it was: the copy has index arrays of its own (eliminate_zeros compacts them in
    place, and on shared arrays it scrambled `m`, the engine's u that the Concepts view reads)."""
    out = sp.csr_matrix((np.rint(m.data * factor).astype(np.int64), m.indices.copy(), m.indptr.copy()), shape=m.shape)
    out.eliminate_zeros()
    return out


class _Reference:
    """A full pass over every cell at one state A, kept to rank later states B without scoring every
    cell again (module doc, What-if). A cell's score never exceeds its `potential` (Δ of v shrunk, in
    whichever direction is larger, every condition met). From A to B a cell whose group holds none of
    the rows changed keeps its own sums of v, so its shrunk Δ of v in a half, b·n/(n + PSEUDO_PAIRS)
    with b = Σv/n − (T − Σv)/(N − n), moves only with the view's total T of v, its row count N and the
    group's size n, by at most
        (|ΔT| + v̄ |ΔN|) / r  +  v̄ |Δn| (1/n + 1/r + 2/(n + PSEUDO_PAIRS))
    (v̄ = max |v|, r ≤ N − n at A and at B, n at B): a term per (view, concept) plus one per group. The
    cells that can reach the top are those whose potential at A plus that bound reaches the `top`-th
    best exact score at B, and the cells whose own sums changed since A."""

    SEEDS = 256  # cells of the best potentials at A, per kind, scored exactly at B to find that threshold
    MAX_SHARE = 0.2  # past this share of cells as candidates, a full pass is cheaper

    def __init__(self, engine: "Hypotheses", st: _Sums, potential: np.ndarray):
        self.potential = potential
        self.total_v, self.rows, self.size = st.total[2].copy(), st.rows.copy(), st.size.copy()
        self.touched = np.zeros(len(potential), bool)
        self.seeds = {}
        for kind in (None, *(k.code for k in Kind)):
            cells = np.nonzero(engine._cell_kind == kind)[0] if kind is not None else np.arange(len(potential))
            if len(cells) > self.SEEDS:
                cells = cells[np.argpartition(-potential[cells], self.SEEDS - 1)[:self.SEEDS]]
            self.seeds[kind] = cells

    def candidates(self, engine: "Hypotheses", st: _Sums, kind: int | None, top: int) -> np.ndarray | None:
        """The cells (sorted) that can be among the `top` of `kind` under the sums `st`, or None when
        a full pass is needed (too many, too few seeds, or a group as large as its view)."""
        score = np.sort(engine._measures(st, self.seeds[kind], detail=False)["score"])[::-1]
        if len(score) < top or score[top - 1] <= 0:
            return None
        return self.reaching(engine, st, score[top - 1])

    def reaching(self, engine: "Hypotheses", st: _Sums, threshold: float) -> np.ndarray | None:
        """The cells (sorted) whose score under the sums `st` can reach `threshold` (> 0): every other
        cell scores less. None when a full pass is needed (too many, or a group as large as its view)."""
        largest = np.zeros((2, 2))  # (half, view): the largest group's size, at A or B
        for view in (0, 1):
            groups = engine.group_view == view
            if groups.any():
                largest[:, view] = st.size[:, groups].max(1)
        room = np.minimum(self.rows, st.rows) - largest  # (half, view): N − n at least, at A and at B
        if (room <= 0).any():
            return None
        v_max = engine._v_max
        moved = np.abs(st.total[2] - self.total_v) / V_SCALE + v_max * np.abs(st.rows - self.rows)[..., None]
        bound = (moved / room[..., None]).max(0).ravel() + 1e-9  # (view · concept,), with room for rounding
        dn, n = np.abs(st.size - self.size), st.size  # (half, group)
        with np.errstate(divide="ignore", invalid="ignore"):
            grown = v_max * dn * (1 / n + 1 / room[:, engine.group_view] + 2 / (n + PSEUDO_PAIRS))
        group_bound = np.where(dn > 0, grown, 0.0).max(0)  # (group,); inf where a group has no pair left
        reach = (self.potential + bound[engine._cell_total] + group_bound[engine.cell_group] >= threshold) \
            | self.touched
        cells = np.nonzero(reach)[0]
        return cells if len(cells) <= self.MAX_SHARE * len(reach) else None


class Hypotheses:
    """The hypothesis engine of one workspace: its structure, u, and the cached per-cell sums.

    Build once (`Hypotheses(analysis)` reads or fits the cached structure), then call `report`
    with any set of excluded source indices as often as needed (module doc, What-if).
    """

    def __init__(self, analysis, structure=None, names=None, progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None):
        from core.analysis.structure import reply_frequencies
        from core.analysis.structure import structure as fit_or_load

        self.analysis = analysis
        self.st = structure if structure is not None else fit_or_load(analysis, progress=progress, cancel=cancel)
        self.names = names
        n = analysis.n
        chosen, rejected = reply_frequencies(analysis, self.st.params)
        resp = self.st.response
        fired_c, fired_r = C.fires(chosen, resp.tau), C.fires(rejected, resp.tau)  # (n, d_sae) 0/1 each
        mean, b = resp.indicator(mean=True), fired_c - fired_r  # (d_sae, M), (n, d_sae)
        self.u = C.disparity_of(b, mean)  # (n, M): C.disparity
        self.u_csc = self.u.tocsc()
        self.v = beyond_lean(resp, b, self.u)  # (n, M)
        del b
        M = self.st.response.n_concepts
        active = self.st.clusters >= 0
        K, P = self.st.k, self.st.prompt_groups.shape[1]
        cl_rows = np.nonzero(active)[0]
        G_cl = sp.csr_matrix((np.ones(len(cl_rows), np.float32), (cl_rows, self.st.clusters[cl_rows])), shape=(n, K))
        self.G = sp.hstack([G_cl, self.st.prompt_groups]).tocsr().astype(np.float32)  # (n, K + P)
        self.G_csc = self.G.tocsc()
        # The concept view: per concept, the pairs where either reply expresses it (module doc).
        # each reply's share of each concept's features firing (strong firings only): concept_in_pairs
        self.rates = tuple(C.concept_mean(f, mean) for f in (fired_c, fired_r))  # (n, M) each: C.concept_rate
        del fired_c, fired_r
        fired = (self.rates[0] >= EXPRESSES) + (self.rates[1] >= EXPRESSES)
        self.A = (fired > 0).astype(np.float32).tocsr()  # (n, M)
        self.A_csc = self.A.tocsc()
        df = np.diff(self.A_csc.indptr)
        self.diag = np.nonzero((df >= MIN_SUPPORT) & (df <= CONCEPT_MAX_SHARE * n))[0]
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
        u_pos = np.asarray((self.u > 0).multiply(self.A).sum(0)).ravel()
        u_neg = np.asarray((self.u < 0).multiply(self.A).sum(0)).ravel()
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
        self.cell_view = self.group_view[self.cell_group]
        sizes = self.st.response.sizes()
        self._cell_total = self.cell_view * M + self.cell_concept  # index into a (view, concept) table
        self._cell_size = sizes[self.cell_concept].astype(np.float64)
        # integer copies whose sums are exact (module doc, What-if): u·|R|, v·V_SCALE
        self._u_int, self._v_int = _integer(self.u, sizes[self.u.indices]), _integer(self.v, V_SCALE)
        self._G_int, self._A_int = self.G.astype(np.int64), self.A.astype(np.int64)
        # one bit per (data or prompt group, concept): is it a cell (most product entries are not)
        self._is_cell = np.zeros(((K + P) * M + 7) // 8, np.uint8)
        flat = self.keys[: len(self.keys) - len(diag)]
        np.bitwise_or.at(self._is_cell, flat >> 3, (1 << (flat & 7)).astype(np.uint8))
        self.full = self._add(_Sums(len(self.keys), self.n_groups, M), np.arange(n), +1)
        self._cache: tuple[frozenset, _Sums] | None = None  # the last call's excluded pairs and sums
        # excluded -> (p, q) of the last CALIBRATIONS states: a mark preview asks for two
        # (marks now, and with the selection) in turn, and each is a full pass over the cells
        self._calib: dict[frozenset, tuple[np.ndarray, np.ndarray]] = {}
        self._ref: _Reference | None = None  # the last full pass over every cell, kept as bounds
        self._cell_kind = self.group_kind[self.cell_group].astype(np.int8)
        self._v_max = float(np.abs(self._v_int.data).max()) / V_SCALE if self._v_int.nnz else 0.0
        self._lock = threading.Lock()  # the cached sums change in place
        self._driving: dict[tuple[int, int, bool], tuple[list, list]] = {}
        self._source_set = frozenset(int(s) for s in analysis.source_index)

    # -- sums over rows ---------------------------------------------------------------------------

    def _cell_entries(self, m: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
        """(cell index, value) of the entries of a (data and prompt groups, concepts) matrix that are
        cells. Its rows are below the concept view's groups, so those cells never match."""
        coo = m.tocoo()
        if not len(self.keys):
            return np.zeros(0, np.int64), coo.data[:0]
        key = coo.row.astype(np.int64) * self.M + coo.col
        hit = ((self._is_cell[key >> 3] >> (key & 7).astype(np.uint8)) & 1).astype(bool)
        return np.searchsorted(self.keys, key[hit]), coo.data[hit]

    def _add(self, st: _Sums, rows: np.ndarray, sign: int, touched: np.ndarray | None = None) -> _Sums:
        """Add (`sign` +1) or subtract (-1) the sums over `rows` to `st`, in place; returns `st`. The
        cost is that of the rows' entries, not of the number of cells. `touched` (bool, per cell): set
        where a cell's own sums change (a row of its group moves its concept)."""
        rows = np.asarray(rows, dtype=np.int64)
        for h in (0, 1):
            r = rows[self.half[rows] == h]
            if not len(r):
                continue
            g, u, v, a = self._G_int[r], self._u_int[r], self._v_int[r], self._A_int[r]  # (rows, K + P), (rows, M) x 3
            gt = g.T.tocsr()
            ua, va = u.multiply(a).tocsr(), v.multiply(a).tocsr()  # the rows that express each concept
            moments = _moments(u)
            # sums 0-3 of u's moments, 4 of v; each over the groups' rows and over the rows expressing it
            for j, (m, ma) in enumerate([*zip(moments, _moments(ua)), (v, va)]):
                idx, val = self._cell_entries(gt @ m)
                st.cell[j, h, idx] += sign * val  # idx holds each cell once
                # the concept view: each concept's own group, the rows that express it
                diag = _column_sums(ma, self.M)[self.diag]
                st.cell[j, h, self.diag_cells] += sign * diag
                if touched is not None:
                    touched[idx] = True
                    touched[self.diag_cells[diag != 0]] = True
            st.size[h] += sign * np.r_[np.diff(gt.indptr), _column_sums(a, self.M)[self.diag]]
            for view in (0, 1):
                sel = np.nonzero(self.view_rows[view, r])[0]
                st.rows[h, view] += sign * len(sel)
                if len(sel):
                    (us, sq, up, down), vs = (moments, v) if len(sel) == len(r) else (_moments(u[sel]), v[sel])
                    for j, m in enumerate((us, sq, vs, up, down)):
                        st.total[j, h, view] += sign * _column_sums(m, self.M)
        return st

    def _state(self, excluded: frozenset) -> _Sums:
        """The sums without the `excluded` source indices: the previous call's, with the pairs marked
        and unmarked since subtracted and added in place, when that touches fewer rows than starting
        from the sums over all pairs."""
        cache, self._cache = self._cache, None  # changed in place below: if that fails, start over
        ref, self._ref = self._ref, None
        if cache is not None:
            added, dropped = excluded - cache[0], cache[0] - excluded
            if len(added) + len(dropped) <= max(len(excluded), REFRESH_ROWS):
                st = cache[1]
                touched = ref.touched if ref is not None else None
                if added:
                    self._add(st, self.analysis.rows(added), -1, touched)
                if dropped:
                    self._add(st, self.analysis.rows(dropped), +1, touched)
                self._cache, self._ref = (excluded, st), ref
                return st
        st = self.full.copy()
        if excluded:
            self._add(st, self.analysis.rows(excluded), -1)
        self._cache = (excluded, st)
        return st

    # -- statistics -------------------------------------------------------------------------------

    def _measures(self, st: _Sums, c, detail: bool = True, potential: bool = False) -> dict[str, np.ndarray]:
        """Per cell of `c` (an index array, or slice(None): every cell) under the sums `st`: what the
        ranking reads (n, delta, delta_a, delta_b, agree, delta_min, support, score, beyond_a,
        beyond_b) and, with `detail`, Δ's spread: d (NaN where u has none inside and outside) and t."""
        g, vm, size = self.cell_group[c], self._cell_total[c], self._cell_size[c]
        n_in = st.size[:, g]  # (half, cells)
        n_out = st.rows[:, self.cell_view[c]] - n_in
        inv_in, inv_out = 1.0 / np.maximum(n_in, 1), 1.0 / np.maximum(n_out, 1)
        s1, t1 = st.cell[0][:, c], st.total[0].reshape(2, -1)[:, vm]
        da, db = _mean_difference(s1, t1, inv_in, inv_out) / size
        n, n_o = n_in.sum(0), n_out.sum(0)
        s1, t1 = s1.sum(0), t1.sum(0)
        delta = _mean_difference(s1, t1, 1.0 / np.maximum(n, 1), 1.0 / np.maximum(n_o, 1)) / size
        sign = np.sign(delta)
        support_h = np.where(sign >= 0, st.cell[2][:, c], st.cell[3][:, c])  # (half, cells)
        agree = (np.sign(da) == sign) & (np.sign(db) == sign) & (sign != 0)
        supported = (support_h.sum(0) >= MIN_SUPPORT) & (support_h.min(0) >= 1) & (n_o > 0)
        # the ranking reads Δ of v (u beyond each pair's lean) in each half, in Δ's direction
        beyond = _mean_difference(st.cell[4][:, c], st.total[2].reshape(2, -1)[:, vm], inv_in, inv_out) / V_SCALE
        shrunk_beyond = beyond * (n_in / (n_in + PSEUDO_PAIRS))  # (half, cells)
        shrunk = np.maximum((sign * shrunk_beyond).min(0), 0.0)
        out = {
            "n": n, "delta": delta, "delta_a": da, "delta_b": db, "agree": agree,
            "delta_min": np.minimum(np.abs(da), np.abs(db)), "support": support_h.sum(0),
            "moving": (st.cell[2][:, c] + st.cell[3][:, c]).sum(0),
            "score": np.where(agree & supported, shrunk, 0.0), "beyond_a": beyond[0], "beyond_b": beyond[1],
        }
        if potential:  # the score were Δ's sign either way and every condition met (_Reference)
            out["potential"] = np.maximum(np.maximum(shrunk_beyond.min(0), -shrunk_beyond.max(0)), 0.0)
        if detail:
            s2, t2 = st.cell[1][:, c].sum(0), st.total[1].reshape(2, -1)[:, vm].sum(0)
            vi, vo = _variance(s1, s2, n, size), _variance(t1 - s1, t2 - s2, n_o, size)
            with np.errstate(divide="ignore", invalid="ignore"):
                pooled = np.sqrt(((n - 1) * vi + (n_o - 1) * vo) / np.maximum(n + n_o - 2, 1))
                out["d"] = np.where(pooled > 0, delta / pooled, np.nan)
                se = np.sqrt(vi / np.maximum(n, 1) + vo / np.maximum(n_o, 1))
                out["t"] = np.where(se > 0, delta / se, 0.0)
        return out

    # -- how sure (core.analysis.calibration) ----------------------------------------------------------------

    def _p_values(self, st: _Sums, c) -> np.ndarray:
        """Per cell of `c` (an index array, or slice(None)) under the sums `st`, the p of its claim
        (core.analysis.calibration): the sign test of its moving pairs, and for data clusters and prompt
        concepts also the test against membership drawn at random among the view's pairs; the
        larger of the two. Δ's direction picks which way counts."""
        g, vm = self.cell_group[c], self._cell_total[c]
        n_in = st.size[:, g].sum(0)
        n_out = st.rows[:, self.cell_view[c]].sum(0) - n_in
        s1, t1 = st.cell[0][:, c].sum(0), st.total[0].reshape(2, -1)[:, vm].sum(0)
        up = _mean_difference(s1, t1, 1.0 / np.maximum(n_in, 1), 1.0 / np.maximum(n_out, 1)) >= 0
        pos, neg = st.cell[2][:, c].sum(0), st.cell[3][:, c].sum(0)
        x, k = np.where(up, pos, neg), pos + neg
        p = sign_test_p(x, k)
        local = self._cell_kind[c] != Kind.CONCEPT.code  # the concept view is a claim about the labels alone
        if local.any():
            t_pos = st.total[3].reshape(2, -1)[:, vm].sum(0)[local]
            t_neg = st.total[4].reshape(2, -1)[:, vm].sum(0)[local]
            view_rows = (n_in + n_out)[local]
            p_where = membership_p(x[local], n_in[local], np.where(up[local], t_pos, t_neg), view_rows)
            p[local] = np.maximum(p[local], p_where)
        return p

    def _calibrated(self, st: _Sums, excluded: frozenset) -> tuple[np.ndarray, np.ndarray]:
        """(p, q) per cell under the sums `st` (those of `excluded`): q by Benjamini–Hochberg over every
        cell. A kind filter only hides rows: were q taken over one kind's cells, a row could read as
        established in one filter and not in another (the same cell, a smaller family), and a person
        cycling the filters would be testing four families. Kept for the last CALIBRATIONS states of
        the marks."""
        hit = self._calib.get(excluded)
        if hit is not None:
            return hit
        p = self._p_values(st, slice(None))
        q = bh_q(p)
        if len(self._calib) >= CALIBRATIONS:
            self._calib.pop(next(iter(self._calib)))
        self._calib[excluded] = (p, q)
        return p, q

    def calibration(self, excluded=frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """(p, q) per cell (aligned with `cell_group`, `cell_concept`) without the `excluded` source
        indices; q over every cell."""
        excluded = (excluded if isinstance(excluded, frozenset) else frozenset(excluded)) & self._source_set
        with self._lock:
            st = self._state(excluded)
            p, q = self._calibrated(st, excluded)
            return p.copy(), q.copy()

    def statistics(self, excluded=frozenset()) -> dict[str, np.ndarray]:
        """Per cell (aligned with `cell_group`, `cell_concept`): n, delta, d (NaN where undefined), t,
        delta_a, delta_b, agree, delta_min, support (in Δ's direction), score, beyond_a, beyond_b
        (module doc)."""
        excluded = (excluded if isinstance(excluded, frozenset) else frozenset(excluded)) & self._source_set
        with self._lock:
            st = self._state(excluded)
            s = self._measures(st, slice(None), potential=True)
            self._ref = _Reference(self, st, s.pop("potential"))
            return s

    def standing_without(self, cell: int, excluded=frozenset(), fdr: float = DEFAULT_FDR
                         ) -> tuple[int | None, dict[str, float]]:
        """The rank `report` gives `cell` (1 = first, all views together; the established first) without
        the `excluded` source indices, None when its score is 0, and the cell's statistics (the keys of
        `statistics()`, d NaN where undefined, with its p and q). Scores only the cells that could
        outrank it (module doc, What-if), so a keypress's preview of a hypothesis near the top costs
        what a ranking does, plus the state's calibration (computed once per state)."""
        excluded = (excluded if isinstance(excluded, frozenset) else frozenset(excluded)) & self._source_set
        with self._lock:
            st = self._state(excluded)
            mine = {k: float(v[0]) for k, v in self._measures(st, np.array([cell])).items()}
            p, q = self._calibrated(st, excluded)
            mine["p"], mine["q"] = float(p[cell]), float(q[cell])
            if mine["score"] <= 0:
                return None, mine
            est = np.nonzero(q < fdr)[0]
            est_score = self._measures(st, est, detail=False)["score"] if len(est) else np.zeros(0)
            est, est_score = est[est_score > 0], est_score[est_score > 0]
            x, key = mine["score"], self.keys[cell]

            def ahead(cells, score) -> int:
                return int(((score > x) | ((score == x) & (self.keys[cells] < key))).sum())

            if cell in set(est.tolist()):
                return ahead(est, est_score) + 1, mine
            cells, score = self._scored(st, self._ref.reaching(self, st, x) if self._ref else None)
            rest = ~np.isin(cells, est)
        return len(est) + ahead(cells[rest], score[rest]) + 1, mine

    def _scored(self, st: _Sums, cells: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(cells, their scores) under the sums `st`: of `cells`, or, when None, of every cell (a full
        pass, kept as the new _Reference)."""
        if cells is None:
            s = self._measures(st, slice(None), detail=False, potential=True)
            self._ref = _Reference(self, st, s["potential"])
            return np.arange(len(self.keys)), s["score"]
        return cells, self._measures(st, cells, detail=False)["score"]

    def _ranked(self, st: _Sums, kind: str | None, top: int) -> np.ndarray:
        """The cells of the `top` hypotheses under the sums `st` (of `kind`, when given), best first;
        ties go to the lower key. Scores only the cells that can reach the top since the last full
        pass (_Reference), or, when too many could, all of them (a new full pass)."""
        wanted = None if kind is None else Kind(kind).code
        cells, score = self._scored(st, self._ref.candidates(self, st, wanted, top) if self._ref else None)
        keep = score > 0
        if wanted is not None:
            keep &= self._cell_kind[cells] == wanted
        cells, score = cells[keep], score[keep]
        if len(cells) > top:  # the top scores, and every cell tied with the last of them
            cut = np.partition(score, len(score) - top)[len(score) - top]
            cells, score = cells[score >= cut], score[score >= cut]
        return cells[np.lexsort((self.keys[cells], -score))][:top]

    # -- the report -------------------------------------------------------------------------------

    def kind_of(self, group: int) -> tuple[Kind, int]:
        """(kind, id) of a group column: a data cluster, a prompt concept or a concept's own view."""
        k, p = self.st.k, self.st.prompt_groups.shape[1]
        if group < k:
            return Kind.CLUSTER, group
        return (Kind.PROMPT, group - k) if group < k + p else (Kind.CONCEPT, int(self.diag[group - k - p]))

    def cell_of(self, kind: str, group: int, concept: int) -> int | None:
        """The cell (index into `keys` and `statistics()`) of a hypothesis' (kind, group, concept),
        None when that cell is not ranked (too little support). The inverse of `kind_of`."""
        k, p = self.st.k, self.st.prompt_groups.shape[1]
        kind = Kind.parse(kind)
        if kind is Kind.CONCEPT:
            hit = np.nonzero(self.diag == concept)[0]
            if not len(hit):
                return None
            column = k + p + int(hit[0])
        else:
            column = group + (k if kind is Kind.PROMPT else 0)
        key = np.int64(column) * self.M + concept
        i = int(np.searchsorted(self.keys, key))
        return i if i < len(self.keys) and self.keys[i] == key else None

    def standing(self, cell: int, s: dict, q: np.ndarray | None = None, fdr: float = DEFAULT_FDR) -> int | None:
        """The rank `report` gives `cell` (1 = first) under the statistics `s` (of `statistics()`) and,
        when given, the cells' q (of `calibration()`: the established first); None when its score is
        0 (it is not ranked)."""
        score = s["score"]
        if score[cell] <= 0:
            return None
        ahead = (score > score[cell]) | ((score == score[cell]) & (self.keys < self.keys[cell]))
        if q is not None:
            est = (q < fdr) & (score > 0)
            ahead = np.where(est[cell], ahead & est, ahead | est)
        return int(ahead.sum()) + 1

    def driving_pairs(self, group: int, concept: int, sign: float, excluded=frozenset(), n: int = N_DRIVING
                      ) -> tuple[DrivingPair, ...]:
        """The pairs of `group` whose u on `concept` goes most strongly in direction `sign`, leaving
        out the `excluded` source indices."""
        key = (group, concept, sign > 0)
        order = self._driving.get(key)
        if order is None:  # the group's pairs by u in this direction; marks only skip some
            g, col = (self.G_csc, group) if group < self.G_csc.shape[1] else (self.A_csc, concept)
            rows = g.indices[g.indptr[col]:g.indptr[col + 1]]
            lo, hi = self.u_csc.indptr[concept], self.u_csc.indptr[concept + 1]
            common, _, at = np.intersect1d(rows, self.u_csc.indices[lo:hi], assume_unique=True, return_indices=True)
            u = self.u_csc.data[lo:hi][at]
            best = np.argsort(-sign * u, kind="stable")
            best = best[sign * u[best] > 0]
            if len(self._driving) >= DRIVING_CACHE:
                self._driving.clear()
            order = self._driving[key] = (self.analysis.source_index[common[best]].tolist(), u[best].tolist())
        out = []
        for s, u in zip(*order):
            if s not in excluded:
                out.append(DrivingPair(s, u))
                if len(out) == n:
                    break
        return tuple(out)

    def concept_in_pairs(self, rows, concept: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(chosen share, rejected share, u) of response `concept` in the pairs at analysis `rows`: the
        share of its features firing strongly in each reply (core.analysis.structure.reply_frequencies) and u,
        as the ranking and the driving pairs read them. The one reading of a pair's u on a concept
        that every view shows (a pair view reading all firings, weak ones too, would disagree)."""
        rows = np.asarray(rows, np.int64)
        chosen, rejected = (np.asarray(m[rows, concept].todense()).ravel() for m in self.rates)
        return chosen, rejected, np.asarray(self.u_csc[rows, concept].todense()).ravel()

    def counted(self, rows) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(chosen, rejected) (len(rows), d_sae) 0/1 CSR: where a feature counts in each reply of the
        analysis `rows`, as u and the shares read it (a strong firing, core.analysis.structure.reply_frequencies,
        above τ). A feature may fire weakly in a reply where it does not count: the evidence and the pair
        view show only what counts, so that no snippet or highlight contradicts the pair's u."""
        from core.analysis.structure import reply_frequencies

        return tuple(C.fires(f, self.st.response.tau) for f in reply_frequencies(self.analysis, self.st.params, rows))

    def report(self, excluded=frozenset(), top: int = 20, kind: str | None = None, n_driving: int = N_DRIVING,
               fdr: float = DEFAULT_FDR) -> HypothesisReport:
        """The `top` hypotheses without the `excluded` source indices: first those established (q < `fdr`
        over every cell, core.analysis.calibration), then the rest, each part by score (module doc);
        `kind` "cluster", "prompt" or "concept" shows one kind's rows only (default: all, in one
        ranking), on the same q. Ties go to the lower cell key. Raises UsageError."""
        wanted = Kind.parse(kind)  # UsageError for an unknown kind
        fdr = _checked_fdr(fdr)
        excluded = (excluded if isinstance(excluded, frozenset) else frozenset(excluded)) & self._source_set
        with self._lock:
            st = self._state(excluded)
            p, q = self._calibrated(st, excluded)
            est = np.nonzero(q < fdr)[0]
            if wanted is not None:
                est = est[self._cell_kind[est] == wanted.code]
            if len(est):
                score = self._measures(st, est, detail=False)["score"]
                est, score = est[score > 0], score[score > 0]
                est = est[np.lexsort((self.keys[est], -score))]
            rest = self._ranked(st, kind, top + len(est))
            cand = np.concatenate([est, rest[~np.isin(rest, est)]])[:top]
            shown = self._measures(st, cand)
        shown["p"], shown["q"] = p[cand], q[cand]
        shown["established"] = np.isin(cand, est)
        n_tested = len(self.keys)
        hyps = tuple(self._hypothesis(rank, int(c), shown, excluded, n_driving, at=i)
                     for i, (rank, c) in enumerate(enumerate(cand, start=1)))
        return HypothesisReport(
            n_pairs=self.analysis.n - len(excluded), n_excluded=len(excluded),
            n_silent=int((self.st.clusters < 0).sum()), k=self.st.k, n_concepts=self.M,
            n_grouped=self.st.response.n_grouped, n_prompt_groups=self.st.prompt_groups.shape[1],
            n_cells=len(self.keys), structure_key=self.st.key, hypotheses=hyps,
            n_tested=n_tested, fdr=fdr, n_established=len(est), detectable_pairs=detectable_pairs(n_tested, fdr),
        )

    def best_by_group(self, kind: str, excluded=frozenset(), per_group: int = 3, fdr: float = DEFAULT_FDR,
                      n_driving: int = N_DRIVING) -> dict[int, tuple[Hypothesis, ...]]:
        """Per group of `kind` ("cluster": a data cluster, "prompt": a prompt concept) its `per_group`
        best hypotheses without the `excluded` source indices, each as `report` (every kind, one
        ranking) gives it: its rank there, its q over every cell, established or not, and in that
        order (the established first, then the rest, each by score). Groups with no ranked hypothesis
        are left out. Scores every cell once (a full pass). Raises UsageError for another kind."""
        wanted = Kind.parse(kind)
        if wanted is None or not wanted.local:
            raise UsageError(f"hypotheses by group need a kind of group: cluster or prompt, not {kind!r}")
        fdr = _checked_fdr(fdr)
        excluded = (excluded if isinstance(excluded, frozenset) else frozenset(excluded)) & self._source_set
        with self._lock:
            st = self._state(excluded)
            p, q = self._calibrated(st, excluded)
            cells, score = self._scored(st, None)  # every cell, in cell order
            est = (q < fdr) & (score > 0)
            order = np.lexsort((self.keys, -score, ~est))  # report's order: established, score, key
            order = order[score[order] > 0]
            rank = np.zeros(len(cells), np.int64)
            rank[order] = np.arange(1, len(order) + 1)
            mine = order[self._cell_kind[order] == wanted.code]
            group = self.cell_group[mine]
            by_group = np.argsort(group, kind="stable")  # each group's cells stay in report's order
            place = np.arange(len(mine)) - np.searchsorted(group[by_group], group[by_group])
            picked = mine[np.sort(by_group[place < per_group])]
            shown = self._measures(st, picked)
        shown["p"], shown["q"], shown["established"] = p[picked], q[picked], est[picked]
        out: dict[int, list[Hypothesis]] = {}
        for i, c in enumerate(picked):
            h = self._hypothesis(int(rank[c]), int(c), shown, excluded, n_driving, at=i)
            out.setdefault(h.group, []).append(h)
        return {g: tuple(hs) for g, hs in out.items()}

    def _hypothesis(self, rank: int, c: int, s: dict, excluded: frozenset, n_driving: int, at: int | None = None
                    ) -> Hypothesis:
        """Cell `c` as a Hypothesis; its statistics are at `at` in `s` (default: at `c`, as
        `statistics()` gives them)."""
        at = c if at is None else at
        group, concept = int(self.cell_group[c]), int(self.cell_concept[c])
        kind, gid = self.kind_of(group)
        sign = 1.0 if s["delta"][at] >= 0 else -1.0
        names = self.names
        group_name = names.group(kind, gid) if names is not None and kind.local else ""
        concept_name = names.concept(concept) if names is not None else ""
        d = float(s["d"][at])
        h = dict(
            rank=rank, kind=kind, group=gid, group_name=group_name, concept=concept, concept_name=concept_name,
            direction="more" if sign > 0 else "less", n=int(s["n"][at]), n_support=int(s["support"][at]),
            n_moving=int(s["moving"][at]), delta=float(s["delta"][at]), d=d if np.isfinite(d) else None, t=float(s["t"][at]),
            delta_a=float(s["delta_a"][at]), delta_b=float(s["delta_b"][at]), halves_agree=bool(s["agree"][at]),
            delta_min=float(s["delta_min"][at]), score=float(s["score"][at]),
            p=float(s["p"][at]) if "p" in s else float("nan"), q=float(s["q"][at]) if "q" in s else float("nan"),
            established=bool(s["established"][at]) if "established" in s else False,
        )
        return Hypothesis(
            **h, sentence=sentence(**h),
            driving=self.driving_pairs(group, concept, sign, excluded, n_driving),
            features=tuple(int(f) for f in self.st.response.features(concept)),
        )


def _checked_fdr(fdr: float) -> float:
    """`fdr` when it is a level the calibration accepts; UsageError otherwise."""
    try:
        return check_fdr(fdr)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _variance(s1, s2, n, size):
    """Sample variance of u from Σ u·|R| (`s1`), Σ (u·|R|)² (`s2`) over `n` rows: exactly 0 where every
    u is the same (n·s2 = s1², in integers), so that d is undefined there rather than huge."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / np.maximum(n, 1)
        var = np.maximum(s2 - n * mean**2, 0) / np.maximum(n - 1, 1) / size**2
    return np.where(n * s2 == s1 * s1, 0.0, var)


def _moments(u: sp.csr_matrix) -> tuple[sp.csr_matrix, ...]:
    """u, u², 1{u > 0}, 1{u < 0} of an int64 CSR with no stored zeros, all on u's pattern."""
    def on_pattern(data):
        return sp.csr_matrix((data, u.indices, u.indptr), shape=u.shape)
    return (u, on_pattern(u.data * u.data), on_pattern((u.data > 0).astype(np.int64)),
            on_pattern((u.data < 0).astype(np.int64)))


def _column_sums(m: sp.csr_matrix, n_cols: int) -> np.ndarray:
    """(n_cols,) int64 exact column sums of an integer CSR (explicit zeros add nothing)."""
    out = np.zeros(n_cols, np.int64)
    np.add.at(out, m.indices, m.data.astype(np.int64, copy=False))
    return out


def beyond_lean(concepts, b: sp.csr_matrix, u: sp.csr_matrix) -> sp.csr_matrix:
    """(n, M) CSR v = u − E[u | the pair's lean]: u beyond what each pair's lean on *other* features
    predicts (module doc, Lean). `b` (n, d_sae): 1{chosen freq > τ} − 1{rejected freq > τ}. For pair
    i and concept m, with c (r) the features firing above τ in the chosen (rejected) reply only, c_m
    (r_m) those of them in concept m, and a_im = (c_m + r_m) / |R_m| the share of m's features that
    fire on one side only:
        lean_im = ((c − c_m) − (r − r_m)) / ((c − c_m) + (r − r_m) + 2)
        v_im    = u_im − a_im · lean_im
    lean_im is 2p − 1 for p the smoothed chance that a feature outside m firing on one side of this
    pair is on the chosen side; leaving m out keeps a concept from explaining itself away."""
    pos, neg = (b > 0).astype(np.float64), (b < 0).astype(np.float64)
    c, r = np.asarray(pos.sum(1)).ravel(), np.asarray(neg.sum(1)).ravel()
    ind = concepts.indicator().astype(np.float64)
    big = 1e6  # c_m and r_m in one matrix (counts stay far below it): its pattern is the union of both
    e = (pos @ ind + big * (neg @ ind)).tocsr()
    rm = np.floor(e.data / big)
    cm = e.data - big * rm
    row = np.repeat(np.arange(e.shape[0]), np.diff(e.indptr))
    co, ro = c[row] - cm, r[row] - rm
    expected = e.copy()
    expected.data = (cm + rm) / concepts.sizes()[e.indices] * (co - ro) / (co + ro + 2.0)
    v = (u - expected).tocsr()
    v.eliminate_zeros()
    return v


def sentence(kind: str, group: int, group_name: str, concept: int, concept_name: str, direction: str, n: int,
             delta: float, n_support: int | None = None, n_moving: int | None = None, **_) -> str:
    """A hypothesis as a person reads it: where, which way, and its evidence (how many of the pairs
    where the concept differs between the replies go this way; Δ)."""
    what = f"concept {concept}" + (f" «{concept_name}»" if concept_name else "")
    votes = f"{n_support} of {n_moving} that differ go this way, " if n_moving else ""
    kind = Kind(kind)
    if kind is Kind.CONCEPT:
        return (f"where replies have {what} at all, chosen replies have {direction} of it "
                f"({n} pairs, {votes}Δ {delta:+.2f})")
    return f"{kind.where(group, group_name)}, chosen replies have {direction} {what} ({n} pairs, {votes}Δ {delta:+.2f})"


def effect_size(d: float | None) -> str:
    """Cohen's d as text: +0.42, or — where it is undefined (None: u has no spread, Δ = ±1)."""
    return "—" if d is None else f"{d:+.2f}"


# -- the facade both front ends call ----------------------------------------------------------------


def open_hypotheses(workspace, params=None, progress: ProgressFn | None = None,
                    cancel: threading.Event | None = None) -> Hypotheses:
    """The hypothesis engine of a workspace folder (or of a core.analysis.shifts.Analysis already loaded), with
    keyword names: the structure and names are read from the workspace's cache, or fitted and cached
    on first use (core.analysis.structure, core.analysis.naming).
    Raises WorkspaceError (not a workspace, an old schema, no pairs), Cancelled."""
    from core.analysis.naming import load_names
    from core.progress import Progress, reporter
    from core.analysis.shifts import Analysis
    from core.analysis.structure import Params, structure
    from core.data.workspace import Workspace

    analysis = workspace if isinstance(workspace, Analysis) else Analysis(Workspace(workspace))
    st = structure(analysis, params or Params(), progress=progress, cancel=cancel)
    emit = reporter(progress)
    emit(Progress("names", "keyword names of concepts and clusters", 0, 2, "steps"))
    names = load_names(analysis, st)
    emit(Progress("hypotheses", "per-(group, concept) sums", 1, 2, "steps"))
    return Hypotheses(analysis, st, names)


@dataclass(frozen=True)
class NamedConceptShift:
    """A concept's global predicted shift (core.analysis.concepts.ConceptShift) with its name and features."""

    shift: C.ConceptShift
    name: str
    features: tuple[int, ...]


def concept_report(engine: Hypotheses, excluded=frozenset(), top: int = 20, grouped_only: bool = False,
                   fdr: float = DEFAULT_FDR) -> tuple[NamedConceptShift, ...]:
    """The `top` response concepts without the `excluded` pairs: the established global shifts first
    (q < `fdr`, core.analysis.calibration; q over every concept that moves), then the rest, each by |shift|
    (mean u); with `grouped_only`, communities of >= 4 features only."""
    keep = np.ones(engine.analysis.n, bool)
    keep[engine.analysis.rows(excluded)] = False
    out = []
    for c in C.concept_shifts(engine.st.response, engine.u, np.nonzero(keep)[0], fdr=fdr):
        if grouped_only and c.concept >= engine.st.response.n_grouped:
            continue
        name = engine.names.concept(c.concept) if engine.names is not None else ""
        out.append(NamedConceptShift(c, name, tuple(int(f) for f in engine.st.response.features(c.concept))))
        if len(out) == top:
            break
    return tuple(out)
