"""A trained SAE recipe gives each dataset its own SAE (core.model.dataset_sae): which name, when it trains,
what the workspace records. The recipe is tiny (64 features, a few thousand tokens) so the two real
trainings here take seconds; the SAE store is a temporary one beside the real model copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.model.catalog import load_catalog
from core.cli import app
from core.model.dataset_sae import choose_sae, corpus_key, estimate_training
from core.errors import CatalogError, StoreError
from core.index.build import IndexSettings, index_dataset
from core.model.store import sae_dir, sae_sha256, status, trained_variants
from core.data.workspace import Workspace, file_sha256
from tests.conftest import HH, UF, catalog_entries, short_pairs, temporary_store, tiny_recipe, write_jsonl_subset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = tiny_recipe("tiny-recipe")
SETTINGS = IndexSettings(max_tokens=32, chunk_pairs=4)


@pytest.fixture(scope="module")
def store(tmp_path_factory, config_dir):
    """A temporary SAE store (its models/ is the real one: no second float copy) and the tiny recipe."""
    with temporary_store(tmp_path_factory.mktemp("cache"), config_dir, RECIPE) as cache:
        yield cache


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("datasets")
    return {
        "a": write_jsonl_subset(HH, short_pairs(HH, 6, max_chars=400, skip=120), d / "a.jsonl"),
        "b": write_jsonl_subset(UF, short_pairs(UF, 6, max_chars=700, skip=5), d / "b.jsonl"),
        "c": write_jsonl_subset(HH, short_pairs(HH, 6, max_chars=400, skip=128), d / "c.jsonl"),
    }


def name_for(path: Path) -> str:
    return f"tiny-recipe@{file_sha256(path)[:8]}"


def test_decision_without_training(store, datasets):
    cat = load_catalog()
    sha = file_sha256(datasets["a"])
    choice = choose_sae(cat, sha, sae="tiny-recipe")
    assert choice.train and choice.entry.name == name_for(datasets["a"]) and "has not seen" in choice.reason
    assert sae_dir(choice.entry) == store / "saes" / name_for(datasets["a"])
    with pytest.raises(StoreError, match="no SAE trained with tiny-recipe"):
        choose_sae(cat, sha, sae="tiny-recipe", train=False)
    with pytest.raises(StoreError, match="not in the store"):  # a variant of another dataset, absent
        choose_sae(cat, sha, sae="tiny-recipe@0123abcd")
    with pytest.raises(CatalogError):  # only "train" recipes have variants
        cat.sae("tiny-test@0123abcd")
    # a variant named explicitly for this very dataset is trained when absent
    assert choose_sae(cat, sha, sae=name_for(datasets["a"])).train
    assert corpus_key([sha]) == sha[:8] and corpus_key([sha, sha]) != sha[:8]


@pytest.mark.slow(23)  # 23 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_sae_per_dataset_trained_once_and_recorded(store, datasets, tmp_path):
    a, b, c = datasets["a"], datasets["b"], datasets["c"]
    # `sae train --data A` trains A's SAE (the first training here: its rates are measured first)
    r = CliRunner().invoke(app, ["sae", "train", "tiny-recipe", "--data", str(a), "--json"])
    assert r.exit_code == 0, r.output
    trained = json.loads(r.stdout)
    assert trained["name"] == name_for(a)
    q = json.loads((store / "saes" / name_for(a) / "quality.json").read_text())
    assert q["corpus"]["datasets"][0]["sha256"] == file_sha256(a) and q["recipe"] == "tiny-recipe"
    assert q["timing"]["collect_seconds"] > 0 and q["d_sae"] == 64
    assert q["fvu"] < 1.0, q  # it learned something: better than predicting the mean
    # 6 short pairs leave most of the 1,200-token budget to the bundled sample, and the reason says so
    assert q["corpus"]["sample_pairs_read"] > 0
    assert "trained on a.jsonl (+ the bundled sample)" in choose_sae(load_catalog(), file_sha256(a), sae="tiny-recipe").reason

    # indexing A reuses it: no training
    said = []
    index_dataset(a, tmp_path / "wa", sae="tiny-recipe", settings=SETTINGS, progress=said.append)
    assert not any("training" in p.message for p in said), [p.message for p in said]
    meta = Workspace(tmp_path / "wa").meta()
    entry = load_catalog().sae(name_for(a))
    assert meta["sae"] == name_for(a) and meta["sae_sha256"] == sae_sha256(entry) and meta["d_sae"] == 64

    # an unseen dataset B gets its own SAE, trained first, with the time it takes said up front
    said = []
    index_dataset(b, tmp_path / "wb", sae="tiny-recipe", settings=SETTINGS, progress=said.append)
    first = [p.message for p in said if p.stage == "sae" and "about" in p.message]
    assert first and "has not seen this dataset" in first[0] and "rates of the training of" in first[0], first
    assert Workspace(tmp_path / "wb").meta()["sae"] == name_for(b)
    assert [v.name for v in trained_variants(load_catalog().saes["tiny-recipe"])] == [name_for(b), name_for(a)]
    assert {name_for(a), name_for(b)} <= {s.name for s in status(load_catalog(), trained=True) if s.ready}

    # --no-train-sae on a third dataset: the newest SAE of the recipe, said so; nothing trained
    said = []
    index_dataset(c, tmp_path / "wc", sae="tiny-recipe", settings=SETTINGS, progress=said.append, train_sae=False)
    assert Workspace(tmp_path / "wc").meta()["sae"] == name_for(b)
    assert any("has not seen this dataset" in p.message for p in said)
    assert len(trained_variants(load_catalog().saes["tiny-recipe"])) == 2

    # the estimate the TUI can ask for: from the recorded rates, tokens capped by the recipe's budget
    est = estimate_training(load_catalog().saes["tiny-recipe"], load_catalog())
    assert est.seconds > 0 and est.activation_tokens == 1200 and est.steps == 150 and "rates of" in est.basis


RECIPE_FRESH = tiny_recipe("fresh-recipe", d_sae=96)  # another shape: no earlier training's rates


@pytest.mark.slow(17)  # 17 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
@pytest.mark.parametrize("rates", ["measured just now", "rates of the training"])
def test_the_estimate_is_within_2x_of_the_training_it_announces(store, datasets, config_dir, rates):
    """The line `index` shows before training ("about 40s"): from rates measured on the spot (no earlier
    training of this recipe's shape) and from an earlier training's recorded rates, it is within 2x
    of the time the training then takes (load + read + train, as quality.json records them)."""
    from core.data.ingest import read_pairs
    from core.model.dataset_sae import train_dataset_sae

    with catalog_entries(config_dir, RECIPE_FRESH):
        cat = load_catalog()
        recipe = cat.saes["fresh-recipe"]
        data = datasets["a"] if rates == "measured just now" else datasets["c"]
        est = estimate_training(recipe, cat, read_pairs(data, skip_invalid=True).pairs)
        assert est.basis.startswith(rates), est.basis
        entry, _ = train_dataset_sae(recipe, cat, [data])
        q = json.loads((sae_dir(entry) / "quality.json").read_text())
        t = q["timing"]
        took = t["load_seconds"] + t["collect_seconds"] + q["train_seconds"]
        assert est.activation_tokens == q["activation_tokens"]
        assert 0.5 <= est.seconds / took <= 2.0, (est.line(), f"took {took:.1f} s", t, q["train_seconds"])


@pytest.mark.slow(12)
def test_a_dataset_that_fills_the_budget_is_not_said_to_have_the_sample(store, config_dir, tmp_path):
    """When the dataset's replies meet the recipe's token budget, no pair of the bundled sample is read,
    and the SAE's description does not claim "(+ the bundled sample)"."""
    from core.model.dataset_sae import train_dataset_sae

    big = write_jsonl_subset(UF, short_pairs(UF, 36, max_chars=900), tmp_path / "big.jsonl")
    with catalog_entries(config_dir, tiny_recipe("budget-recipe")):
        cat = load_catalog()
        entry, _ = train_dataset_sae(cat.saes["budget-recipe"], cat, [big])
        q = json.loads((sae_dir(entry) / "quality.json").read_text())
        assert q["activation_tokens"] == 1200 and q["corpus"]["sample_pairs_read"] == 0, q["corpus"]
        reason = choose_sae(load_catalog(), file_sha256(big), sae="budget-recipe").reason
        assert "trained on big.jsonl" in reason and "bundled sample" not in reason, reason
