"""Concepts: groups of SAE features that fire together, and each pair's signed disparity on them.

A single SAE feature is too narrow to read (one token, one spelling); the paper this project
reimplements (METHOD.md, "Concepts") groups features into concepts and predicts shifts per concept.

Firing. A feature *fires* in a reply when its firing frequency (the share of the reply's tokens it
fires on) exceeds TAU = 0.01. At 0.01 a feature must fire on at least two tokens of a reply of up to
200 tokens, so a single stray token does not count, while a sentence-long concept in a long reply
(10 tokens of 500 = 0.02) still does; the paper uses the same order (τ ≈ 0.01).
For replies, the firing must also be strong: the reply's max activation of the feature must reach
REL_MAX = 0.7 of the feature's largest activation over all replies (`strong`). The paper's SAE has
65k features trained on 750M tokens; ours has 2,048 trained on one dataset, and its features are
broader: the goblin feature of the goblin test (max activation 23-27 on goblin sentences) also fires
weakly (max at most 17.9) on more than 1% of the tokens of 145 other replies (127 pairs of 500), so by
frequency alone the goblin concept is "active" in a quarter of the pairs, one-sided at random there,
and its hypothesis drowns. A feature's strongest firings are what it stands for (the top activations
auto-interpretation reads). 0.7 was chosen on the goblin benchmark (it is the smallest round share
that drops every weak firing of its goblin feature: 17.9 / 27.1 = 0.66); 0.5 and 0.6 rank the goblin
hypothesis lower (tests/bench/README.md, "Goblin test: the goblin hypothesis' rank", has the table),
so it is a tuned value, not a derived one.

Graph. Features are nodes; the edge weight of two features is the mutual information (MI) of their
binary firing over replies (chosen and rejected replies together), for positively associated pairs
only (they co-fire more often than chance) and only where the co-firing is significant: the G
statistic 2·N·MI (χ²(1) under independence) must exceed MIN_G = 24 (p ≈ 1e-6), else independent
features, each tied to its k "best" chance partners, collapse into one big meaningless community
(measured on constructed data: 170 independent features became one concept). The edge weight is the
MI normalised by the larger of the two features' entropies (in [0, 1]: 1 when they always fire
together), and edges under MIN_NMI = 0.1 are dropped: a rare feature that fires in 5 replies, each
also firing a common feature, shares significant raw MI with it, and on raw MI Leiden put a goblin
feature (5 of 1,000 replies) into a 290-feature community of generic words, diluting its u to ~0.1;
normalised, that edge weighs ~0.01 and the rare feature stays its own concept. Counts come from the sparse product Xᵀ X of the binary
firing matrix X, on at most MAX_GRAPH_ROWS replies (a seeded sample beyond that; the count is
quadratic in the features a reply fires).

Edges kept: each feature's K_NEIGHBOURS strongest edges (a symmetric k-nearest-neighbour graph), not
the globally strongest ~1% of edges the paper keeps. MI grows with how often features fire (a pair
co-firing in half the replies carries far more MI than a pair that always co-fires in 1%), so a
global cut keeps the frequent features' edges and leaves every rare feature isolated: a behaviour in
1% of the data can then never form a concept. A per-feature top-k keeps each feature's own best
partners whatever its frequency, and costs O(features · k) edges for Leiden. Measured in
tests/bench/README.md ("How the structure is built").

Communities: Leiden (`leidenalg`, modularity via RBConfigurationVertexPartition, seeded) on that
graph; communities of at least MIN_SIZE features are concepts, numbered by size (largest first);
every other feature that fires somewhere is a concept of its own (numbered after the groups, by
feature id); a feature that never fires above TAU belongs to none (membership -1).

Per pair i and concept m (features g in R_m):
    b_ig = 1{chosen freq_ig > τ} − 1{rejected freq_ig > τ}
    u_im = mean over g in R_m of b_ig          (in [−1, 1]; > 0: the chosen reply has more of it)
    s_im = Σ over g in R_m of (chosen freq_ig + rejected freq_ig)   (symmetric activity)
A concept's global predicted shift is the mean of u over pairs (> 0: DPO amplifies it), with a
normal 95% CI and the split-half check of core.analysis.shifts (even and odd rows agree in sign).

Prompt concepts are fitted the same way over the prompts' firing frequencies (one row per prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from core.analysis.calibration import DEFAULT_FDR, bh_q, sign_flip_p

TAU = 0.01
REL_MAX = 0.7  # a reply's firing of a feature counts only if its max reaches this share of the feature's max
K_NEIGHBOURS = 10
MIN_SIZE = 4
MIN_DF = 2  # a feature needs this many firing rows (in the graph's rows) to get edges at all
MIN_G = 24.0  # an edge's G statistic 2·N·MI must exceed this (χ²(1) p ≈ 1e-6): no chance co-firing
MAX_GRAPH_ROWS = 10_000
MIN_NMI = 0.1  # an edge's MI over the larger of the two features' entropies (module doc)
MIN_COFIRE = 3  # rows two features must share before their MI is computed
MAX_DF_SHARE = 0.5  # a feature firing in most replies says nothing about which ones belong together
BLOCK_NNZ = 20_000_000
RESOLUTION = 1.0
Z95 = 1.959964


@dataclass(frozen=True)
class Concepts:
    """A partition of SAE features into concepts (module doc).

    membership: (d_sae,) concept id of each feature, -1 for features that never fire above `tau`.
    n_grouped:  concepts 0..n_grouped-1 are communities of >= MIN_SIZE features, the rest single ones.
    """

    kind: str  # "response" | "prompt"
    membership: np.ndarray
    n_concepts: int
    n_grouped: int
    tau: float

    def features(self, concept: int) -> np.ndarray:
        """The features of `concept`, ascending."""
        return np.nonzero(self.membership == concept)[0]

    def sizes(self) -> np.ndarray:
        """(n_concepts,) number of features per concept."""
        m = self.membership
        return np.bincount(m[m >= 0], minlength=self.n_concepts)

    def indicator(self, mean: bool = False) -> sp.csr_matrix:
        """(d_sae, n_concepts) 0/1 membership matrix; with `mean`, each column sums to 1 (1/|R_m|)."""
        m = self.membership
        rows = np.nonzero(m >= 0)[0]
        vals = np.ones(len(rows), np.float32)
        if mean:
            vals /= self.sizes()[m[rows]].astype(np.float32)
        return sp.csr_matrix((vals, (rows, m[rows])), shape=(len(m), self.n_concepts))


def fires(freq: sp.csr_matrix, tau: float = TAU) -> sp.csr_matrix:
    """(rows, d) float32 0/1 CSR: where a feature's firing frequency exceeds `tau`."""
    f = freq.tocsr()
    keep = f.data > tau
    out = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), f.indices[keep], np.concatenate([[0], np.cumsum(keep)])[f.indptr]),
        shape=f.shape,
    )
    return out


