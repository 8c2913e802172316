"""gpu_validate.py's tiny mode end to end on this CPU (prepare + run, the GPU's code path at toy
size): about 10 minutes on a busy 2-core machine, so it is run on demand, not in the default suite:

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/bench/test_gpu_validate_tiny.py
"""

from __future__ import annotations

import argparse
import json

import pytest

from tests.unit.test_gpu_validate import bench_module


# gpu_validate's prepare reads its SFT prompts from ../shared/data/ultrafeedback-1k.jsonl, as the GPU run does
@pytest.mark.shared_data
def test_tiny_mode_runs_every_phase_without_errors(tmp_path, tiny_sae):
    from core.model.catalog import load_catalog
    from core.model.store import sae_dir

    gv = bench_module()
    results = gv.tiny(argparse.Namespace(work=tmp_path, data=None, sae=sae_dir(load_catalog().sae(tiny_sae))))
    assert results["errors"] == [], results["errors"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["predict"]["check_vs_cpu"]["fire_r"] > 0.99  # the torch-only path = the CPU index
    seed = saved["r2"]["seeds"]["0"]
    for which in ("heldout", "unrelated", "heldout_greedy"):
        assert seed[which]["features"]["fit"]["n_features"] >= 0
    assert set(saved["goblin"]["models"]) == {"base", "sft", "poisoned", "cleaned", "shape", "clean", "mask", "steer"}
    for m in saved["goblin"]["models"].values():
        assert 0 <= m["goblin"]["rate"] <= 1 and 0 <= m["preference"]["accuracy"] <= 1
    for part in ("a", "b"):  # each half of the inputs fits one carry of the device tool
        size = sum(f.stat().st_size for f in (tmp_path / "inputs" / part).rglob("*") if f.is_file())
        assert size < 60 * 2**20
