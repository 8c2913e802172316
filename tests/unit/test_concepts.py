"""Concepts: mutual information, the co-firing graph and Leiden on data with known concepts; u and s."""

import numpy as np
import pytest
import scipy.sparse as sp

from core.analysis import concepts as C


def planted_firing(n=2000, d=200, seed=0):
    """5 concepts of 6 features (0..29) that fire together in ~10% of replies each; features 30..199
    fire independently in 5% of replies."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, d)) < 0.05).astype(np.float32)
    x[:, :30] = 0
    for c in range(5):
        on = rng.random(n) < 0.1
        for f in range(c * 6, c * 6 + 6):
            x[:, f] = on & (rng.random(n) < 0.9)
    return sp.csr_matrix(x * 0.1)


def test_mutual_information_matches_its_definition():
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(1)
    a = rng.random(500) < 0.3
    b = np.where(rng.random(500) < 0.7, a, rng.random(500) < 0.5)
    mi = C.mutual_information(np.array([np.sum(a & b)]), np.array([a.sum()]), np.array([b.sum()]), 500)[0]
    assert mi == pytest.approx(mutual_info_score(a, b), rel=1e-9)
    # independent in expectation: near zero; identical: the entropy
    p = a.mean()
    same = C.mutual_information(np.array([a.sum()]), np.array([a.sum()]), np.array([a.sum()]), 500)[0]
    assert same == pytest.approx(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def test_leiden_recovers_the_planted_concepts_and_leaves_independent_features_alone():
    con = C.fit_concepts(planted_firing())
    assert con.n_grouped == 5
    groups = [set(con.features(m).tolist()) for m in range(con.n_grouped)]
    assert sorted(map(sorted, groups)) == [list(range(c * 6, c * 6 + 6)) for c in range(5)]
    # every independent feature is a concept of its own; ids follow the groups
    assert set(con.membership[30:]) == set(range(5, 175)) and con.n_concepts == 175
    assert (con.sizes()[5:] == 1).all()


def test_a_feature_that_never_fires_above_tau_belongs_to_no_concept():
    f = planted_firing().tolil()
    f[:, 199] = 0
    f[3, 199] = 0.005  # fires, but on under 1% of the reply's tokens
    con = C.fit_concepts(f.tocsr())
    assert con.membership[199] == -1 and con.n_concepts == 174


def test_rare_concepts_survive_the_top_k_graph():
    """A concept in 1% of replies keeps its edges (a global top-1% cut would drop them: MI ~ frequency)."""
    f = planted_firing().tolil()
    rows = np.arange(0, 2000, 100)  # 20 replies
    for g in range(190, 196):
        f[:, g] = 0
        f[rows, g] = 0.2
    con = C.fit_concepts(f.tocsr())
    assert len(set(con.membership[190:196])) == 1 and con.membership[190] < con.n_grouped


def test_u_s_and_rate_on_a_hand_example():
    con = C.Concepts("response", np.array([0, 0, 1, -1]), 2, 1, 0.01)
    chosen = sp.csr_matrix(np.array([[0.5, 0.0, 0.2, 0.3], [0.005, 0.02, 0.0, 0.0]]))
    rejected = sp.csr_matrix(np.array([[0.0, 0.4, 0.2, 0.0], [0.0, 0.0, 0.3, 0.0]]))
    u = C.disparity(con, chosen, rejected).toarray()
    # pair 0: concept 0 -> (1 - 0 + 0 - 1) / 2 = 0; concept 1 -> 1 - 1 = 0
    # pair 1: concept 0 -> (0 (0.005 < τ) + 1) / 2 = 0.5; concept 1 -> 0 - 1 = -1
    np.testing.assert_allclose(u, [[0, 0], [0.5, -1]])
    s = C.activity(con, chosen, rejected).toarray()
    np.testing.assert_allclose(s, [[0.9, 0.4], [0.025, 0.3]], atol=1e-6)
    np.testing.assert_allclose(C.concept_rate(con, chosen).toarray(), [[0.5, 1.0], [0.5, 0.0]])
    np.testing.assert_allclose(C.concept_rate(con, chosen, tau=0.3).toarray(), [[0.5, 0.0], [0.0, 0.0]])


def test_u_is_exactly_zero_where_as_many_features_fire_on_each_side():
    """A concept of 12 features (1/12 is not exact in float32): per pair, k features fire in the chosen
    reply and k others in the rejected one, so u is 0 and no pair moves the concept; with one more on
    the chosen side u is exactly 1/12. Summed as float32 multiples of 1/12, a residue was stored
    instead of 0 (a vote in the sign test), and 6 of 12 could fall below 0.5."""
    d, size = 24, 12
    concepts = C.Concepts("response", np.r_[np.zeros(size, np.int64), np.full(d - size, -1)], 1, 1, C.TAU)
    rng = np.random.default_rng(0)
    chosen, rejected, residues = [], [], 0
    for i in range(400):
        k = 1 + i % 5
        feats = rng.permutation(size)
        c, r = np.zeros(d, np.float32), np.zeros(d, np.float32)
        c[feats[:k]] = 1
        r[feats[k:2 * k]] = 1
        if i % 2:
            c[feats[2 * k]] = 1  # one more on the chosen side
        chosen.append(c)
        rejected.append(r)
        naive = np.float32(0)
        for x in np.r_[np.ones(int(c.sum()), np.float32), -np.ones(int(r.sum()), np.float32)] * np.float32(1 / size):
            naive += x
        residues += i % 2 == 0 and naive != 0
    chosen, rejected = sp.csr_matrix(np.array(chosen)), sp.csr_matrix(np.array(rejected))
    u = C.disparity(concepts, chosen, rejected)
    assert residues > 0, "float32 sums leave no residue here: the test does not exercise the fix"
    dense = u.toarray()[:, 0]
    assert (dense[0::2] == 0).all() and u.nnz == 200
    assert (dense[1::2] == np.float32(1) / np.float32(size)).all()
    rate = C.concept_rate(concepts, chosen).toarray()[:, 0]
    assert rate[9] == rate[19] == 0.5  # 6 of 12 chosen features fire (k = 5, one more)


def test_the_engines_integer_copies_leave_u_as_it_was(tmp_path):
    """core.analysis.hypotheses._integer rounds a CSR's values into an int64 copy and drops the zeros:
    the copy's index arrays are its own (on shared ones eliminate_zeros scrambled the original, the
    engine's u that the Concepts view reads: its column means came out wrong)."""
    from core.analysis.hypotheses import _integer

    m = sp.csr_matrix(np.array([[0.4, 2.0, 0.0], [0.0, 0.2, 3.0], [1.0, 0.0, 0.1]], np.float32))
    before = m.toarray().copy()
    out = _integer(m, 1.0)
    assert out.toarray().tolist() == [[0, 2, 0], [0, 0, 3], [1, 0, 0]] and out.nnz == 3
    assert (m.toarray() == before).all() and m.nnz == 6


