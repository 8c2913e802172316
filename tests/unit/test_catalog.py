from pathlib import Path

import pytest

from core.model.catalog import CatalogError, read_catalog
from core.locations import packaged_catalog_file


def test_packaged_catalogue_has_the_embedded_default_and_gpu_entries():
    cat = read_catalog(packaged_catalog_file())
    default = cat.model(None)
    assert default.source == "package-gguf"
    assert cat.sae(None, default).source == "train"
    assert cat.sae(None, default).layer == default.layer
    llama = cat.model("llama-3.1-8b-instruct")
    assert llama.layer == 19 and cat.sae(None, llama).release.startswith("goodfire")
    assert cat.sae(None, cat.model("gemma-2-2b")).release.startswith("gemma-scope")


def test_user_file_overrides_and_adds(tmp_path: Path):
    user = tmp_path / "models.toml"
    user.write_text(
        'default_model = "mine"\n'
        '[models.mine]\nsource = "local"\npath = "/x"\nlayer = 3\n'
        '[models.smollm2-135m]\nsource = "hf"\nrepo = "me/fork"\nlayer = 7\n'
    )
    cat = read_catalog(packaged_catalog_file(), user)
    assert cat.default_model == "mine"
    assert cat.model("smollm2-135m").repo == "me/fork" and cat.model("smollm2-135m").layer == 7
    assert "gemma-2-2b" in cat.models  # untouched packaged entries remain


def test_unknown_key_names_file_and_entry(tmp_path: Path):
    user = tmp_path / "models.toml"
    user.write_text('[models.bad]\nsource = "hf"\nlayer = 1\nrepoo = "typo"\n')
    with pytest.raises(CatalogError, match=r"models.toml.*\[models.bad\].*repoo"):
        read_catalog(packaged_catalog_file(), user)


def test_unknown_model_lists_known():
    cat = read_catalog(packaged_catalog_file())
    with pytest.raises(CatalogError, match="smollm2-135m"):
        cat.model("nope")


def test_a_recipe_with_an_unknown_initialisation_names_file_and_entry(tmp_path: Path):
    user = tmp_path / "models.toml"
    user.write_text('[saes.mine]\nmodel = "smollm2-135m"\nlayer = 15\nsource = "train"\ninit = "zeros"\n')
    with pytest.raises(CatalogError, match=r"models.toml.*\[saes.mine\].*init must be one of sae-lens, data"):
        read_catalog(packaged_catalog_file(), user)
    user.write_text('[saes.mine]\nmodel = "smollm2-135m"\nlayer = 15\nsource = "train"\ninit = "data"\nstop_patience = 100\nseed = 3\n')
    entry = read_catalog(packaged_catalog_file(), user).saes["mine"]
    assert (entry.init, entry.stop_patience, entry.stop_margin, entry.seed) == ("data", 100, 0.01, 3)
    assert read_catalog(packaged_catalog_file()).saes["smollm2-135m-l15-topk"].seed == 0  # the shipped SAE's