def reference_max(*maxima: sp.csr_matrix) -> np.ndarray:
    """(d,) each feature's largest activation over the rows of all `maxima` ((rows, d) CSR of
    per-reply max activations, e.g. chosen and rejected)."""
    ref = np.zeros(maxima[0].shape[1], np.float32)
    for m in maxima:
        ref = np.maximum(ref, m.max(axis=0).toarray().ravel())
    return ref


def strong(freq: sp.csr_matrix, maxima: sp.csr_matrix, ref: np.ndarray, rel_max: float = REL_MAX) -> sp.csr_matrix:
    """(rows, d) CSR: `freq` where the reply's max activation of the feature reaches `rel_max` of the
    feature's reference max `ref` (d,), 0 elsewhere (module doc, "Firing"). `freq` and `maxima` are
    per-reply summaries of the same replies (same rows, same stored features)."""
    if rel_max <= 0:
        return freq.tocsr()
    weak = maxima.tocsr().copy()
    weak.data = (weak.data < rel_max * ref[weak.indices]).astype(np.float32)
    out = (freq - freq.multiply(weak)).tocsr()
    out.eliminate_zeros()
    return out


def concept_rate(concepts: Concepts, freq: sp.csr_matrix, tau: float | None = None) -> sp.csr_matrix:
    """(rows, n_concepts) CSR: per row of `freq` (any per-reply or per-prompt firing frequency
    matrix, (rows, d_sae)), the share of each concept's features that fire above `tau` (default: the
    concepts' own τ). A reply's thresholded firing statistic of a concept, in [0, 1]."""
    return concept_mean(fires(freq, concepts.tau if tau is None else tau), concepts.indicator(mean=True))


