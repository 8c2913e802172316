import json
import threading
from pathlib import Path

import pytest
import torch

from core.model.catalog import load_catalog
from core.model.sae import Cancelled, encode, load_sae, train_topk_sae
from core.model.store import sae_dir


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


def _planted_directions(n: int = 6000, seed: int = 0) -> torch.Tensor:
    """(n, 32) activations made of 8 sparse directions, two per token, plus an offset a b_dec must learn."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(8, 32, generator=g), dim=1)
    codes = torch.zeros(n, 8)
    codes.scatter_(1, torch.randint(0, 8, (n, 2), generator=g), torch.rand(n, 2, generator=g) * 5 + 1)
    return codes @ dirs + 3.0 * torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)


def test_data_initialisation_and_a_plateau_stop(tmp_path: Path):
    """init="data" starts from the activations (b_dec at their mean, decoder rows centred samples) and
    trains better than sae-lens's init at the same steps; with a patience, training stops once the
    held-out FVU stops improving, before the cap, and quality.json says where and why."""
    acts = _planted_directions()
    kw = dict(d_sae=16, k=2, batch_size=256, lr=5e-3)
    short = 256 * 40
    plain = train_topk_sae(acts, tmp_path / "plain", train_tokens=short, **kw)
    data = train_topk_sae(acts, tmp_path / "data", train_tokens=short, init="data", **kw)
    assert data.fvu < plain.fvu, (data, plain)
    cap = 1000
    stopped = train_topk_sae(acts, tmp_path / "stop", train_tokens=256 * cap, init="data", patience=75, **kw)
    info = json.loads((tmp_path / "stop" / "quality.json").read_text())["training"]
    assert info["stopped"] == "held-out FVU plateau" and info["steps"] < cap and info["cap_steps"] == cap
    assert stopped.train_tokens == info["steps"] * 256 and stopped.fvu < 0.1
    trace = info["heldout_fvu"]
    assert trace[-1][0] == info["steps"] - 1 and trace[-1][0] - min(trace, key=lambda t: t[1])[0] >= 0
    assert load_sae(tmp_path / "stop").cfg.d_sae == 16  # the stopped SAE is saved whole, folded as usual
    full = json.loads((tmp_path / "data" / "quality.json").read_text())["training"]
    assert full == {"init": "data", "steps": 40, "cap_steps": 40, "seed": 0, "stopped": "cap"}
    with pytest.raises(ValueError, match="initialisation"):
        train_topk_sae(acts, tmp_path / "x", train_tokens=short, init="zeros", **kw)


def test_the_mean_initialisation_moves_b_dec_only():
    """init="mean" puts b_dec at the activations' mean and leaves sae-lens's random decoder rows (and
    their transpose in the encoder) as they were; "data" replaces the rows with centred samples."""
    from sae_lens import TopKTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE

    from core.model.sae import _data_init

    acts = _planted_directions()  # (n, 32), mean far from 0
    saes = []
    for decoder in (False, True):
        torch.manual_seed(0)
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=32, d_sae=16, k=2, decoder_init_norm=0.1))
        before = sae.W_dec.detach().clone()
        _data_init(sae, acts, seed=0, decoder=decoder)
        assert torch.allclose(sae.b_dec, acts.mean(0), atol=1e-5)
        saes.append((before, sae))
    (before, mean_only), (before_d, data) = saes
    assert torch.equal(mean_only.W_dec, before)
    assert not torch.allclose(data.W_dec, before_d)
    centred = acts - acts.mean(0)
    cos = torch.nn.functional.normalize(data.W_dec, dim=1) @ torch.nn.functional.normalize(centred, dim=1).T
    assert (cos.max(1).values > 0.999).all()  # each row is one centred activation


# -- the native encoder equals sae-lens's own, for every kind sae-lens saves ---------------------------


def _randomised(sae, seed: int, threshold: float | None = None):
    """Every parameter drawn at random (sae-lens initialises biases and thresholds at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name != "W_dec" else 1.0))
        if threshold is not None:
            sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=g) * threshold)
    return sae


