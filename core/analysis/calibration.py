"""How sure a finding is: a null matched to each claim, its p-value, and Benjamini–Hochberg q over the
claims a view tests. Nothing here reads a workspace; core.analysis.hypotheses, core.analysis.concepts and core.analysis.shifts
call it with their own sums and counts.

Global shift ("DPO will amplify concept R / feature f", the Concepts and Shifts views). Null: the
labels carry no preference, so each pair's chosen and rejected could be swapped with probability
1/2: a sign flip of the pair's x (u of a concept, delta of a feature). T = Σ x_i. Given the |x_i|,
T is a Rademacher sum, so P(|T| ≥ z·√Σx²) ≤ 2·exp(−z²/2) whatever n and the x_i (Hoeffding): an exact
bound, used while few pairs move (under NORMAL_MIN); with more the normal tail 2·Φ(−|z|) of the
same z is used (closed form where large).

Local hypothesis ("inside group G, chosen replies have more R than outside", data clusters and
prompt concepts). Two nulls, and a row must reject both (an intersection–union test: p is the larger
of the two):
    labels   inside G, among the k pairs where R moves (u ≠ 0), the number x moving in Δ's direction
             is Binomial(k, 1/2) when chosen and rejected are swapped at random: exact sign test.
    where    G's membership drawn at random among the pairs of its view: x, the pairs of G moving R
             in Δ's direction, is then hypergeometric (the view's N pairs, K of them moving R that
             way, a group of G's size): an exact test of whether pairs moving R this way gather in G
             more than in a random group. A global shift alone (R more often chosen everywhere)
             leaves this null true in every group whose pairs are not picked by R's activity.
    Neither null alone would do. With membership alone, a data cluster built from where R fires
    holds many pairs where R moves, either way, and would pass with coin-flip labels; the label test
    stops it (about half go each way). With the label test alone, a global shift would make every
    group where R moves pass. Both are two-sided: the one-sided tail in Δ's direction, doubled, at
    most 1. The concept view ("where replies have R at all, chosen replies have more of it") is a
    claim about the labels alone: its p is the sign test.

Both tails are exact: the sign test's from scipy's bdtrc, the membership test's summed outwards from
the pmf (`hypergeom_sf`), vectorised, so that the 2 million
cells of a 260k-pair workspace cost seconds.

q (Benjamini–Hochberg) is computed over every claim a view tests, and a view says how many that is.
A claim is *established* when q < fdr (DEFAULT_FDR, a setting). With m claims and none established,
`detectable_pairs` and `detectable_d` say what the data could have shown.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_FDR = 0.1  # q below which a finding is established
NORMAL_MIN = 50  # a global test uses the normal tail from this many moving pairs on
MAX_FDR = 0.25  # the largest false discovery rate a view accepts


def _special():
    """scipy.special, imported on first use: the front ends import this module (format_q) at start-up."""
    from scipy import special

    return special


def check_fdr(fdr: float) -> float:
    """`fdr` when it is a usable false discovery rate (0 < fdr ≤ MAX_FDR), else ValueError."""
    if not (isinstance(fdr, int | float) and 0 < fdr <= MAX_FDR):
        raise ValueError(f"fdr {fdr}: must be above 0 and at most {MAX_FDR}")
    return float(fdr)


def sign_flip_p(s1: np.ndarray, s2: np.ndarray, n_moving: np.ndarray) -> np.ndarray:
    """Two-sided p of Σx against random sign flips of each pair's x (module doc, global shift), from
    the sums Σx (`s1`), Σx² (`s2`) and the number of pairs with x ≠ 0. 1 where nothing moves."""
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(s2 > 0, np.abs(s1) / np.sqrt(s2), 0.0)
    normal = 2 * _special().ndtr(-z)
    bound = np.minimum(2 * np.exp(-0.5 * z * z), 1.0)
    return np.where(np.asarray(n_moving) >= NORMAL_MIN, normal, bound)


def sign_test_p(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Two-sided exact sign test: x of k moving pairs go Δ's way, each way equally likely."""
    x, k = np.asarray(x, np.int64), np.asarray(k, np.int64)
    one = np.where(x > 0, _special().bdtrc(np.maximum(x - 1, 0), k, 0.5), 1.0)  # P(X ≥ x)
    return np.where(k > 0, np.minimum(2 * one, 1.0), 1.0)


def membership_p(x: np.ndarray, k: np.ndarray, big_k: np.ndarray, big_n: np.ndarray) -> np.ndarray:
    """Two-sided p of x of a group's k pairs going Δ's way, when big_k of the view's big_n pairs go
    that way and the group is drawn at random among them (hypergeometric; the tail in Δ's direction
    doubled, at most 1)."""
    return np.minimum(2 * hypergeom_sf(x, k, big_k, big_n), 1.0)


