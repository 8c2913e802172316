"""Hypotheses on constructed workspaces (a behaviour planted in one data cluster), exact statistics
against a dense recomputation, the what-if, the structure cache; then the CLI on a real workspace."""

import json

import numpy as np
import pytest
from scipy import stats

from core.analysis.hypotheses import PSEUDO_PAIRS, Hypotheses, open_hypotheses
from core.analysis.shifts import Analysis
from core.analysis.structure import Params, cache_dir, structure
from core.data.workspace import Workspace
from tests.unit.planted import regions


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    ws, truth = regions(tmp_path_factory.mktemp("planted") / "ws", rare=6)
    return ws, truth


def reference(engine: Hypotheses, kept: np.ndarray) -> dict:
    """Every cell's Δ, d, t, halves by a dense, per-cell recomputation over the `kept` rows."""
    u = engine.u.toarray().astype(np.float64)
    v = engine.v.toarray().astype(np.float64)
    g = np.hstack([engine.G.toarray(), engine.A.toarray()[:, engine.diag]]) > 0  # groups in column order
    out = {k: np.zeros(len(engine.keys)) for k in ("delta", "d", "t", "delta_a", "delta_b", "n", "beyond_a", "beyond_b")}
    for c, (grp, m) in enumerate(zip(engine.cell_group, engine.cell_concept)):
        view = engine.view_rows[engine.group_view[grp]] & kept
        inside, outside = view & g[:, grp], view & ~g[:, grp]
        a, b = u[inside, m], u[outside, m]
        out["delta"][c] = a.mean() - b.mean()
        pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        spread = np.ptp(a) > 0 or np.ptp(b) > 0  # else d is undefined (NaN), t 0
        out["d"][c] = out["delta"][c] / pooled if spread else np.nan
        out["t"][c] = stats.ttest_ind(a, b, equal_var=False).statistic if spread else 0.0
        out["n"][c] = len(a)
        for h, key in ((0, "delta_a"), (1, "delta_b")):
            half = np.arange(len(u)) % 2 == h
            out[key][c] = u[inside & half, m].mean() - u[outside & half, m].mean()
            out[f"beyond_{key[-1]}"][c] = v[inside & half, m].mean() - v[outside & half, m].mean()
    return out


