"""`index --ray`: the pairs sharded over Ray actors on a local 2-CPU cluster give the single-process
workspace pair for pair, and neither a worker killed mid-run nor a killed driver loses or duplicates
a pair. Real components: the embedded model, the tiny sae-lens SAE, LanceDB, a local Ray cluster."""

from __future__ import annotations

import os
import signal

import numpy as np
import pyarrow as pa
import pytest

from core.index.build import IndexResult, IndexSettings, index_dataset
from core.data.ingest import read_pairs
from core.data.workspace import PAIRS_SCHEMA, Workspace
from tests.conftest import HH, index_then_kill, short_pairs, write_jsonl_subset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 10
SETTINGS = IndexSettings(max_tokens=32, batch_tokens=256, chunk_pairs=2)  # several batches, small chunks
ARGS = ["--max-tokens", "32", "--batch-tokens", "256", "--chunk-pairs", "2"]
ACTOR = "MapBatches(PairIndexer)"  # in the process title of each Ray Data actor


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl_subset(HH, short_pairs(HH, N, max_chars=400, skip=100), tmp_path_factory.mktemp("raydata") / "d.jsonl")


@pytest.fixture(scope="module")
def single(tmp_path_factory, data, tiny_sae):
    ws = tmp_path_factory.mktemp("single") / "ws"
    index_dataset(data, ws, sae=tiny_sae, settings=SETTINGS)
    return ws


def actor_pids() -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::") and ACTOR in cmd:
                pids.append(int(d))
    return pids


COLUMNS = [c for c in PAIRS_SCHEMA.names if c not in ("line",)]


def assert_same_workspace(a, b) -> dict:
    """Every pair once in each, the same texts, tokens and features; values within float rounding.
    Returns how far apart the values are."""
    ta, tb = Workspace(a).pairs_columns(COLUMNS), Workspace(b).pairs_columns(COLUMNS)
    ia, ib = ta["source_index"].to_pylist(), tb["source_index"].to_pylist()
    assert ia == ib and len(set(ia)) == len(ia)
    worst = {"values": 0.0, "embeddings": 0.0}
    for ra, rb in zip(ta.to_pylist(), tb.to_pylist()):
        for col in COLUMNS:
            x, y = ra[col], rb[col]
            if col.endswith(("_feat", "_tokens", "_pos")) or col in ("source_index", "prompt", "prompt_text", "chosen",
                                                                     "rejected", "n_prompt_tokens"):
                assert x == y, (ra["source_index"], col)
            else:
                d = float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max(initial=0))
                key = "embeddings" if col.startswith("emb_") else "values"
                worst[key] = max(worst[key], d)
                assert np.allclose(x, y, rtol=1e-4, atol=1e-5), (ra["source_index"], col)
    fa, fb = Workspace(a).feature_info(), Workspace(b).feature_info()
    assert fa == fb and len(fa) > 0
    return worst


@pytest.mark.slow(37)  # 37 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_ray_matches_single_process_with_a_worker_killed_mid_run(cluster, single, data, tiny_sae, tmp_path):
    ws = tmp_path / "ws"
    killed, seen = [], set()

    def progress(p):
        seen.update(actor_pids())
        if p.stage == "index" and p.done and not killed:
            assert p.done < N, "every pair was saved before a worker could be killed"
            pids = actor_pids()
            assert len(pids) == 2, pids  # one model per CPU worker
            os.kill(pids[0], signal.SIGKILL)
            killed.append((pids[0], p.done))

    r = index_dataset(data, ws, sae=tiny_sae, settings=SETTINGS, ray="auto", progress=progress)
    assert killed, "no worker was killed"
    assert r.n_new == N and r.n_pairs == N and r.tokens > 0
    assert sorted(Workspace(ws).indexed_source_indices().tolist()) == [p.source_index for p in read_pairs(data).pairs]
    worst = assert_same_workspace(single, ws)
    # the same batches, padded the same way, on one thread each: the very same numbers
    assert worst["values"] == 0.0, worst
    print(f"ray vs single process: worker {killed[0][0]} killed at {killed[0][1]}/{N} pairs saved; "
          f"max |difference| {worst}")
    meta, ref = Workspace(ws).meta(), Workspace(single).meta()
    for key in ("sae", "sae_sha256", "d_sae", "d_model", "max_tokens", "dataset_sha256"):
        assert meta[key] == ref[key], key


@pytest.mark.slow(40)  # 40 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_killed_driver_resumes_without_loss_or_duplicate(cluster, single, data, tiny_sae, tmp_path):
    ws = tmp_path / "ws"
    partial = index_then_kill([str(data), "-w", str(ws), "--sae", tiny_sae, *ARGS, "--ray", cluster], ws, 2)
    assert 2 <= len(partial) < N and len(set(partial)) == len(partial)
    r = index_dataset(data, ws, sae=tiny_sae, settings=SETTINGS, ray=cluster)
    assert r.n_new == N - len(partial)
    assert_same_workspace(single, ws)


class _Blocks:
    """Stands in for a Ray Dataset whose retried task delivered its rows twice."""

    def __init__(self, blocks):
        self.blocks = blocks

    def iter_batches(self, **_):
        yield from self.blocks


def test_rows_delivered_twice_are_written_once(single, tmp_path):
    from core.index.distributed import PairCount, _write_stream

    rows = Workspace(single).pairs_columns(PAIRS_SCHEMA.names)
    first, rest = rows.slice(0, 3), rows.slice(3)
    blocks = [first, first.slice(1, 1), rest, pa.concat_tables([rest.slice(0, 2), first])]
    ws = Workspace(tmp_path / "ws", create=True)
    counts = {s: PairCount(10, 1, False) for s in rows["source_index"].to_pylist()}
    result = IndexResult(str(ws.path), 0, 0, 0)
    _write_stream(ws, _Blocks(blocks), counts, len(rows), 0, 4, result, lambda _: None, None)
    got = ws.indexed_source_indices().tolist()
    assert sorted(got) == sorted(rows["source_index"].to_pylist()) and result.n_new == len(rows)
    assert result.tokens == 10 * len(rows) and result.n_replies_cut == len(rows)
