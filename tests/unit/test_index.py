import json
import subprocess
import sys

import numpy as np
import pytest

from core.index.build import IndexSettings, index_dataset
from core.data.ingest import read_pairs
from core.data.workspace import Workspace, WorkspaceError
from tests.conftest import index_then_kill


def test_workspace_holds_every_pair_with_features_tokens_and_embeddings(small_workspace, hh_small, tiny_sae):
    ws = Workspace(small_workspace)
    meta = ws.meta()
    assert meta["sae"] == tiny_sae and meta["layer"] == 15 and meta["d_sae"] == 512
    assert len(meta["dataset_sha256"]) == 64
    assert meta["schema_version"] == 2 and len(meta["sae_sha256"]) == 64
    t = ws.pairs_columns(["source_index", "chosen", "chosen_tokens", "chosen_feat", "chosen_mean", "chosen_max",
                          "chosen_freq", "chosen_tok_feat", "chosen_tok_pos", "emb_chosen", "rejected_feat",
                          "prompt_feat", "prompt_freq", "prompt_max"])
    src = read_pairs(hh_small).pairs
    assert t["source_index"].to_pylist() == [p.source_index for p in src]
    assert t["chosen"].to_pylist() == [p.chosen for p in src]
    for row in t.to_pylist():
        assert row["chosen_feat"] and len(row["chosen_feat"]) == len(row["chosen_mean"]) == len(row["chosen_max"])
        assert all(m <= x + 1e-6 for m, x in zip(row["chosen_mean"], row["chosen_max"]))
        assert max(row["chosen_tok_pos"]) < len(row["chosen_tokens"]) <= 64
        # every firing feature has stored token firings (its strongest positions), none other
        assert set(row["chosen_tok_feat"]) == set(row["chosen_feat"])
        n_tok = len(row["chosen_tokens"])
        assert all(1 / n_tok - 1e-6 <= f <= 1 + 1e-6 for f in row["chosen_freq"])
        # mean = freq x (mean activation where it fires) <= freq x max
        assert all(m <= f * x + 1e-5 for m, f, x in zip(row["chosen_mean"], row["chosen_freq"], row["chosen_max"]))
        assert row["prompt_feat"] and len(row["prompt_feat"]) == len(row["prompt_freq"]) == len(row["prompt_max"])
        assert abs(np.linalg.norm(row["emb_chosen"]) - 1) < 1e-3
    # feature labels: promoted tokens for every feature
    assert len(ws.feature_info()) == 512


def test_reindexing_is_idempotent_and_other_settings_are_refused(small_workspace, hh_small, tiny_sae):
    r = index_dataset(hh_small, small_workspace, sae=tiny_sae, settings=IndexSettings(max_tokens=64))
    assert r.n_new == 0 and r.n_pairs == 24
    with pytest.raises(WorkspaceError, match="max_tokens"):
        index_dataset(hh_small, small_workspace, sae=tiny_sae, settings=IndexSettings(max_tokens=32))


@pytest.mark.slow(16)  # 16 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, hh_small, tiny_sae):
    ws_path = tmp_path / "ws"
    partial = np.array(index_then_kill([str(hh_small), "-w", str(ws_path), "--sae", tiny_sae, "--max-tokens", "32",
                                        "--chunk-pairs", "4", "--batch-tokens", "256"], ws_path, 4))
    assert 4 <= len(partial) < 24
    r = index_dataset(hh_small, ws_path, sae=tiny_sae, settings=IndexSettings(max_tokens=32, chunk_pairs=4, batch_tokens=256))
    assert r.n_new == 24 - len(set(partial.tolist()))
    final = Workspace(ws_path).indexed_source_indices()
    assert sorted(final.tolist()) == [p.source_index for p in read_pairs(hh_small).pairs]  # none lost, none twice


