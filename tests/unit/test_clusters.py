"""Clusters, traces and the SAE-vs-embedding comparison on the real small workspace (tiny SAE, 24 HH pairs)."""

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from core.cli import app
from core.analysis.clusters import (
    benjamini_hochberg,
    cluster_pairs,
    compare_clusterings,
    partition,
    welch,
)
from core.analysis.shifts import Analysis
from core.analysis.trace import trace_feature
from core.data.workspace import Workspace


@pytest.fixture(scope="module")
def analysis(small_workspace) -> Analysis:
    return Analysis(Workspace(small_workspace))


def check_partition(a: Analysis, c) -> None:
    assert c.k == len(c.clusters)
    assert sum(cl.size for cl in c.clusters) == a.n
    assert sorted(s for cl in c.clusters for s in cl.source_indices) == sorted(a.source_index.tolist())
    for cl in c.clusters:
        assert cl.size == len(cl.source_indices) > 0
        rows = a.rows(cl.source_indices)
        assert (c.labels[rows] == cl.id).all()  # labels[i] is the cluster of analysis row i
        assert set(cl.representative) <= set(cl.source_indices) and cl.representative
    assert [cl.size for cl in c.clusters] == sorted((cl.size for cl in c.clusters), reverse=True)


def test_sae_clusters_partition_the_pairs_and_serialise(analysis):
    c = cluster_pairs(analysis, "sae")
    assert c.by == "sae" and 2 <= c.k <= len(analysis.source_index) // 3
    check_partition(analysis, c)
    out = json.loads(json.dumps(c.to_json()))
    assert set(out) == {"by", "k", "clusters"}
    assert set(out["clusters"][0]) == {"id", "size", "source_indices", "top_features", "shift_contrast", "representative"}
    assert set(out["clusters"][0]["top_features"][0]) == {"feature", "label", "contrast", "p_value", "q_value"}
    # deterministic for a seed
    np.testing.assert_array_equal(cluster_pairs(analysis, "sae", seed=0).labels, c.labels)


def test_contrast_p_and_q_match_a_dense_recomputation(analysis):
    c = cluster_pairs(analysis, "sae", k=3)
    check_partition(analysis, c)
    cl = c.clusters[0]
    inside = c.labels == cl.id
    delta = analysis.delta.toarray().astype(np.float64)  # (n, d_sae)
    activity = (np.abs(analysis.chosen.toarray()) + np.abs(analysis.rejected.toarray())) / 2

    for dense, listed in ((activity, cl.top_features), (delta, cl.shift_contrast)):
        for f in listed:
            manual = dense[inside, f.feature].mean() - dense[~inside, f.feature].mean()
            assert f.contrast == pytest.approx(manual, rel=1e-5, abs=1e-7)
            assert f.q_value >= f.p_value - 1e-12
    assert cl.top_features and all(f.contrast > 0 for f in cl.top_features)
    assert [f.contrast for f in cl.top_features] == sorted((f.contrast for f in cl.top_features), reverse=True)

    # every feature: contrast and Welch p against numpy / scipy
    contrast, p = welch(analysis.delta, inside)
    tested = np.nonzero(np.abs(delta).sum(0) > 0)[0]
    manual = delta[inside].mean(0) - delta[~inside].mean(0)
    np.testing.assert_allclose(contrast, manual, rtol=1e-5, atol=1e-7)
    ref = stats.ttest_ind(delta[inside][:, tested], delta[~inside][:, tested], equal_var=False).pvalue
    ok = np.isfinite(ref)
    assert ok.sum() > 10
    np.testing.assert_allclose(p[tested][ok], ref[ok], rtol=1e-4, atol=1e-9)
    # a feature silent everywhere is not tested
    silent = np.nonzero(np.abs(delta).sum(0) == 0)[0]
    assert (p[silent] == 1).all()

    # BH against scipy's implementation; q >= p
    q = benjamini_hochberg(p[tested])
    np.testing.assert_allclose(q, stats.false_discovery_control(p[tested], method="bh"), rtol=1e-9)
    assert (q >= p[tested] - 1e-12).all() and (q <= 1).all()


def test_embedding_clusters_and_bad_arguments(analysis):
    c = cluster_pairs(analysis, "embedding", k=4)
    assert c.by == "embedding" and c.k == 4
    check_partition(analysis, c)
    auto = cluster_pairs(analysis, "embedding")
    check_partition(analysis, auto)
    with pytest.raises(ValueError, match="unknown clustering"):
        cluster_pairs(analysis, "tfidf")
    with pytest.raises(ValueError, match="between 1 and"):
        cluster_pairs(analysis, "sae", k=analysis.n + 1)
    one = cluster_pairs(analysis, "sae", k=1)
    assert one.clusters[0].size == analysis.n and one.clusters[0].shift_contrast == []