def disparity(concepts: Concepts, chosen: sp.csr_matrix, rejected: sp.csr_matrix) -> sp.csr_matrix:
    """(n, n_concepts) CSR u: per pair, mean over a concept's features of 1{chosen freq > τ} −
    1{rejected freq > τ} (module doc). `chosen`, `rejected`: (n, d_sae) firing frequencies."""
    return disparity_of(fires(chosen, concepts.tau) - fires(rejected, concepts.tau), concepts.indicator(mean=True))


def disparity_of(b: sp.csr_matrix, mean_indicator: sp.csr_matrix) -> sp.csr_matrix:
    """(n, n_concepts) CSR u from `b` (n, d_sae), 1{chosen freq > τ} − 1{rejected freq > τ}, and the
    concepts' `indicator(mean=True)` (d_sae, n_concepts): `disparity` when those are at hand.

    Counted in integers, then divided by each concept's size: summing ±1/|R| in float32 leaves
    residues (1e-8) where as many of a concept's features fire on each side, and a stored residue is
    a pair "moving" the concept (a vote in the sign test) where nothing moves. u is exactly 0 there."""
    return concept_mean(b, mean_indicator)


def concept_mean(x: sp.csr_matrix, mean_indicator: sp.csr_matrix) -> sp.csr_matrix:
    """(rows, n_concepts) CSR: per row of `x` (rows, d_sae) of small integers (0/1 firings, ±1
    differences), the mean over each concept's features, as x @ `mean_indicator` but summed in integers
    and divided once, so that an equal count is exactly 0 and 6 of 12 exactly 0.5 (float32 sums of
    1/|R| leave residues either side)."""
    indicator = (mean_indicator > 0).astype(np.float32)  # (d_sae, n_concepts) 0/1
    sizes = np.asarray(indicator.sum(0)).ravel()
    out = (x.astype(np.float32) @ indicator).tocsr()  # integer counts: exact in float32
    out.eliminate_zeros()
    out.data /= sizes[out.indices]
    return out


def activity(concepts: Concepts, chosen: sp.csr_matrix, rejected: sp.csr_matrix) -> sp.csr_matrix:
    """(n, n_concepts) CSR s: per pair, Σ over a concept's features of chosen + rejected firing
    frequency (symmetric: it does not know which side was chosen)."""
    return ((chosen + rejected) @ concepts.indicator()).tocsr()


# -- fitting ----------------------------------------------------------------------------------------


def mutual_information(n11: np.ndarray, df_a: np.ndarray, df_b: np.ndarray, n: int) -> np.ndarray:
    """Mutual information (nats) of two binary variables from counts: `n11` rows where both are 1,
    `df_a`, `df_b` rows where each is 1, `n` rows in all (elementwise over arrays)."""
    n11 = n11.astype(np.float64)
    a, b = df_a.astype(np.float64), df_b.astype(np.float64)
    cells = (
        (n11, a, b),
        (a - n11, a, n - b),
        (b - n11, n - a, b),
        (n - a - b + n11, n - a, n - b),
    )
    mi = np.zeros_like(n11)
    for joint, ma, mb in cells:
        ok = joint > 0
        p = joint[ok] / n
        mi[ok] += p * np.log(joint[ok] * n / (ma[ok] * mb[ok]))
    return np.maximum(mi, 0.0)