def test_bad_input_names_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go away"}) + "\n"
        + json.dumps({"prompt": "hi", "chosen": "", "rejected": "no"}) + "\n"
    )
    r = subprocess.run([sys.executable, "-m", "core.cli", "index", str(bad), "-w", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "bad.jsonl:2" in r.stderr and "chosen" in r.stderr
    assert not (tmp_path / "w" / "pairs.lance").exists()


# -- summaries on the device equal the reference ------------------------------------------------------


def _jumprelu_sae(folder, acts, d_sae=1024, firing=0.02):
    """A real sae-lens JumpReLU SAE (random directions) whose thresholds let ~2% of features fire."""
    import sae_lens as sl
    import torch

    g = torch.Generator().manual_seed(0)
    sae = sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=acts.shape[1], d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(acts.shape[1], d_sae, generator=g) / acts.norm(dim=1).mean())
        sae.b_dec.copy_(acts.mean(0))
        pre = (acts - sae.b_dec) @ sae.W_enc
        sae.threshold.copy_(pre.quantile(1 - firing, dim=0).clamp(min=0.01))
    sae.save_model(folder)
    return folder


def test_batched_device_summaries_equal_the_reference(tiny_sae, tmp_path):
    import dataclasses

    import torch

    from core.model.catalog import load_catalog
    from core.model.lm import ResidualReader
    from core.index.readout import read_batch
    from core.model.sae import load_sae
    from core.model.store import sae_dir
    from core.index.summary import summarise_prompt, summarise_reply
    from tests.conftest import HH, short_pairs

    reader = ResidualReader.from_entry(load_catalog().model(None))
    toks = [reader.tokenize(p, 24) for p in short_pairs(HH, 5)]
    toks[1] = dataclasses.replace(toks[1], chosen_ids=[])  # an empty reply
    toks[2] = dataclasses.replace(toks[2], chosen_ids=[], rejected_ids=[])  # two
    toks[3] = dataclasses.replace(toks[3], prompt_dropped=7)  # a cut prompt: no template opening to skip
    assert len({len(t.chosen_ids) for t in toks}) > 2 and len({len(t.prompt_ids) for t in toks}) > 1  # padding
    reads = reader.read(toks, with_prompt=True)
    skip = reader.template_prefix_len()
    prompts = [p[(skip if t.prompt_dropped == 0 else 0):] for t, (_, _, p) in zip(toks, reads)]
    flat = torch.cat([x for c, r, _ in reads for x in (c, r)] + prompts)  # read_batch's token order
    jump = load_sae(_jumprelu_sae(tmp_path / "jump", flat))
    for sae in (load_sae(sae_dir(load_catalog().saes[tiny_sae])), jump):
        dense = sae.encode(flat)  # (tokens, d_sae): the same single matmul read_batch's sparse encode does
        spans = [len(x) for c, r, _ in reads for x in (c, r)] + [len(p) for p in prompts]
        parts = list(torch.split(dense, spans))
        rows = read_batch(reader, sae, toks, dataclasses.replace(IndexSettings(), positions_per_feature=3))
        assert [r["source_index"] for r in rows] == [t.source_index for t in toks]
        for i, (t, row) in enumerate(zip(toks, rows)):
            for side, part in (("chosen", parts[2 * i]), ("rejected", parts[2 * i + 1])):
                want, got = summarise_reply(part, 3), row[side]
                for key in ("feat", "freq", "tok_feat", "tok_pos", "tok_val"):
                    assert np.array_equal(got[key], want[key]) and got[key].dtype == want[key].dtype, (side, key)
                for key in ("mean", "max"):
                    assert np.allclose(got[key], want[key], rtol=1e-5, atol=1e-6), (side, key)
            want = summarise_prompt(parts[2 * len(toks) + i])
            assert np.array_equal(row["prompt"]["feat"], want["feat"])
            assert np.array_equal(row["prompt"]["freq"], want["freq"])
            assert np.allclose(row["prompt"]["max"], want["max"])
        assert len(rows[1]["chosen"]["feat"]) == 0 and len(rows[2]["rejected"]["tok_feat"]) == 0
        assert len(rows[0]["chosen"]["tok_feat"]) > len(rows[0]["chosen"]["feat"])  # several positions each


# -- whole replies, cut counts, feature-table crash safety ----------------------------------------------


def _tokenizer():
    from transformers import AutoTokenizer

    from core.model.catalog import load_catalog
    from core.model.store import model_dir

    return AutoTokenizer.from_pretrained(model_dir(load_catalog().model(None)))


def test_replies_are_read_whole_by_default(tmp_path, tiny_sae):
    from tests.conftest import UF, short_pairs, write_jsonl_subset

    long = next(p for p in read_pairs(UF, skip_invalid=True).pairs
                if 1400 < len(p.chosen) < 2500 and len(p.prompt_text) + len(p.rejected) < 1200)
    data = write_jsonl_subset(UF, [*short_pairs(UF, 3), long], tmp_path / "uf.jsonl")
    ws_path = tmp_path / "ws"
    r = index_dataset(data, ws_path, sae=tiny_sae, settings=IndexSettings(chunk_pairs=2))
    assert r.n_new == 4 and r.max_tokens == 8192 and r.n_replies_cut == r.n_prompts_cut == 0
    ws = Workspace(ws_path)
    assert ws.meta()["max_tokens"] == ws.meta()["context_tokens"] == 8192  # SmolLM2's context
    tok = _tokenizer()
    t = ws.pairs_columns(["chosen", "chosen_tokens", "rejected", "rejected_tokens"])
    for row in t.to_pylist():
        for side in ("chosen", "rejected"):
            assert len(row[f"{side}_tokens"]) == len(tok(row[side], add_special_tokens=False)["input_ids"])
    assert max(len(x) for x in t["chosen_tokens"].to_pylist()) > 256  # past the old default cap
    with pytest.raises(WorkspaceError, match=r"max_tokens=8192.*--max-tokens 8192"):
        index_dataset(data, ws_path, sae=tiny_sae, settings=IndexSettings(max_tokens=16))


@pytest.mark.slow(11)  # 11 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_cli_warns_with_the_counts_of_cut_replies_and_prompts(tmp_path, hh_small, tiny_sae):
    r = subprocess.run(
        [sys.executable, "-m", "core.cli", "index", str(hh_small), "-w", str(tmp_path / "w"), "--sae", tiny_sae,
         "--max-tokens", "8", "--limit", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    tok = _tokenizer()
    pairs = read_pairs(hh_small, limit=3).pairs
    n_cut = sum(len(tok(x, add_special_tokens=False)["input_ids"]) > 8 for p in pairs for x in (p.chosen, p.rejected))
    n_prompts = sum(
        len(tok.apply_chat_template(list(p.prompt), add_generation_prompt=True, return_dict=True)["input_ids"]) > 16
        for p in pairs
    )
    assert n_cut > 0 and n_prompts > 0
    assert f"warning: {n_cut} replies cut at 8 tokens" in r.stdout
    assert f"{n_prompts} prompts read without their start" in r.stdout


def test_a_feature_table_killed_mid_write_is_unseen_then_rewritten(tmp_path, small_workspace, hh_small, tiny_sae):
    import shutil

    from core.index.stages import features_complete

    ws_path = tmp_path / "ws"
    shutil.copytree(small_workspace, ws_path)
    ws = Workspace(ws_path)
    assert features_complete(ws, 512)
    ws.db.create_table("features", ws.table("features").to_arrow().slice(0, 100), mode="overwrite")
    assert not features_complete(ws, 512)  # a committed table of the wrong size is rewritten too
    # What kill -9 during the table's creation leaves: its files without a committed version.
    shutil.rmtree(ws_path / "features.lance")
    ws.db.create_table("features", Workspace(small_workspace).table("features").to_arrow())
    shutil.rmtree(ws_path / "features.lance" / "_versions")
    ws = Workspace(ws_path)
    assert not ws.has("features") and ws.feature_info() == {}  # readers see no table, not a broken one
    r = index_dataset(hh_small, ws_path, sae=tiny_sae, settings=IndexSettings(max_tokens=64))
    assert r.n_new == 0 and r.n_pairs == 24  # no pair left to do, and still:
    assert len(Workspace(ws_path).feature_info()) == 512