def test_a_behaviour_planted_in_one_region_ranks_first_though_its_global_shift_is_small(planted):
    ws, truth = planted
    engine = open_hypotheses(ws.path)
    rep = engine.report(top=10)
    top = rep.hypotheses[0]
    behaviour = set(truth["behaviour"])
    assert behaviour <= set(top.features) and top.direction == "more" and top.halves_agree
    # its region is topic 3: the driving pairs are topic-3 pairs (source index = 2 * row)
    assert {p.source_index // 2 for p in top.driving} <= set(np.nonzero(truth["topic"] == 3)[0].tolist())
    assert top.delta > 0.3 and top.d > 1 and top.n_support >= 30
    # ... though a global concept moves more over the whole data
    glob = engine.st.response.membership[truth["global"][0]]
    u_mean = np.asarray(engine.u.mean(0)).ravel()
    assert u_mean[glob] > 2 * u_mean[top.concept] > 0
    assert glob not in {h.concept for h in rep.hypotheses[:3]}
    # names carry the planted words, and the sentence reads with them
    assert "goblin" in top.concept_name and "goblin" in top.sentence
    assert top.sentence.startswith(("in data cluster", "when the prompt is about"))


def test_a_rare_behaviour_spread_over_the_data_ranks_near_the_top(tmp_path):
    """The goblin situation: 6 of 400 chosen replies (1.5%), in every topic, have a concept nothing
    else has. Its own support is a group of 6 pairs where u = +1 in both halves."""
    ws, truth = regions(tmp_path / "rare", rare=6)
    engine = open_hypotheses(ws.path)
    rep = engine.report(top=5)
    hit = rep.first_with_feature(truth["rare"][0], "more")
    assert hit is not None and hit.rank <= 3 and "dragon" in hit.concept_name
    assert {p.source_index // 2 for p in hit.driving} == set(truth["rare_rows"])
    assert rep.hypotheses[0].features != hit.features or hit.rank == 1


def test_weak_firings_elsewhere_do_not_drown_a_rare_behaviour(tmp_path):
    """The goblin test at 5%: the behaviour's features also fire, weakly, in 60 other pairs on a random
    side. Strong firing (the default) ignores them; on frequency alone (rel_max 0) the behaviour's
    group is those 66 pairs, one-sided at random, and it leaves the ranking."""
    ws, truth = regions(tmp_path / "weak", rare=6, weak=60)
    a = Analysis(ws)
    hit = Hypotheses(a, structure(a)).report(top=5).first_with_feature(truth["rare"][0], "more")
    assert hit is not None and hit.rank <= 3 and hit.n == 6
    assert {p.source_index // 2 for p in hit.driving} == set(truth["rare_rows"])
    on_frequency = Hypotheses(a, structure(a, Params(rel_max=0.0))).report(top=50)
    assert on_frequency.first_with_feature(truth["rare"][0], "more") is None


def test_beyond_lean_subtracts_what_the_pairs_other_features_predict():
    """v = u − a · lean, the lean taken on the features outside the concept: a concept cannot explain
    itself away, and a pair where every other one-sided feature is on the chosen side expects more."""
    import scipy.sparse as sp

    from core.analysis import concepts as C
    from core.analysis.hypotheses import beyond_lean

    con = C.Concepts("response", np.array([0, 0, 1, 2, 3, 4]), 5, 1, 0.01)
    f = 0.2
    chosen = sp.csr_matrix(np.array([[f, f, f, f, f, 0], [f, 0, 0, 0, 0, 0], [f, f, 0, 0, 0, 0]]))
    rejected = sp.csr_matrix(np.array([[0, 0, 0, 0, 0, f], [0, 0, f, f, 0, 0], [0, 0, 0, 0, 0, 0]]))
    u = C.disparity(con, chosen, rejected)
    v = beyond_lean(con, C.fires(chosen, con.tau) - C.fires(rejected, con.tau), u).toarray()
    # pair 0, concept 0 (u = 1): others c = 3, r = 1 -> lean 2/6; v = 1 - 1 * 1/3
    # pair 1, concept 0 (u = 0.5, a = 0.5): others c = 0, r = 2 -> lean -2/4; v = 0.5 + 0.25
    # pair 2, concept 0 (u = 1): no other one-sided feature -> lean 0; v = u
    np.testing.assert_allclose(v[:, 0], [1 - 1 / 3, 0.75, 1.0], rtol=1e-6)
    # pair 0, concept 4 (feature 5, u = -1): others c = 5, r = 0 -> lean 5/7; v = -1 - 5/7
    assert v[0, 4] == pytest.approx(-1 - 5 / 7)


def test_statistics_equal_a_dense_recomputation(planted):
    ws, _ = planted
    engine = open_hypotheses(ws.path)
    s = engine.statistics()
    assert len(engine.diag)  # the concept view's cells are checked too
    ref = reference(engine, np.ones(engine.analysis.n, bool))
    for key in ("delta", "d", "t", "delta_a", "delta_b", "n", "beyond_a", "beyond_b"):
        np.testing.assert_allclose(s[key], ref[key], rtol=1e-4, atol=1e-6, err_msg=key)  # u is float32
    # the score: Δ of v (beyond the lean) per half, in Δ's direction, shrunk by PSEUDO_PAIRS
    c = int(np.argmax(s["score"]))
    g = engine.G.toarray()[:, engine.cell_group[c]] > 0
    na, nb = g[0::2].sum(), g[1::2].sum()
    sign = np.sign(s["delta"][c])
    expect = min(sign * ref["beyond_a"][c] * na / (na + PSEUDO_PAIRS), sign * ref["beyond_b"][c] * nb / (nb + PSEUDO_PAIRS))
    assert s["score"][c] == pytest.approx(expect) and expect > 0
    assert (s["score"][~s["agree"]] == 0).all()


def test_what_if_equals_a_full_recompute_without_the_marked_pairs(planted):
    ws, truth = planted
    engine = open_hypotheses(ws.path)
    src = engine.analysis.source_index
    rng = np.random.default_rng(3)
    marked = frozenset(int(s) for s in rng.choice(src, 40, replace=False))
    for excluded in (marked, marked | {int(src[1]), int(src[7])}, marked - {next(iter(marked))}, frozenset()):
        s = engine.statistics(excluded)  # incremental from the previous call
        kept = ~np.isin(src, list(excluded))
        ref = reference(engine, kept)
        for key in ("delta", "d", "t", "delta_a", "delta_b", "n", "beyond_a", "beyond_b"):
            np.testing.assert_allclose(s[key], ref[key], rtol=1e-4, atol=1e-6, err_msg=key)  # u is float32
    # marking the top hypothesis' region removes it from the ranking; the driving pairs skip marks
    top = engine.report(top=1).hypotheses[0]
    region = frozenset(int(2 * r) for r in np.nonzero(truth["topic"] == 3)[0])
    after = engine.report(region, top=10)
    assert after.n_excluded == len(region) and after.n_pairs == engine.analysis.n - len(region)
    assert all(h.concept != top.concept for h in after.hypotheses)
    partial = engine.report(frozenset(p.source_index for p in top.driving[:3]), top=1).hypotheses[0]
    assert not {p.source_index for p in partial.driving} & {p.source_index for p in top.driving[:3]}


def test_the_structure_is_cached_and_refitted_when_its_inputs_change(planted, tmp_path):
    import shutil

    src_ws, _ = planted
    path = tmp_path / "ws"
    shutil.copytree(src_ws.path, path)
    for f in cache_dir(Workspace(path)).glob("*"):
        f.unlink()
    a = Analysis(Workspace(path))
    st = structure(a)
    files = sorted(p.name for p in cache_dir(a.ws).glob("*.npz"))
    assert files == [f"{st.key}.npz"]
    mtime = (cache_dir(a.ws) / files[0]).stat().st_mtime_ns
    again = structure(Analysis(Workspace(path)))  # read back, not refitted
    assert (cache_dir(a.ws) / files[0]).stat().st_mtime_ns == mtime and again.key == st.key
    np.testing.assert_array_equal(again.clusters, st.clusters)
    np.testing.assert_array_equal(again.response.membership, st.response.membership)
    assert (again.prompt_groups != st.prompt_groups).nnz == 0
    # other parameters, another SAE, or more pairs: a new key, a fresh fit
    other = structure(a, Params(pairs_per_cluster=50))
    assert other.key != st.key and other.k < st.k
    ws = Workspace(path)
    ws.write_meta({"sae_sha256": "1" * 64})
    assert structure(Analysis(ws)).key not in (st.key, other.key)
    assert len(list(cache_dir(ws).glob("*.npz"))) == 3
    # marks are not an input: the same key with pairs marked
    from core.data.marks import Marks

    Marks(ws).mark([0, 2], reason="test")
    assert structure(Analysis(ws)).key == structure(Analysis(Workspace(path))).key


def test_unknown_kind_is_a_usage_error(planted):
    from core.errors import UsageError

    with pytest.raises(UsageError, match="kind"):
        open_hypotheses(planted[0].path).report(kind="everything")


def test_cli_on_a_real_workspace(small_workspace):
    from typer.testing import CliRunner

    from core.cli import app

    r = CliRunner().invoke(app, ["hypotheses", "-w", str(small_workspace), "--top", "5", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n_pairs"] == 24 and out["k"] >= 1 and out["n_concepts"] > 0
    for h in out["hypotheses"]:
        assert h["halves_agree"] and h["score"] > 0 and h["driving"] and h["features"]
        assert h["sentence"] and (h["delta"] > 0) == (h["direction"] == "more")
    r = CliRunner().invoke(app, ["concepts", "-w", str(small_workspace), "--top", "5", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert rows and all(row["features"] and row["shift"]["ci"][0] <= row["shift"]["shift"] for row in rows)
    assert any(row["name"] for row in rows)
    text = CliRunner().invoke(app, ["hypotheses", "-w", str(small_workspace), "--top", "3"]).stdout
    assert "data clusters" in text


def test_the_keypress_path_equals_a_full_recompute_bit_for_bit(planted, monkeypatch):
    """The TUI's path: one report after another, each from the last (in-place sums, then only the cells
    that can reach the top scored). Every statistic equals that of an engine computing from all pairs
    (integer sums: the same bits, in any order of marks), and so does the ranking of each view."""
    from core.analysis import hypotheses as H

    ws, _ = planted
    engine = open_hypotheses(ws.path)
    fresh = Hypotheses(engine.analysis, engine.st)
    monkeypatch.setattr(H._Reference, "MAX_SHARE", 1.0)  # take the bounded path however many cells it scores
    src = [int(s) for s in engine.analysis.source_index]
    rng = np.random.default_rng(5)
    excluded, bounded = frozenset(), 0
    engine.report(top=5)  # a full pass: the reference
    for step in range(12):
        if step % 3 == 2:  # unmark one pair, or mark the top hypothesis' driving pairs
            excluded = excluded - {min(excluded)} if excluded else excluded
        elif step % 3 == 1:
            excluded = excluded | {p.source_index for p in engine.report(excluded, top=1).hypotheses[0].driving[:3]}
        else:
            excluded = excluded | {int(rng.choice(src))}
        for kind in (None, "cluster", "prompt", "concept"):
            st = engine._state(excluded)
            bounded += engine._ref.candidates(engine, st, None if kind is None else H.KINDS.index(kind), 5) is not None
            rep = engine.report(excluded, top=5, kind=kind)
            fresh._cache = None  # from the sums over all pairs
            s = fresh.statistics(excluded)
            ok = np.nonzero((s["score"] > 0) & ((fresh.group_kind[fresh.cell_group] == H.KINDS.index(kind))
                                                  if kind else True))[0]
            best = ok[np.lexsort((fresh.keys[ok], -s["score"][ok]))][:5]
            assert [(h.kind, h.group, h.concept) for h in rep.hypotheses] == \
                [(*fresh.kind_of(int(fresh.cell_group[c])), int(fresh.cell_concept[c])) for c in best]
            assert [h.score for h in rep.hypotheses] == [float(s["score"][c]) for c in best]
        mine = engine.statistics(excluded)
        for key in s:
            np.testing.assert_array_equal(mine[key], s[key], err_msg=key)
    assert bounded >= 30  # most rankings came from the bounded path


def test_d_is_undefined_where_u_has_no_spread_and_the_text_shows_counts_instead(planted):
    """Where u is the same for every pair inside and for every pair outside (as when all pairs of a
    group move the concept fully one way, Δ = ±1, and none outside does) d is None in JSON, not 0; the
    text shows an effect that is always defined instead: how many of the pairs where the concept
    differs go Δ's way."""
    from core.cli.hypotheses import format_hypotheses
    from core.analysis.hypotheses import effect_size

    engine = open_hypotheses(planted[0].path)
    s = engine.statistics()
    assert np.isnan(s["d"]).any()  # positions: test_statistics_equal_a_dense_recomputation
    assert effect_size(None) == "—" and effect_size(0.5) == "+0.50"
    rep = engine.report(top=len(engine.keys))
    undefined = [h for h in rep.hypotheses if h.d is None]
    assert undefined
    assert json.loads(json.dumps(undefined[0].to_json()))["d"] is None
    for h in rep.hypotheses:
        assert " d " not in h.sentence and f"{h.n_support} of {h.n_moving} that differ go this way" in h.sentence
        assert 0 < h.n_support <= h.n_moving <= h.n
    h = undefined[0]
    line = next(x for x in format_hypotheses(rep).splitlines() if x.startswith(f"{h.rank:>3} "))
    assert f" {h.n_support}/{h.n_moving} " in line


def test_standing_without_marks_equals_the_full_ranking(planted, monkeypatch):
    """A hypothesis' rank and statistics without some pairs (the TUI's mark preview), scoring only the
    cells that could outrank it, equal the full ranking's."""
    from core.analysis import hypotheses as H

    ws, _ = planted
    engine = open_hypotheses(ws.path)
    fresh = Hypotheses(engine.analysis, engine.st)
    monkeypatch.setattr(H._Reference, "MAX_SHARE", 1.0)
    engine.report(top=5)  # the reference
    rng = np.random.default_rng(9)
    src = [int(s) for s in engine.analysis.source_index]
    excluded = frozenset()
    for _ in range(6):
        excluded = excluded | {int(x) for x in rng.choice(src, 2, replace=False)}
        fresh._cache = None
        s = fresh.statistics(excluded)
        order = np.lexsort((fresh.keys, -s["score"]))
        ranked = order[s["score"][order] > 0]
        for rank in (1, 2, 7, len(ranked)):
            cell = int(ranked[rank - 1])
            got, stats = engine.standing_without(cell, excluded)
            assert got == rank and stats["score"] == s["score"][cell] and stats["delta"] == s["delta"][cell]
        zero = int(np.nonzero(s["score"] == 0)[0][0])
        assert engine.standing_without(zero, excluded)[0] is None