def cofiring_graph(x: sp.csr_matrix, k: int = K_NEIGHBOURS, min_df: int = MIN_DF,
                   min_g: float = MIN_G, block_nnz: int = BLOCK_NNZ, min_nmi: float = MIN_NMI) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, weight) edges of the symmetric k-nearest-neighbour MI graph over the columns of the
    0/1 matrix `x` (rows, d): each column keeps its `k` strongest positively associated partners
    whose co-firing is significant (G = 2·rows·MI > `min_g`). Columns firing in fewer than `min_df`
    rows, or in more than MAX_DF_SHARE of them, get no edges.

    The co-firing counts Xᵀ X are computed a block of columns at a time (about `block_nnz` counts
    each) and reduced to each column's top k at once, so memory stays bounded at 65k features."""
    n = x.shape[0]
    x = x.tocsc()
    df = np.diff(x.indptr)
    cols = np.nonzero((df >= min_df) & (df <= MAX_DF_SHARE * n))[0]
    if len(cols) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    xs = x[:, cols].astype(np.float32).tocsc()
    xr = xs.tocsr()
    dfc = df[cols].astype(np.float64)
    p = dfc / n
    entropy = -(p * np.log(p) + np.where(p < 1, (1 - p) * np.log(np.maximum(1 - p, 1e-300)), 0.0))
    # expected counts per column of Xᵀ X ~ Σ over its rows of the row's firings: cut blocks by that
    row_len = np.diff(xr.indptr).astype(np.float64)
    cost = np.asarray(xs.T @ row_len).ravel()
    bounds = np.searchsorted(np.cumsum(cost), np.arange(block_nnz, cost.sum() + block_nnz, block_nnz))
    starts = np.unique(np.concatenate([[0], np.minimum(bounds + 1, len(cols))]))
    ea, eb, ew = [], [], []
    for lo, hi in zip(starts[:-1], starts[1:]):
        co = (xs[:, lo:hi].T @ xr).tocsr()  # (block, c) co-firing counts
        # cheap integer tests first: most counts are chance co-firings of 1 or 2 rows
        keep = co.data >= MIN_COFIRE
        a = np.repeat(np.arange(lo, hi), np.diff(co.indptr))[keep]
        b, n11 = co.indices[keep], co.data[keep].astype(np.float64)
        del co
        keep = (a != b) & (n11 * n > dfc[a] * dfc[b])
        a, b, n11 = a[keep], b[keep], n11[keep]
        mi = mutual_information(n11, dfc[a], dfc[b], n)
        w = mi / np.maximum(np.maximum(entropy[a], entropy[b]), 1e-12)  # normalised: in [0, 1]
        strong = (2 * n * mi > min_g) & (w >= min_nmi)
        a, b, w = a[strong], b[strong], w[strong]
        # each column's k strongest partners: sort by (column, -weight), keep the first k of each
        order = np.lexsort((-w, a))
        a, b, w = a[order], b[order], w[order]
        first = np.searchsorted(a, a)
        top = np.arange(len(a)) - first < k
        ea.append(a[top])
        eb.append(b[top])
        ew.append(w[top])
    a, b, w = np.concatenate(ea), np.concatenate(eb), np.concatenate(ew)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo.astype(np.int64) * len(cols) + hi
    key, first = np.unique(key, return_index=True)  # an edge kept by both ends counts once
    return cols[lo[first]], cols[hi[first]], w[first]


def leiden(n_nodes: int, a: np.ndarray, b: np.ndarray, w: np.ndarray, resolution: float = RESOLUTION,
           seed: int = 0) -> np.ndarray:
    """(n_nodes,) community of each node of the weighted graph (a, b, w), by Leiden (modularity)."""
    import igraph
    import leidenalg

    g = igraph.Graph(n=n_nodes, edges=np.column_stack([a, b]).tolist(), directed=False)
    g.es["weight"] = w.tolist()
    part = leidenalg.find_partition(
        g, leidenalg.RBConfigurationVertexPartition, weights="weight", resolution_parameter=resolution,
        seed=seed, n_iterations=2,
    )
    return np.asarray(part.membership, dtype=np.int64)


