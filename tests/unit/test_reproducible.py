"""Runs are the same on one machine: the small path twice (SAE training, indexing, concepts and
clusters, the calibrated ranking) gives the same weights, tables and findings."""

import numpy as np
import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow(15)  # 15 s (2026-12-05, 2-core machine idle)


def test_sae_training_twice_gives_the_same_weights(tmp_path):
    import torch

    from core.model.sae import train_topk_sae

    acts = torch.randn(3000, 576, generator=torch.Generator().manual_seed(3))  # (tokens, d_model)
    weights = []
    for run in ("a", "b"):
        train_topk_sae(acts, tmp_path / run, d_sae=256, k=8, train_tokens=256 * 20, batch_size=256, lr=2e-3, seed=7)
        weights.append(load_file(str(tmp_path / run / "sae_weights.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert np.array_equal(weights[0][name], weights[1][name]), name
    # and the seed matters: another one trains other weights
    train_topk_sae(acts, tmp_path / "c", d_sae=256, k=8, train_tokens=256 * 20, batch_size=256, lr=2e-3, seed=8)
    other = load_file(str(tmp_path / "c" / "sae_weights.safetensors"))
    assert not all(np.array_equal(weights[0][n], other[n]) for n in other)


def test_index_and_findings_twice_are_identical(tmp_path, tiny_sae, hh_small):
    from core.index.build import IndexSettings, index_dataset
    from core.session import Session
    from core.data.workspace import Workspace

    reports = []
    for run in ("a", "b"):
        ws = tmp_path / run
        index_dataset(hh_small, ws, sae=tiny_sae, settings=IndexSettings(max_tokens=64, chunk_pairs=8))
        cols = ["source_index", "chosen_feat", "chosen_freq", "rejected_feat", "rejected_max", "prompt_feat"]
        table = Workspace(ws).pairs_columns(cols).sort_by("source_index").to_pylist()
        session = Session(ws)
        rep = session.hypotheses(top=20)
        concepts = session.concepts(top=50)
        reports.append((table, rep, concepts))
    (ta, ra, ca), (tb, rb, cb) = reports
    assert ta == tb
    assert ra.structure_key != "" and ra.n_tested == rb.n_tested > 0
    strip = [(h.kind, h.group, h.concept, h.delta, h.p, h.q, h.established, [p.source_index for p in h.driving])
             for h in ra.hypotheses]
    assert strip == [(h.kind, h.group, h.concept, h.delta, h.p, h.q, h.established, [p.source_index for p in h.driving])
                     for h in rb.hypotheses]
    assert [(r.shift.concept, r.shift.q, r.name) for r in ca.rows] == [(r.shift.concept, r.shift.q, r.name) for r in cb.rows]
