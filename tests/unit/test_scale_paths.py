"""The paths people use stay cheap as workspaces grow: the shift report reads the reply tokens its
labels need in one query (it used to scan every pair's tokens once per feature), and clustering
fits its centres on a sample and assigns every pair (tests/bench/bench_clusters.py times 260k)."""

from __future__ import annotations

import pytest

import core.analysis.clusters as clusters
from core.analysis.shifts import Analysis
from core.data.workspace import Workspace
from tests.bench.synthetic import synthetic_workspace


def spy(monkeypatch, name: str, calls: list):
    orig = getattr(Workspace, name)

    def wrapper(self, *args, **kwargs):
        calls.append((name, args))
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(Workspace, name, wrapper)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_workspace(tmp_path_factory.mktemp("syn") / "ws", n=3000, d_sae=2048, nnz=40, topics=5, tokens=8)


def test_report_labels_read_their_tokens_in_one_query(synthetic, monkeypatch):
    a = Analysis(Workspace(synthetic.path))
    calls: list = []
    spy(monkeypatch, "pairs_columns", calls)
    spy(monkeypatch, "pairs_in", calls)
    report = a.report(top=25)
    assert len(report.features) >= 20 and all(f.contexts for f in report.features)
    token_reads = [c for c in calls if c[0] == "pairs_in" or any("tokens" in col for col in c[1][0])]
    assert len(token_reads) == 1, calls
    calls.clear()
    c = clusters.cluster_pairs(a, "sae", k=3)  # every listed feature's label: no further scan
    assert all(f.label for cl in c.clusters for f in cl.top_features)
    assert len([x for x in calls if x[0] == "pairs_in" or any("tokens" in col for col in x[1][0])]) <= 1, calls


def test_clustering_beyond_the_fit_sample_assigns_every_pair(synthetic, monkeypatch):
    from sklearn.metrics import adjusted_rand_score

    monkeypatch.setattr(clusters, "FIT_MAX", 1000)
    monkeypatch.setattr(clusters, "SEARCH_SAMPLE", 600)
    a = Analysis(Workspace(synthetic.path))
    sae, k = clusters.partition(a, "sae")
    emb, k2 = clusters.partition(a, "embedding", k=k)
    assert k == k2 == 5 and len(sae) == len(emb) == 3000  # the 5 planted topics, found from a sample
    assert adjusted_rand_score(sae, emb) > 0.95  # both see the same topics in every pair
