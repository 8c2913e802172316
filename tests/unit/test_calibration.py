"""How sure: the nulls and q of core.analysis.calibration on cases with a known answer, then the hypothesis,
concept and shift views on constructed workspaces where the answer is known (a behaviour planted in
one region, a global shift with no local effect, the same data with its labels shuffled)."""

import numpy as np
import pytest
from scipy import stats

from core.analysis.calibration import (
    bh_q,
    detectable_d,
    detectable_pairs,
    membership_p,
    sign_flip_p,
    sign_test_p,
)
from core.analysis.hypotheses import open_hypotheses
from core.views import HypothesisKey
from core.session import Session
from tests.unit.planted import regions

# -- the statistics ------------------------------------------------------------------------------


def test_bh_q_by_hand():
    # sorted 0.005 0.01 0.03 0.04 -> x4/rank 0.02 0.02 0.04 0.04, made monotone from the top
    q = bh_q(np.array([0.01, 0.04, 0.03, 0.005]))
    assert np.allclose(q, [0.02, 0.04, 0.04, 0.02])
    p = np.random.default_rng(0).random(500)
    q = bh_q(p)
    assert (q >= p - 1e-12).all() and (q <= 1).all()
    order = np.argsort(p)
    assert (np.diff(q[order]) >= -1e-12).all()  # q keeps p's order


def test_sign_test_is_the_exact_binomial():
    assert sign_test_p(np.array([5]), np.array([5]))[0] == pytest.approx(2 / 32)
    assert sign_test_p(np.array([3]), np.array([6]))[0] == 1.0  # half each way
    x, k = np.array([9, 12, 1]), np.array([10, 20, 0])
    expected = [min(1, 2 * stats.binom.sf(xi - 1, ki, 0.5)) for xi, ki in zip(x[:2], k[:2])] + [1.0]
    assert np.allclose(sign_test_p(x, k), expected)


@pytest.mark.parametrize("n", [8, 30, 400])
def test_sign_flip_p_holds_its_level_under_the_label_swap_null(n):
    """Heavy-tailed x whose signs are coin flips: P(p <= a) <= a at a = 1%, 5%, 10% (Hoeffding below
    NORMAL_MIN moving pairs, the normal tail above), within Monte Carlo error."""
    rng = np.random.default_rng(n)
    trials = 4000
    mag = rng.pareto(1.5, size=(trials, n)) * (rng.random((trials, n)) < 0.5)  # half the pairs move
    x = mag * rng.choice([-1.0, 1.0], size=(trials, n))
    p = sign_flip_p(x.sum(1), (x * x).sum(1), (x != 0).sum(1))
    for a in (0.01, 0.05, 0.1):
        assert (p <= a).mean() <= a + 3 * np.sqrt(a * (1 - a) / trials)
    # and it has power: the same magnitudes, all on one side in 80% of the pairs
    sided = mag * np.where(rng.random((trials, n)) < 0.8, 1.0, -1.0)
    p1 = sign_flip_p(sided.sum(1), (sided * sided).sum(1), (sided != 0).sum(1))
    if n >= 400:
        assert (p1 <= 0.05).mean() > 0.5


def test_membership_p_is_the_exact_hypergeometric_tail():
    from core.analysis.calibration import hypergeom_sf

    rng = np.random.default_rng(5)
    big_n = rng.integers(1, 3000, 4000)
    big_k = (big_n * rng.random(4000)).astype(int)
    n = (big_n * rng.random(4000)).astype(int)
    x = rng.integers(-2, np.maximum(n, 1) + 3)
    ours = hypergeom_sf(x, n, big_k, big_n)
    theirs = stats.hypergeom.sf(x - 1, big_n, big_k, n)
    assert np.allclose(ours, theirs, rtol=1e-6, atol=1e-12)
    # far tails keep their magnitude (BH reads tiny p's)
    tiny = (theirs < 1e-6) & (theirs > 0)
    assert tiny.any() and np.allclose(np.log(ours[tiny]), np.log(theirs[tiny]), rtol=1e-6)
    assert np.allclose(membership_p(x, n, big_k, big_n), np.minimum(2 * theirs, 1), rtol=1e-6, atol=1e-12)
    # random membership among the view's pairs, with a global bias: level held
    sides = rng.random(200) < 0.7
    ps = [membership_p(np.array([sides[rng.choice(200, size=15, replace=False)].sum()]), np.array([15]),
                       np.array([sides.sum()]), np.array([200]))[0] for _ in range(3000)]
    assert (np.array(ps) <= 0.05).mean() <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 3000)


def test_detectable_sizes():
    # 2 * 0.5**k <= 0.1 / 1000  ->  k >= log2(20000) = 14.3
    assert detectable_pairs(1000, 0.1) == 15
    assert detectable_pairs(10, 0.1) < detectable_pairs(100_000, 0.1)
    assert detectable_d(100, 400) == pytest.approx(stats.norm.isf(0.1 / 200) / 20)


# -- the views, on constructed workspaces ----------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    ws, truth = regions(tmp_path_factory.mktemp("real") / "ws")
    return ws, truth