def _sae_lens_kinds(tmp_path: Path, d_in: int = 48, d_sae: int = 384) -> dict[str, Path]:
    """Real sae-lens SAEs of each kind it saves, written by sae-lens itself to folders."""
    import sae_lens as sl

    out = {}

    def save(name, sae, inference=False):
        folder = tmp_path / name
        (sae.save_inference_model if inference else sae.save_model)(folder)
        out[name] = folder

    save("standard", _randomised(sl.StandardSAE(sl.StandardSAEConfig(d_in=d_in, d_sae=d_sae)), 0))
    save("standard-no-bdec-layernorm", _randomised(sl.StandardSAE(sl.StandardSAEConfig(
        d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False, normalize_activations="layer_norm")), 1))
    save("topk-rescaled", _randomised(sl.TopKSAE(sl.TopKSAEConfig(
        d_in=d_in, d_sae=d_sae, k=12, rescale_acts_by_decoder_norm=True)), 2))
    save("topk-constant-norm", _randomised(sl.TopKSAE(sl.TopKSAEConfig(
        d_in=d_in, d_sae=d_sae, k=7, normalize_activations="constant_norm_rescale")), 3))
    save("jumprelu", _randomised(sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)), 4, threshold=1.0))
    save("gated", _randomised(sl.GatedSAE(sl.GatedSAEConfig(d_in=d_in, d_sae=d_sae)), 5))
    topk_train = _randomised(sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=9)), 6)
    save("topk-training-inference-form", topk_train, inference=True)  # decoder norms folded on save
    for name, cfg_cls, extra in (
        ("batchtopk", sl.BatchTopKTrainingSAEConfig, {}),
        ("matryoshka", sl.MatryoshkaBatchTopKTrainingSAEConfig, {"matryoshka_widths": [d_sae // 4, d_sae]}),
    ):
        sae = _randomised(getattr(sl, cfg_cls.__name__.replace("Config", ""))(cfg_cls(d_in=d_in, d_sae=d_sae, k=10, **extra)), 7)
        sae.topk_threshold = torch.tensor(0.8, dtype=torch.double)
        save(name, sae, inference=True)  # saved as a jumprelu SAE with one threshold
    return out


def _same_codes(native, folder: Path, x: torch.Tensor) -> None:
    from sae_lens import SAE

    want = SAE.load_from_disk(str(folder)).encode(x)  # (n, d_sae)
    got = native.encode(x)
    assert torch.equal(got, want), (folder.name, (got - want).abs().max())
    for chunk in (None, 7):  # one matmul, then chunks that split the tokens unevenly
        codes = native.encode_sparse(x, chunk_tokens=chunk)
        assert (codes.val > 0).all() and (codes.token[1:] >= codes.token[:-1]).all()
        dense = torch.zeros_like(want)
        dense[codes.token, codes.feat] = codes.val
        if chunk is None:
            assert torch.equal(dense, want), folder.name
        else:  # a matmul over fewer rows may round differently in the last bit
            assert torch.allclose(dense, want, atol=1e-5), folder.name


def test_native_encoder_equals_sae_lens_for_every_kind(tmp_path: Path):
    import json as _json

    folders = _sae_lens_kinds(tmp_path)
    x = torch.randn(40, 48, generator=torch.Generator().manual_seed(9)) * 3
    archs = {}
    for name, folder in folders.items():
        native = load_sae(folder)
        archs[name] = native.cfg.architecture
        _same_codes(native, folder, x)
        assert 0 < (native.encode(x) > 0).sum(1).float().mean() < 384, name  # sparse, not dead
    saved = _json.loads((folders["topk-training-inference-form"] / "cfg.json").read_text())
    assert saved["rescale_acts_by_decoder_norm"] and saved["normalize_activations"] == "none"
    assert archs["batchtopk"] == archs["matryoshka"] == "jumprelu" and archs["gated"] == "gated"


def test_native_encoder_equals_sae_lens_on_our_trained_topk_and_a_wide_jumprelu(tiny_sae, tmp_path: Path):
    import sae_lens as sl

    folder = sae_dir(load_catalog().saes[tiny_sae])  # train_topk_sae's own output (norms folded)
    _same_codes(load_sae(folder), folder, torch.randn(30, 576, generator=torch.Generator().manual_seed(1)) * 50)
    wide = _randomised(sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=16, d_sae=65_536)), 3, threshold=2.0)
    wide.save_model(tmp_path / "wide")
    _same_codes(load_sae(tmp_path / "wide"), tmp_path / "wide", torch.randn(12, 16) * 2)


def test_encoding_does_not_import_sae_lens(tiny_sae):
    import subprocess
    import sys

    folder = sae_dir(load_catalog().saes[tiny_sae])
    code = (f"import sys, torch; from core.model.sae import load_sae; s = load_sae({str(folder)!r}); "
            "s.encode_sparse(torch.randn(3, 576)); print('sae_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