def test_strong_keeps_a_features_firings_near_its_own_max():
    """A weak firing (max under REL_MAX of the feature's max over all replies) does not count, however
    many tokens it covers; each feature is judged against its own max."""
    freq = sp.csr_matrix(np.array([[0.05, 0.3, 0.02], [0.40, 0.1, 0.0]]))
    maxima = sp.csr_matrix(np.array([[20.0, 1.0, 3.0], [5.0, 2.0, 0.0]]))
    other = sp.csr_matrix(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    ref = C.reference_max(maxima, other)
    np.testing.assert_allclose(ref, [20.0, 2.0, 3.0])
    out = C.strong(freq, maxima, ref, rel_max=0.7).toarray()
    # feature 0: 20 >= 14 kept, 5 < 14 dropped though it covers 40% of the reply; feature 1: 1 < 1.4
    np.testing.assert_allclose(out, [[0.05, 0.0, 0.02], [0.0, 0.1, 0.0]])
    np.testing.assert_allclose(C.strong(freq, maxima, ref, rel_max=0.0).toarray(), freq.toarray())


def test_concept_shifts_mean_ci_and_halves():
    con = C.Concepts("response", np.array([0, 1]), 2, 0, 0.01)
    u = sp.csr_matrix(np.array([[1, 0], [1, -1], [0, 0], [1, 1], [1, -1], [0, -1]], dtype=np.float32))
    out = {c.concept: c for c in C.concept_shifts(con, u)}
    assert out[0].shift == pytest.approx(4 / 6) and out[1].shift == pytest.approx(-2 / 6)
    sd = np.std([1, 1, 0, 1, 1, 0], ddof=1)
    assert out[0].ci == pytest.approx((4 / 6 - 1.959964 * sd / np.sqrt(6), 4 / 6 + 1.959964 * sd / np.sqrt(6)))
    # even rows 0, 2, 4 / odd rows 1, 3, 5
    assert out[0].shift_a == pytest.approx(2 / 3) and out[0].shift_b == pytest.approx(2 / 3) and out[0].stable
    assert out[1].shift_a == pytest.approx(-1 / 3) and out[1].shift_b == pytest.approx(-1 / 3) and out[1].stable
    assert out[0].n_firing == 4 and out[1].n_firing == 4
    # leaving rows out: only rows 2 and 5 -> concept 0 never moves
    sub = {c.concept: c for c in C.concept_shifts(con, u, np.array([2, 5]))}
    assert 0 not in sub and sub[1].shift == pytest.approx(-0.5)