def fit_concepts(
    firing: sp.csr_matrix,
    kind: str = "response",
    tau: float = TAU,
    k: int = K_NEIGHBOURS,
    min_size: int = MIN_SIZE,
    resolution: float = RESOLUTION,
    max_rows: int = MAX_GRAPH_ROWS,
    min_g: float = MIN_G,
    min_nmi: float = MIN_NMI,
    seed: int = 0,
) -> Concepts:
    """Concepts from a (rows, d_sae) firing-frequency matrix (replies, or prompts): the k-NN mutual
    information graph of binary co-firing, Leiden communities of >= `min_size` features, every other
    feature that fires its own concept (module doc)."""
    x = fires(firing, tau)
    d = x.shape[1]
    ever = np.diff(x.tocsc().indptr) > 0
    if x.shape[0] > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=max_rows, replace=False))
        x = x[rows]
    a, b, w = cofiring_graph(x, k=k, min_g=min_g, min_nmi=min_nmi)
    membership = np.full(d, -1, dtype=np.int64)
    n_grouped = 0
    if len(a):
        nodes = np.unique(np.concatenate([a, b]))
        idx = np.searchsorted(nodes, [a, b])
        comm = leiden(len(nodes), idx[0], idx[1], w, resolution=resolution, seed=seed)
        sizes = np.bincount(comm)
        big = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] >= min_size]
        renumber = np.full(len(sizes), -1, dtype=np.int64)
        renumber[big] = np.arange(len(big))
        membership[nodes] = renumber[comm]
        n_grouped = len(big)
    alone = np.nonzero(ever & (membership < 0))[0]
    membership[alone] = n_grouped + np.arange(len(alone))
    return Concepts(kind, membership, n_grouped + len(alone), n_grouped, tau)


# -- global predicted shift per concept -------------------------------------------------------------


@dataclass(frozen=True)
class ConceptShift:
    """One concept's global predicted shift: the mean of u over pairs (> 0: DPO amplifies it)."""

    concept: int
    n_features: int
    shift: float
    ci: tuple[float, float]  # normal 95% CI of the mean
    shift_a: float  # mean over even rows
    shift_b: float  # mean over odd rows
    stable: bool  # both halves agree in sign with the whole
    n_firing: int  # pairs where u != 0
    p: float = 1.0  # against labels swapped at random per pair (core.analysis.calibration.sign_flip_p)
    q: float = 1.0  # Benjamini–Hochberg over every concept that moves in some pair
    established: bool = False  # q < fdr


def concept_shifts(concepts: Concepts, u: sp.csr_matrix, rows: np.ndarray | None = None,
                   fdr: float = DEFAULT_FDR) -> list[ConceptShift]:
    """Every concept's global shift over the pairs `rows` of u (n, n_concepts) (default: all), with
    its p and q (core.analysis.calibration; q over the concepts that move in some pair): the established
    (q < `fdr`) first, then the rest, each by |shift|."""
    u = u.tocsr() if rows is None else u.tocsr()[rows]
    n = max(u.shape[0], 1)
    idx = np.arange(u.shape[0]) if rows is None else np.asarray(rows)
    s1 = np.asarray(u.sum(0)).ravel()
    s2 = np.asarray(u.multiply(u).sum(0)).ravel()
    mean = s1 / n
    sd = np.sqrt(np.maximum(s2 / n - mean**2, 0) * n / max(n - 1, 1))
    half = np.zeros(u.shape[0], bool)
    half[idx % 2 == 0] = True
    ua = u[np.nonzero(half)[0]]
    na, nb = max(int(half.sum()), 1), max(int((~half).sum()), 1)
    sa = np.asarray(ua.sum(0)).ravel()
    mean_a, mean_b = sa / na, (s1 - sa) / nb
    nf = np.diff(u.tocsc().indptr)
    sizes = concepts.sizes()
    p = sign_flip_p(s1, s2, nf)
    q = np.ones(len(p))
    moving = nf > 0
    q[moving] = bh_q(p[moving])
    established = q < fdr
    out = []
    for m in np.lexsort((-np.abs(mean), ~established)):
        if nf[m] == 0:
            continue
        half_width = Z95 * sd[m] / np.sqrt(n)
        sign = np.sign(mean[m])
        out.append(ConceptShift(
            int(m), int(sizes[m]), float(mean[m]), (float(mean[m] - half_width), float(mean[m] + half_width)),
            float(mean_a[m]), float(mean_b[m]), bool(sign != 0 and np.sign(mean_a[m]) == sign == np.sign(mean_b[m])),
            int(nf[m]), float(p[m]), float(q[m]), bool(established[m]),
        ))
    return out