def test_compare_scores_a_planted_cluster_perfectly(analysis):
    from sklearn.metrics import adjusted_rand_score

    labels, k = partition(analysis, "sae", k=3)
    assert adjusted_rand_score(labels, cluster_pairs(analysis, "sae", k=3).labels) == pytest.approx(1.0)
    truth = set(analysis.source_index[labels == 1].tolist())
    out = compare_clusterings(analysis, truth=truth, k=3)
    assert out["k"] == 3 and -1 <= out["ari"] <= 1 and 0 <= out["nmi"] <= 1
    # the truth IS an SAE cluster: found exactly
    assert out["sae"]["cluster"] == 1
    assert out["sae"]["cluster_precision"] == 1.0 and out["sae"]["cluster_recall"] == 1.0
    assert 0 <= out["embedding"]["cluster_precision"] <= 1 and out["sae"]["feature"] is not None
    for rows in (out["sae_to_embedding"], out["embedding_to_sae"]):
        assert sum(r["size"] for r in rows) == analysis.n
        assert all(sum(r["spread"].values()) == r["size"] for r in rows)
    assert "sae" not in compare_clusterings(analysis, k=3)


def test_trace_lists_the_pairs_behind_a_shift_with_firing_in_token_range(analysis, small_workspace):
    feature = analysis.report(top=3).amplified[0].feature
    t = trace_feature(analysis, feature, top=5)
    assert t["feature"] == feature and t["direction"] == "amplified" and t["label"]
    deltas = [p["delta"] for p in t["pairs"]]
    assert deltas and deltas == sorted(deltas, reverse=True) and all(d > 0 for d in deltas)
    col = analysis.delta[:, feature].toarray().ravel()
    assert deltas[0] == pytest.approx(col.max(), rel=1e-6)
    ws = Workspace(small_workspace)
    fired = 0
    for p in t["pairs"]:
        row = ws.pair(p["source_index"])
        assert p["chosen"] == row["chosen"] and p["rejected"] == row["rejected"]
        assert p["delta"] == pytest.approx(col[analysis.row_of[p["source_index"]]], rel=1e-6)
        for side in ("chosen", "rejected"):
            for pos, val in p[f"{side}_firing"]:
                assert 0 <= pos < len(p[f"{side}_tokens"]) and val > 0
                assert val <= p[f"{side}_max"] + 1e-5
            fired += len(p[f"{side}_firing"])
    assert fired > 0
    with pytest.raises(ValueError, match="outside"):
        trace_feature(analysis, analysis.d_sae)


def test_cli_clusters_trace_compare(small_workspace, tmp_path):
    runner = CliRunner()
    ws = str(small_workspace)
    r = runner.invoke(app, ["clusters", "-w", ws, "--k", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert sum(c["size"] for c in json.loads(r.stdout)["clusters"]) == 24
    r = runner.invoke(app, ["clusters", "-w", ws, "--by", "embedding", "--k", "2"])
    assert r.exit_code == 0 and "2 clusters of 24 pairs, by embedding" in r.stdout
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"planted": [0, 1, 2]}))
    r = runner.invoke(app, ["compare", "-w", ws, "--truth", str(truth), "--k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {"ari", "nmi", "sae", "embedding"} <= set(out) and "feature_precision" in out["sae"]
    r = runner.invoke(app, ["trace", "-w", ws, "--feature", "3", "--top", "2"])
    assert r.exit_code == 0 and r.stdout.startswith("feature 3 ")
    # errors: one line, exit 2, no traceback
    truth.write_text(json.dumps({"planted": ["x"]}))
    for args in (["compare", "-w", ws, "--truth", str(truth)], ["clusters", "-w", ws, "--by", "nope"],
                 ["trace", "-w", ws, "--feature", "99999"], ["clusters", "-w", str(tmp_path / "none")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.output and "error:" in r.output, args


def test_cli_clusters_prints_the_data_clusters_the_hypotheses_read(small_workspace, tmp_path):
    import shutil

    from core.session import Session

    ws = tmp_path / "hh"
    shutil.copytree(small_workspace, ws)
    runner = CliRunner()
    r = runner.invoke(app, ["clusters", "-w", str(ws), "--json"], env={"DATADEBUG_PROGRESS": "0"})
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    session = Session(ws)
    report = session.hypotheses(top=10_000)
    rows = [h for h in report.hypotheses if h.kind == "cluster"]
    assert [c["id"] for c in out["clusters"]] == list(range(report.k))
    assert sum(c["size"] for c in out["clusters"]) + len(out["silent"]) == 24 == out["n_pairs"]
    for c in out["clusters"]:  # the same names, sizes and rows as the hypotheses' cluster rows
        mine = [h.to_json() for h in rows if h.group == c["id"]]
        assert c["hypotheses"] == json.loads(json.dumps(mine[:3]))
        assert all(h["group_name"] == c["name"] and h["n"] == c["size"] for h in mine)
    structure = sorted((ws / "structure").iterdir())
    r = runner.invoke(app, ["clusters", "-w", str(ws)])
    assert r.exit_code == 0 and f"{report.k} data clusters of 24 pairs" in r.stdout
    for c in out["clusters"]:
        assert f"cluster {c['id']}" + (f" «{c['name']}»" if c["name"] else "") + f": {c['size']} pairs" in r.stdout
    assert sorted((ws / "structure").iterdir()) == structure  # read back, not fitted again
    # mark --cluster names the same data clusters; --k alone still means the SAE k-means grouping
    r = runner.invoke(app, ["mark", "--cluster", "0", "-w", str(ws), "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.stdout)["marked"]) == out["clusters"][0]["source_indices"]
    r = runner.invoke(app, ["clusters", "-w", str(ws), "--by", "data", "--k", "3"])
    assert r.exit_code == 2 and "--k sets the k of the k-means groupings" in r.output