def test_a_local_behaviour_is_established_and_a_global_shift_only_globally(real):
    """Topic 3's chosen replies carry the behaviour (a local effect); the 'please' concept is more
    often in chosen replies everywhere (0.6 vs 0.4: a global shift, no local effect)."""
    ws, truth = real
    engine = open_hypotheses(ws.path)
    rep = engine.report(top=50)
    behaviour = set(truth["behaviour"])
    glob = engine.st.response.membership[truth["global"][0]]
    assert rep.n_established >= 1 and rep.n_tested == len(engine.keys)
    first = rep.hypotheses[0]
    assert first.established and behaviour <= set(first.features) and first.q < rep.fdr
    # established rows come first, then the rest
    flags = [h.established for h in rep.hypotheses]
    assert flags == sorted(flags, reverse=True)
    # the global shift establishes no local row (a cluster or a prompt concept) ...
    local = [h for h in rep.hypotheses if h.kind != "concept" and h.concept == glob]
    assert local and not any(h.established for h in local)
    assert all(h.concept != glob for h in rep.hypotheses if h.established and h.kind != "concept")
    # ... and is established where it is claimed: the Concepts view
    view = Session(ws.path).concepts(top=200)
    by_concept = {r.shift.concept: r.shift for r in view.rows}
    assert by_concept[glob].established and by_concept[glob].q < view.fdr
    assert view.n_tested >= view.n_established >= 1
    noise = [c for c in by_concept.values() if set(engine.st.response.features(c.concept)) <= set(range(50, 100))]
    assert noise and not any(c.established for c in noise)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_shuffled_data_establishes_nothing(tmp_path, seed):
    """The same data with chosen and rejected swapped in a random half of the pairs: no hypothesis,
    no concept shift and no feature shift is established, though rows are still ranked."""
    ws, _ = regions(tmp_path / "ws", swap=seed)
    session = Session(ws.path)
    rep = session.hypotheses(top=50)
    assert rep.hypotheses and rep.n_established == 0
    assert not any(h.established for h in rep.hypotheses)
    assert rep.detectable_pairs > 0
    assert session.concepts(top=500).n_established == 0
    shifts = session.report(top=20, without_marked=False)
    assert shifts.n_tested > 0 and shifts.n_established == 0


def test_the_real_copy_establishes_feature_shifts_the_shuffled_one_does_not(real, tmp_path):
    ws, truth = real
    shifts = Session(ws.path).report(top=20, without_marked=False)
    amplified = {f.feature for f in shifts.features if f.established and f.direction == "amplified"}
    assert set(truth["behaviour"]) <= amplified
    assert all(f.q >= f.p for f in shifts.features)


def test_a_kind_filter_hides_rows_on_the_same_q(real):
    """One calibrated scale: a row's q is the same in every kind filter (the family is every cell), so
    cycling the filters cannot make a row established that the whole view does not establish."""
    ws, _ = real
    engine = open_hypotheses(ws.path)
    every = engine.report(top=200)
    q_of = {HypothesisKey.of(h): (h.q, h.established) for h in every.hypotheses}
    seen = 0
    for kind in ("cluster", "prompt", "concept"):
        rep = engine.report(top=200, kind=kind)
        assert rep.n_tested == every.n_tested == len(engine.keys)
        assert all(h.kind == kind for h in rep.hypotheses)
        assert rep.n_established == sum(h.established for h in every.hypotheses if h.kind == kind)
        for h in rep.hypotheses:
            if HypothesisKey.of(h) in q_of:
                assert q_of[HypothesisKey.of(h)] == (h.q, h.established)
                seen += 1
    assert seen >= 10


def test_the_concepts_view_reads_the_u_the_pairs_show(real):
    """Concepts' global shift of a concept is the mean of the u each pair shows (the engine's u was
    scrambled by an integer copy sharing its index arrays: the view read other columns' values)."""
    from core.analysis.hypotheses import concept_report

    ws, _ = real
    engine = open_hypotheses(ws.path)
    assert abs(engine.u - engine.u_csc.tocsr()).max() == 0
    u = engine.u_csc
    rows = concept_report(engine, top=10**6)
    assert len(rows) >= 10
    for row in rows:
        c = row.shift.concept
        assert row.shift.shift == pytest.approx(u[:, c].sum() / u.shape[0], rel=1e-5, abs=1e-9)


def test_marks_recalibrate(real):
    """Leaving out the driving pairs of the top finding lowers its evidence: its p rises, and q is
    recomputed for the new state, never carried over."""
    ws, _ = real
    engine = open_hypotheses(ws.path)
    top = engine.report(top=1).hypotheses[0]
    p0, q0 = engine.calibration()
    drop = frozenset(int(s) for s in ws.indexed_source_indices()[::2])  # half the pairs
    p1, q1 = engine.calibration(drop)
    cell = engine.cell_of(top.kind, top.group, top.concept)
    assert p1[cell] > p0[cell]
    again = engine.report(drop, top=50)
    assert again.n_excluded == len(drop)
    p2, _ = engine.calibration(drop)
    assert np.array_equal(p1, p2)
