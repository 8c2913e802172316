"""Shift statistics on a constructed workspace (real LanceDB, features planted by hand), then on real data."""

import numpy as np

from core.analysis.shifts import Analysis
from core.data.workspace import Workspace
from tests.unit.planted import build

D_SAE = 16


def build_workspace(path, chosen: list[dict], rejected: list[dict]) -> Workspace:
    """Pairs whose replies fire the given {feature: mean activation}, each on half the reply's tokens."""
    act = [np.zeros((len(chosen), D_SAE)) for _ in range(2)]
    for m, side in zip(act, (chosen, rejected)):
        for i, feats in enumerate(side):
            m[i, list(feats)] = list(feats.values())
    freq = [(m > 0) * 0.5 for m in act]
    return build(path, freq[0], freq[1], np.zeros_like(act[0]), {}, D_SAE, activations=tuple(act))


def planted(tmp_path):
    rng = np.random.default_rng(0)
    chosen, rejected = [], []
    for i in range(60):
        c = {0: float(rng.uniform(0.5, 1.0))}  # fires in both: noise around zero shift
        r = {0: float(rng.uniform(0.5, 1.0))}
        if i < 45:
            c[3] = float(rng.uniform(0.8, 1.2))  # amplified, broad
        if i < 30:
            r[5] = float(rng.uniform(0.8, 1.2))  # suppressed, broad
        if i == 7:
            c[9] = 40.0  # one huge firing: big mean, but only one pair
        chosen.append(c)
        rejected.append(r)
    return build_workspace(tmp_path / "ws", chosen, rejected), chosen, rejected


def test_statistics_match_a_dense_recomputation(tmp_path):
    ws, chosen, rejected = planted(tmp_path)
    a = Analysis(ws)
    dense = np.zeros((60, D_SAE))
    for i in range(60):
        for f, v in chosen[i].items():
            dense[i, f] += v
        for f, v in rejected[i].items():
            dense[i, f] -= v
    n, mean, sd, nf = a.moments()
    assert n == 60
    np.testing.assert_allclose(mean, dense.mean(0), atol=1e-6)
    np.testing.assert_allclose(sd, dense.std(0, ddof=1), atol=1e-5)
    assert nf[3] == 45 and nf[5] == 30 and nf[9] == 1 and nf[0] == 60
    # leaving pairs out equals recomputing without them
    out = a.rows([0, 2, 4, 1001])  # 1001 is not indexed: ignored
    n2, mean2, sd2, _ = a.moments(out)
    np.testing.assert_allclose(mean2, dense[3:].mean(0), atol=1e-6)
    np.testing.assert_allclose(sd2, dense[3:].std(0, ddof=1), atol=1e-5)


def test_ranking_directions_ci_and_single_pair_guard(tmp_path):
    ws, _, _ = planted(tmp_path)
    rep = Analysis(ws).report(top=5)
    amp = [f.feature for f in rep.amplified]
    sup = [f.feature for f in rep.suppressed]
    assert amp[0] == 3 and sup[0] == 5
    assert 9 not in amp[:1]  # the single 40.0 firing must not top the ranking
    f3 = rep.amplified[0]
    assert f3.ci[0] > 0 and f3.ci[0] < f3.shift < f3.ci[1] and f3.stable and f3.n_firing == 45
    assert all(p.delta > 0 for p in f3.top_pairs) and f3.top_pairs[0].source_index % 2 == 0
    js = rep.to_json()
    assert set(js) >= {"model", "sae", "layer", "n_pairs", "features"}
    assert set(js["features"][0]) >= {"feature", "label", "shift", "effect_size", "ci", "stable", "n_firing", "top_pairs"}
    assert set(js["features"][0]["top_pairs"][0]) == {"source_index", "delta"}


def test_excluding_the_pairs_behind_a_shift_removes_it(tmp_path):
    ws, _, _ = planted(tmp_path)
    a = Analysis(ws)
    drivers = {i * 2 for i in range(45)}  # every pair where feature 3 fires in chosen
    rep = a.report(top=5, excluded=drivers)
    assert rep.n_pairs == 15 and rep.n_excluded == 45
    assert 3 not in [f.feature for f in rep.amplified]


def test_real_workspace_report(small_workspace):
    rep = Analysis(Workspace(small_workspace)).report(top=5)
    assert rep.n_pairs == 24 and rep.layer == 15
    for f in rep.features:
        assert (f.shift > 0) == (f.direction == "amplified")
        assert f.ci[0] <= f.shift <= f.ci[1]
        assert f.label and f.top_pairs


def test_label_tokens_show_pieces_of_a_character_as_bytes_not_replacement_marks():
    """A byte-level token that is part of an emoji decodes alone to U+FFFD; a label names it."""
    from core.analysis.shifts import token_name

    emoji_bytes = [bytes([b]).decode("utf-8", errors="replace") for b in "🙂".encode()]
    assert {token_name(t) for t in emoji_bytes} == {"‹byte›"}
    assert token_name(" goblin") == "goblin" and token_name("\n") == "'\\n'" and token_name("x\ufffd") == "x"
