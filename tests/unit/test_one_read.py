"""One read per dataset (core.model.residuals): when `index` trains the dataset's SAE first, the pairs
its corpus read are encoded from their kept float16 residuals instead of being read again, and the
workspace holds what a plain second read gives, to float16's precision. On the real SmolLM2-135M and
a tiny recipe (64 features) in a temporary SAE store, as in test_dataset_sae."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from core.data.ingest import read_pairs
from core.data.workspace import Workspace, file_sha256
from core.index.build import IndexSettings, index_dataset
from core.model.catalog import load_catalog
from core.model.residuals import INDEX_FILE, Keep, ResidualStore, ResidualWriter, residuals_dir
from tests.conftest import HH, short_pairs, temporary_store, tiny_recipe, write_jsonl_subset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = tiny_recipe("tiny-oneread")
SETTINGS = IndexSettings(chunk_pairs=4)  # whole replies: the default; several are longer than the recipe's 32
KEPT = re.compile(r"kept the float16 residuals of (\d+) dataset pairs")
# The tiny SAE's maxima are 17-101 here; read from float16 residuals (11 significant bits) they moved
# by at most 0.0055 (1.4e-4 relative; measured 2026-12-05). A feature is clearly active above FIRING,
# and maxima agree within ABS_TOL + REL_TOL x the larger (0.03 at 17, 0.11 at 100).
FIRING = 1.0
ABS_TOL, REL_TOL = 0.01, 1e-3


@pytest.fixture(scope="module")
def store(tmp_path_factory, config_dir):
    with temporary_store(tmp_path_factory.mktemp("cache"), config_dir, RECIPE) as cache:
        yield cache


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    return write_jsonl_subset(HH, short_pairs(HH, 8, max_chars=600, skip=40), d / "d.jsonl")


def index_into(name: str, dataset: Path, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws") / name
    said = []
    r = index_dataset(dataset, ws, sae="tiny-oneread", settings=SETTINGS, progress=said.append)
    return ws, r, [p.message for p in said]


@pytest.fixture(scope="module")
def first(store, dataset, tmp_path_factory):
    """The first index of the dataset: its SAE is trained, the corpus's residuals kept and used."""
    return index_into("first", dataset, tmp_path_factory)


@pytest.fixture(scope="module")
def second(first, dataset, tmp_path_factory):
    """The same file indexed again with the now-trained SAE: every pair read through the model."""
    return index_into("second", dataset, tmp_path_factory)


def sae_name(dataset: Path) -> str:
    return f"tiny-oneread@{file_sha256(dataset)[:8]}"


COLUMNS = ["n_prompt_tokens", "chosen_tokens", "rejected_tokens", "chosen_feat", "chosen_max",
           "rejected_feat", "rejected_max", "prompt_feat", "prompt_max"]


def summaries(ws: Path) -> dict[int, dict]:
    t = Workspace(ws).pairs_columns(["source_index", *COLUMNS]).to_pylist()
    return {row["source_index"]: row for row in t}


def assert_same_reads(a: Path, b: Path, only: set[int] | None = None) -> int:
    """Every pair's token strings equal, features clearly active in one active in the other, maxima
    within the tolerance. Returns how many (pair, segment) maxima were compared."""
    sa, sb = summaries(a), summaries(b)
    assert sa.keys() == sb.keys() and sa
    compared = 0
    for i in sorted(only if only is not None else sa):
        x, y = sa[i], sb[i]
        assert x["n_prompt_tokens"] == y["n_prompt_tokens"], i
        assert x["chosen_tokens"] == y["chosen_tokens"] and x["rejected_tokens"] == y["rejected_tokens"], i
        for seg in ("chosen", "rejected", "prompt"):
            fx = dict(zip(x[f"{seg}_feat"], x[f"{seg}_max"]))
            fy = dict(zip(y[f"{seg}_feat"], y[f"{seg}_max"]))
            for f in {f for f, v in fx.items() if v > FIRING} | {f for f, v in fy.items() if v > FIRING}:
                a, b = fx.get(f, 0.0), fy.get(f, 0.0)
                assert abs(a - b) <= ABS_TOL + REL_TOL * max(a, b), (i, seg, f, a, b)
                compared += 1
    return compared


@pytest.mark.slow(13)  # 13 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_training_index_encodes_the_kept_residuals(first, dataset, store):
    ws, r, said = first
    assert any("has not seen this dataset" in m for m in said), said  # it did train
    kept = [int(m.group(1)) for m in map(KEPT.search, said) if m]
    assert len(kept) == 1 and kept[0] > 0, said
    # 8 short pairs, all within the corpus budget; the 8th's prompt (110 tokens) is longer than the
    # corpus reads before a reply (2 x 32), so its replies there follow fewer prompt tokens: not kept
    assert r.n_from_residuals == kept[0] == 7 and r.n_new == 8
    assert r.reads() == "7 of 8 pairs encoded from the residuals read for the SAE's training"  # CLI and TUI say it
    assert not residuals_dir(sae_name(dataset), file_sha256(dataset)).exists()  # deleted once complete
    assert not any((store / "residuals").iterdir())
    assert Workspace(ws).meta()["sae"] == sae_name(dataset)


