"""tests/bench/gpu_validate.py's torch-only SAE encoder gives sae-lens's activations exactly: the GPU
run computes its prediction with it where sae-lens is not installed. (The whole script's tiny mode is
tests/bench/test_gpu_validate_tiny.py: minutes of CPU, run on demand.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_validate.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("gpu_validate", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_torch_only_topk_encoder_matches_sae_lens(tiny_sae):
    from core.model.catalog import load_catalog
    from core.model.sae import encode, load_sae
    from core.model.store import sae_dir

    folder = sae_dir(load_catalog().sae(tiny_sae))
    ours = bench_module().TopKSAE(folder)
    theirs = load_sae(folder)
    acts = torch.randn(64, theirs.cfg.d_in, generator=torch.Generator().manual_seed(0)) * 3  # (tokens, d_in)
    got, want = ours.encode(acts), encode(theirs, acts)
    assert got.shape == want.shape and ((got > 0).sum(-1) <= ours.k).all()
    assert torch.equal(got > 0, want > 0)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(ours.W_dec, theirs.W_dec)
