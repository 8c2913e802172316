"""The embedded default's SAE of the bundled sample ships with the package (core.model.shipped): it is
the SAE `index` names for the sample, its weights are checked by sha256 before the store takes them,
and indexing the sample then trains nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from core import locations
from core.data.workspace import file_sha256
from core.errors import StoreError
from core.model.catalog import load_catalog
from core.model.dataset_sae import choose_sae, corpus_key, variant
from core.model.shipped import SHIPPED_DIR, install, manifest
from core.model.store import sae_dir, sae_ready


@pytest.fixture
def empty_store(tmp_path, monkeypatch):
    """A cache dir with no SAE in it (models are not needed here)."""
    monkeypatch.setenv("DATADEBUG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def sample_entry():
    cat = load_catalog()
    recipe = cat.sae(None, cat.model(None))
    return cat, variant(recipe, corpus_key([file_sha256(locations.sample_data_file())]))


def test_the_shipped_sae_is_the_samples_and_its_sha256_holds():
    cat, entry = sample_entry()
    meta = manifest(entry.name)
    assert meta is not None, f"no SAE ships for the sample under {entry.name} (core/model/shipped/)"
    folder = SHIPPED_DIR / entry.name
    assert file_sha256(folder / "sae_weights.safetensors") == meta["sha256"]
    assert meta["sample_sha256"] == file_sha256(locations.sample_data_file())
    assert sum(f.stat().st_size for f in folder.iterdir()) < 10.5 * 2**20
    q = json.loads((folder / "quality.json").read_text())
    cfg = json.loads((folder / "cfg.json").read_text())
    assert (cfg["d_sae"], cfg["k"]) == (entry.d_sae, entry.k)
    assert q["fvu"] < 0.25 and q["dead_fraction"] <= 0.10


def test_indexing_the_sample_installs_it_and_trains_nothing(empty_store):
    cat, entry = sample_entry()
    assert not sae_ready(entry)
    choice = choose_sae(cat, file_sha256(locations.sample_data_file()))
    assert choice.entry.name == entry.name and not choice.train
    assert "shipped" in choice.reason
    assert sae_ready(entry) and str(sae_dir(entry)).startswith(str(empty_store))
    from core.model.store import sae_sha256

    assert sae_sha256(entry) == manifest(entry.name)["sha256"]
    from core.model.sae import load_sae

    sae = load_sae(sae_dir(entry), device="cpu")
    assert tuple(sae.W_dec.shape) == (entry.d_sae, 576)  # (d_sae, d_model)
    # another dataset still gets its own SAE, trained first
    other = choose_sae(cat, "0" * 64)
    assert other.train and other.entry.name != entry.name


def test_weights_that_do_not_match_their_sha256_are_refused(empty_store, tmp_path):
    cat, entry = sample_entry()
    root = tmp_path / "shipped"
    shutil.copytree(SHIPPED_DIR / entry.name, root / entry.name)
    weights = root / entry.name / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256"):
        install(entry, root=root)
    assert not sae_ready(entry)
    assert install(entry, root=tmp_path / "none") is False  # nothing ships there: train as before
