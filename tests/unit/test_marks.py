import gzip
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from core.data.export import ExportError, export_clean
from core.data.marks import Marks
from core.analysis.shifts import Analysis
from core.data.workspace import Workspace
from tests.unit.test_shifts import planted


def test_mark_undo_redo_and_persistence(tmp_path):
    ws, _, _ = planted(tmp_path)
    m = Marks(ws)
    m.mark([0, 2], reason="noise", scope="pairs")
    m.mark([4], reason="goblins", scope="feature 3 top 1", features=[3])
    m.unmark([2])
    assert m.marked_set() == {0, 4}
    assert m.undo().action == "unmark" and m.marked_set() == {0, 2, 4}
    assert m.undo().source_indices == (4,) and m.marked_set() == {0, 2}
    assert m.redo().source_indices == (4,) and m.marked_set() == {0, 2, 4}
    # a restart (a new handle on the same folder) sees the same state, redo stack included
    again = Marks(Workspace(ws.path))
    assert again.marked_set() == {0, 2, 4} and again.can_redo
    info = again.marked[4]
    assert info.reason == "goblins" and info.features == (3,) and info.who and info.when
    again.mark([6])  # a new change clears redo
    assert not again.can_redo and Marks(Workspace(ws.path)).marked_set() == {0, 2, 4, 6}


def test_what_if_equals_a_full_recompute_without_the_marked_pairs(tmp_path):
    ws, _, _ = planted(tmp_path)
    a = Analysis(ws)
    excluded = {0, 2, 4, 10, 60}
    n, mean, effect = a.what_if(excluded)
    keep = [i for i, s in enumerate(a.source_index) if s not in excluded]
    dense = a.delta.toarray()[keep]
    assert n == len(keep) == 55
    np.testing.assert_allclose(mean, dense.mean(0), atol=1e-6)
    sd = dense.std(0, ddof=1)
    np.testing.assert_allclose(effect, np.divide(dense.mean(0), sd, out=np.zeros(16), where=sd > 0), atol=1e-4)


def test_export_without_marks_reproduces_the_source_bytes(small_workspace, tmp_path):
    ws = Workspace(small_workspace)
    src = ws.meta()["dataset"]
    r = export_clean(ws, tmp_path / "clean.jsonl")
    assert r.n_removed == 0 and r.n_kept == r.n_records == 24
    assert (tmp_path / "clean.jsonl").read_bytes() == open(src, "rb").read()


def test_export_drops_marked_records_keeps_the_rest_identical(small_workspace, tmp_path):
    # A private copy: marking leaves undo history, and the session workspace is shared (TUI snapshots show it).
    shutil.copytree(small_workspace, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    src_lines = open(ws.meta()["dataset"], "rb").read().splitlines()
    marks = Marks(ws)
    marks.mark([1, 5], reason="test", scope="pairs", features=[7])
    try:
        r = export_clean(ws, tmp_path / "clean.jsonl.gz")
        with gzip.open(r.out, "rb") as f:
            out_lines = f.read().splitlines()
        assert out_lines == [line for i, line in enumerate(src_lines) if i not in (1, 5)]
        manifest = [json.loads(x) for x in r.manifest.read_text().splitlines()]
        assert [m["source_index"] for m in manifest] == [1, 5] and manifest[0]["features"] == [7]
        with pytest.raises(ExportError, match="exists"):
            export_clean(ws, r.out)
        with pytest.raises(ExportError, match="source"):
            export_clean(ws, ws.meta()["dataset"], overwrite=True)
    finally:
        marks.unmark([1, 5])


@pytest.mark.slow(10)  # 10 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_cli_mark_feature_top_pairs_then_shifts_exclude_them(tmp_path):
    ws, _, _ = planted(tmp_path)

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "core.cli", *args, "-w", str(ws.path), "--json"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    out = cli("mark", "--feature", "5", "--top", "30", "--reason", "refusals")
    assert len(out["marked"]) == 30  # feature 5 is suppressed in exactly 30 pairs
    shifts = cli("shifts", "--top", "5")
    assert shifts["n_excluded"] == 30 and 5 not in [f["feature"] for f in shifts["features"] if f["direction"] == "suppressed"]
    assert cli("marks")["n_marked"] == 30
    assert cli("undo")["n_marked"] == 0


def test_incremental_what_if_matches_cold_recompute_over_a_marking_session(tmp_path):
    ws, _, _ = planted(tmp_path)
    a = Analysis(ws)
    cold = Analysis(ws)
    rng = np.random.default_rng(3)
    marked: set[int] = set()
    for step in range(40):
        s = int(rng.choice(a.source_index))
        marked.symmetric_difference_update({s})  # mark, or unmark if already marked
        n, mean, effect = a.what_if(marked)
        cold._what_if_cache = None
        n2, mean2, effect2 = cold.what_if(marked)
        assert n == n2 == 60 - len(marked)
        np.testing.assert_allclose(mean, mean2, atol=1e-5)
        np.testing.assert_allclose(effect, effect2, atol=1e-4)
