import json
import threading
from pathlib import Path

import pytest
import torch

from core.catalog import load_catalog
from core.sae import Cancelled, encode, load_sae, train_topk_sae
from core.store import sae_dir


def test_tiny_sae_is_real_sae_lens_format_with_quality(tiny_sae):
    entry = load_catalog().saes[tiny_sae]
    folder = sae_dir(entry)
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(folder))  # the format sae-lens itself loads
    assert sae.cfg.d_sae == 512 and sae.cfg.d_in == 576
    q = json.loads((folder / "quality.json").read_text())
    assert 0 < q["fvu"] < 0.6, q  # far better than predicting the mean (FVU 1)
    assert q["l0"] == pytest.approx(16, abs=0.5)  # TopK keeps k features per token
    assert 0 <= q["dead_fraction"] < 0.9
    x = torch.randn(5, 576) * 50
    f = encode(load_sae(folder), x)
    assert f.shape == (5, 512) and ((f > 0).sum(1) <= 16).all()


def test_training_stops_on_cancel(tmp_path: Path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        train_topk_sae(torch.randn(2048, 16), tmp_path / "s", d_sae=32, k=4, train_tokens=10_000, batch_size=256, cancel=cancel)
    assert not (tmp_path / "s").exists()


def test_training_learns_planted_directions(tmp_path: Path):
    # Data made of 8 sparse directions: a TopK SAE with k=2 must reconstruct it almost perfectly.
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(8, 32, generator=g), dim=1)
    codes = torch.zeros(6000, 8)
    idx = torch.randint(0, 8, (6000, 2), generator=g)
    codes.scatter_(1, idx, torch.rand(6000, 2, generator=g) * 5 + 1)
    q = train_topk_sae(codes @ dirs, tmp_path / "s", d_sae=16, k=2, train_tokens=256 * 300, batch_size=256, lr=5e-3)
    assert q.fvu < 0.1, q
