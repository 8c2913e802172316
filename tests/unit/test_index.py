import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from core.index import IndexSettings, index_dataset
from core.ingest import read_pairs
from core.workspace import Workspace, WorkspaceError


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


def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, hh_small, tiny_sae):
    ws_path = tmp_path / "ws"
    cmd = [sys.executable, "-m", "core.cli", "index", str(hh_small), "-w", str(ws_path), "--sae", tiny_sae,
           "--max-tokens", "32", "--chunk-pairs", "4", "--batch-tokens", "256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    n = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            n = len(Workspace(ws_path).indexed_source_indices())
        except Exception:
            continue
        if n >= 4:
            break
    assert proc.poll() is None, "indexing finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = Workspace(ws_path).indexed_source_indices()
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