def test_a_second_read_gives_the_same_workspace(first, second):
    (a, ra, _), (b, rb, said) = first, second
    assert not any("training" in m for m in said), said
    assert rb.n_from_residuals == 0 and rb.n_new == ra.n_new == 8
    assert assert_same_reads(a, b) > 20  # enough maxima compared to mean something


@pytest.mark.slow(12)  # 12 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_a_leftover_is_used_where_fingerprints_match_and_the_byte_cap_stops_keeping(second, dataset, tmp_path):
    """A store a stopped run left behind: its pairs are encoded from it, bar one whose fingerprint no
    longer matches (read by the model); it is deleted once the index completes. A byte cap keeps the
    first pairs only; unreadable shards, or a store of another layer, are read past. An index cap
    below the recipe's keeps nothing."""
    from core.model.lm import ResidualReader
    from core.model.sae_train import collect_activations

    cat = load_catalog()
    entry = cat.sae(sae_name(dataset))
    pairs = read_pairs(dataset).pairs
    reader = ResidualReader.from_entry(cat.models[entry.model], layer=entry.layer, device="cpu")
    folder = residuals_dir(entry.name, file_sha256(dataset))
    said = []
    writer = ResidualWriter(folder, model=entry.model, layer=entry.layer)
    plain = collect_activations(reader, pairs, 32, token_budget=10**6)
    # an index cap below the recipe's would shrink the corpus: nothing kept, the corpus read as without
    low = collect_activations(reader, pairs, 32, token_budget=10**6,
                              keep=Keep(ResidualWriter(folder, model=entry.model, layer=entry.layer),
                                        {p.source_index: p for p in pairs}, 16))
    assert torch.equal(low, plain) and not folder.exists()
    acts = collect_activations(reader, pairs, 32, token_budget=10**6, progress=said.append,
                               keep=Keep(writer, {p.source_index: p for p in pairs}, SETTINGS.max_tokens))
    assert acts.shape == plain.shape  # the corpus holds the same tokens: replies cut at 32
    # ... and the same vectors (to float noise), in another order: kept pairs are read first
    assert torch.allclose(acts.norm(dim=1).sort().values, plain.norm(dim=1).sort().values, rtol=1e-4)
    assert torch.allclose(acts.sum(0), plain.sum(0), rtol=1e-4, atol=1e-2)
    assert len(writer.pairs) == 7 and not writer.full and any(KEPT.search(p.message) for p in said)

    # one pair tokenised otherwise than recorded (as by another reply cap): never matched
    index = json.loads((folder / INDEX_FILE).read_text())
    odd = sorted(index["pairs"])[0]
    index["pairs"][odd]["fp"] = "0" * 32
    (folder / INDEX_FILE).write_text(json.dumps(index))
    r = index_dataset(dataset, tmp_path / "leftover", sae=entry.name, settings=SETTINGS)
    assert r.n_new == 8 and r.n_from_residuals == 6
    assert not folder.exists()
    assert assert_same_reads(tmp_path / "leftover", second[0]) > 20
    assert ResidualStore.open(folder, model=entry.model, layer=entry.layer, d_model=576) is None

    # the byte cap: room for the first two pairs, so keeping stops there (the others are read as before)
    room = 2 * reader.d_model * sum(index["pairs"][str(p.source_index)]["tokens"] for p in pairs[:2])
    capped = ResidualWriter(folder, model=entry.model, layer=entry.layer, max_bytes=room)
    said = []
    acts = collect_activations(reader, pairs, 32, token_budget=10**6, progress=said.append,
                               keep=Keep(capped, {p.source_index: p for p in pairs}, SETTINGS.max_tokens))
    assert acts.shape == plain.shape
    assert capped.full and sorted(capped.pairs) == sorted(str(p.source_index) for p in pairs[:2])
    assert capped.bytes <= capped.max_bytes
    assert any("byte cap was reached" in p.message for p in said)
    store = ResidualStore.open(folder, model=entry.model, layer=entry.layer, d_model=reader.d_model)
    assert store is not None and len(store) == len(capped.pairs)

    # damaged shards (a store deleted or overwritten under a run): the model reads those pairs
    for shard in folder.glob("*.safetensors"):
        shard.write_bytes(b"not a safetensors file")
    r = index_dataset(dataset, tmp_path / "damaged", sae=entry.name, settings=SETTINGS)
    assert r.n_new == 8 and r.n_from_residuals == 0 and not folder.exists()
    assert assert_same_reads(tmp_path / "damaged", second[0]) > 20

    # a folder kept for another layer (or model) is removed, not used
    empty = ResidualWriter(folder, model=entry.model, layer=entry.layer)
    empty.start()
    empty.finish()
    assert ResidualStore.open(folder, model=entry.model, layer=entry.layer - 1, d_model=reader.d_model) is None
    assert not folder.exists()