def _log_pmf(x, n, big_k, big_n):
    """log P(X = x), X hypergeometric: `n` draws from `big_n` holding `big_k` successes."""
    g = _special().gammaln
    return (g(big_k + 1) - g(x + 1) - g(big_k - x + 1) + g(big_n - big_k + 1) - g(n - x + 1)
            - g(big_n - big_k - n + x + 1) - g(big_n + 1) + g(n + 1) + g(big_n - n + 1))


def hypergeom_sf(x: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray, terms: int = 400) -> np.ndarray:
    """P(X ≥ x) for X hypergeometric (`n` draws from `big_n` holding `big_k` successes), elementwise.
    Summed from the pmf at the tail's start outwards (terms shrink away from the mode), upper tail
    for x above the mean and 1 − the lower tail below it, stopping where a term is under 1e-15 of the
    sum; after `terms` terms the rest is bounded by a geometric series (the ratios fall), which can
    only raise the upper tail. scipy's hypergeom.sf gives the same (tested) but sums in Python per
    element: 15 s for the 460k cells of a 60k-pair workspace."""
    x, n, big_k, big_n = (np.asarray(a, np.float64) for a in (x, n, big_k, big_n))
    lo, hi = np.maximum(0, n + big_k - big_n), np.minimum(n, big_k)
    out = np.where(x <= lo, 1.0, 0.0)
    mid = (x > lo) & (x <= hi)
    upper = mid & (x > n * big_k / np.maximum(big_n, 1))
    for part, up in ((upper, True), (mid & ~upper, False)):
        idx = np.nonzero(part)[0]
        if not len(idx):
            continue
        xx, nn, kk, NN = x[idx], n[idx], big_k[idx], big_n[idx]
        j = xx if up else xx - 1  # the upper tail from x, or the lower tail to x - 1
        term = np.exp(_log_pmf(j, nn, kk, NN))
        total = term.copy()
        end = hi[idx] if up else lo[idx]
        live = np.arange(len(idx))
        for _ in range(terms):
            jj, t = j[live], term[live]
            a, b, c, d = kk[live], nn[live], NN[live], end[live]
            if up:
                ratio = (a - jj) * (b - jj) / ((jj + 1) * (c - a - b + jj + 1))
                more = jj + 1 <= d
            else:
                ratio = jj * (c - a - b + jj) / ((a - jj + 1) * (b - jj + 1))
                more = jj - 1 >= d
            t = np.where(more, t * ratio, 0.0)
            term[live], j[live] = t, jj + (1 if up else -1)
            total[live] += t
            keep = t > 1e-15 * total[live]
            live = live[keep]
            if not len(live):
                break
        if len(live):  # geometric bound of what is left (ratios fall away from the mode)
            jj, t = j[live], term[live]
            a, b, c = kk[live], nn[live], NN[live]
            ratio = ((a - jj) * (b - jj) / ((jj + 1) * (c - a - b + jj + 1)) if up
                     else jj * (c - a - b + jj) / ((a - jj + 1) * (b - jj + 1)))
            rest = np.where(ratio < 1, t * ratio / np.maximum(1 - ratio, 1e-300), np.inf)
            total[live] += rest if up else 0.0  # the lower tail is subtracted: leaving it out raises sf
        out[idx] = np.clip(total if up else 1.0 - total, 0.0, 1.0)
    return out


def bh_q(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q) of `p`, over all of them."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if not m:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def detectable_pairs(m: int, fdr: float = DEFAULT_FDR) -> int:
    """The fewest pairs, all moving a concept one way, whose sign test could be established first
    among `m` claims (p ≤ fdr / m): what a local finding needs at this data size."""
    if m < 1:
        return 0
    return max(1, math.ceil(math.log2(2 * m / fdr)))


def detectable_d(m: int, n: int, fdr: float = DEFAULT_FDR) -> float:
    """The smallest standardised global shift |mean / SD| that n pairs could establish first among
    `m` claims (two-sided normal tail at fdr / m): about z / √n."""
    if m < 1 or n < 1:
        return math.inf
    return float(_special().ndtri(1 - fdr / (2 * m)) / math.sqrt(n))


def format_q(q: float) -> str:
    """A q or p as both front ends print it: 3 decimals, small ones in powers of ten, — when
    undefined."""
    if q != q:
        return "—"
    return f"{q:.3f}" if q >= 0.001 else f"{q:.0e}"
