"""The calibration bench's shortcut (tests/bench/copies.py): a planted copy's workspace spliced from
its base and an index of the planted pairs alone, and a label-shuffled copy's made by swapping
columns, equal a full `index` of the copy file (every pair column, floats to tolerance)."""

from pathlib import Path

import numpy as np
import pytest

from core.index.build import IndexSettings, index_dataset
from core.data.plant import plant_records, write_records
from core.data.workspace import PAIRS_SCHEMA, Workspace
from tests.bench.copies import only_planted_file, splice_planted, swap_labels
from tests.conftest import catalog_entries

DATA = Path(__file__).resolve().parents[1] / "data" / "hh-short-16.jsonl"  # 16 short HH-RLHF pairs
SETTINGS = IndexSettings(max_tokens=48, chunk_pairs=4, batch_tokens=1024)


@pytest.fixture(scope="module")
def copies_sae(tmp_path_factory, config_dir):
    """A 256-feature SAE trained on the fixture's own activations, as catalogue entry "copies-test"."""
    from core.model.catalog import load_catalog
    from core.data.ingest import read_pairs
    from core.model.lm import ResidualReader
    from core.model.sae import train_topk_sae
    from core.model.sae_train import collect_activations

    model = load_catalog().model(None)
    reader = ResidualReader.from_entry(model)
    acts = collect_activations(reader, read_pairs(DATA).pairs, max_tokens=48, token_budget=4_000,
                               include_prompts=True)
    out = tmp_path_factory.mktemp("sae") / "copies"
    train_topk_sae(acts, out, d_sae=256, k=8, train_tokens=256 * 40, batch_size=256, lr=2e-3)
    toml = f'[saes.copies-test]\nmodel = "{model.name}"\nlayer = {model.layer}\nsource = "local"\npath = "{out}"\n'
    with catalog_entries(config_dir, toml):
        yield "copies-test"


@pytest.fixture(scope="module")
def base(tmp_path_factory, copies_sae):
    root = tmp_path_factory.mktemp("copies")
    data = write_records(plant_records(DATA, "style", 0.0).records, root / "base.jsonl")
    index_dataset(data, root / "base", sae=copies_sae, settings=SETTINGS)
    return root, Workspace(root / "base")


def assert_same_pairs(a: Workspace, b: Workspace) -> None:
    ta, tb = (w.pairs_columns(PAIRS_SCHEMA.names).to_pylist() for w in (a, b))
    assert len(ta) == len(tb) > 0
    for ra, rb in zip(ta, tb):
        for name in PAIRS_SCHEMA.names:
            va, vb = ra[name], rb[name]
            if name.endswith(("_mean", "_max", "_freq", "_val")) or name.startswith("emb_"):
                np.testing.assert_allclose(va, vb, rtol=1e-4, atol=1e-5, err_msg=f"{name} of pair {ra['source_index']}")
            else:
                assert va == vb, f"{name} of pair {ra['source_index']}"


@pytest.mark.slow(25)  # 25 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_a_spliced_planted_copy_equals_a_full_index_of_the_copy(base, copies_sae):
    root, ws = base
    # the planted-only file at 50% serves the 25% copy (rates are nested)
    only_planted = only_planted_file(ws.meta()["dataset"], "style", 0.5, root / "only.jsonl")
    assert len(only_planted) == 8
    index_dataset(root / "only.jsonl", root / "only", sae=copies_sae, settings=SETTINGS)
    spliced, planted = splice_planted(ws, Workspace(root / "only"), only_planted, "style", 0.25, root / "spliced")
    assert len(planted) == 4 and set(planted) < set(only_planted)

    copy = root / "spliced.jsonl"
    full = plant_records(ws.meta()["dataset"], "style", 0.25)
    assert copy.read_bytes() == write_records(full.records, root / "check.jsonl").read_bytes()
    index_dataset(copy, root / "full", sae=copies_sae, settings=SETTINGS)
    assert_same_pairs(spliced, Workspace(root / "full"))
    # the planted replies really differ from the base's, so the splice replaced something
    chosen = spliced.pairs_columns(["chosen"])["chosen"].to_pylist()
    before = ws.pairs_columns(["chosen"])["chosen"].to_pylist()
    assert [i for i in range(16) if chosen[i] != before[i]] == planted
    meta = spliced.meta()
    assert Path(meta["dataset"]) == copy.resolve() and meta["sae"] == ws.meta()["sae"]
    assert meta["dataset_sha256"] == Workspace(root / "full").meta()["dataset_sha256"]


def test_a_label_swapped_copy_equals_a_full_index_of_the_swapped_file(base, copies_sae):
    from core.session import Session

    root, ws = base
    swapped_ws, swapped = swap_labels(ws, seed=3, out=root / "swapped")
    assert len(swapped) == 8
    index_dataset(root / "swapped.jsonl", root / "swapped-full", sae=copies_sae, settings=SETTINGS)
    assert_same_pairs(swapped_ws, Workspace(root / "swapped-full"))
    c = swapped_ws.pairs_columns(["chosen", "rejected"])
    b = ws.pairs_columns(["chosen", "rejected"])
    for i in range(16):
        flipped = (c["chosen"][i], c["rejected"][i]) == (b["rejected"][i], b["chosen"][i])
        assert flipped == (i in swapped)
    assert Session(root / "swapped").analysis.n == 16  # opens like any indexed workspace
