"""Clusters (5) shows the data clusters the hypotheses read, with their names, refitting nothing; the
k-means groupings (SAE vs MiniLM embedding) are under Compare (6, then K). Pilot tests on the real app
over the planted workspace (15 data clusters, an established goblin hypothesis) and the small one."""

from __future__ import annotations

import pytest

from tests.tui.conftest import goto, landed, make_app, settle, shifts_loaded, wait_until
from tests.tui.test_app import marks_on_disk
from tui.screens.clusters import ClustersScreen
from tui.screens.compare import CompareScreen
from tui.screens.dialogs import MarkDialog
from tui.screens.grouping import GroupingScreen
from tui.screens.pairs import PairsScreen
from tui.widgets.tables import KeyTable

pytestmark = pytest.mark.anyio


def structure_files(ws) -> dict[str, int]:
    """The workspace's cached structure and names, each with its modification time (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in (ws / "structure").iterdir()}


def table_rows(screen) -> list[list[str]]:
    table = screen.query_one("#clusters", KeyTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def test_clusters_are_the_hypotheses_data_clusters_with_names_and_open_and_mark(planted_workspace):
    ws, _ = planted_workspace
    before = structure_files(ws)
    app = make_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        screen = await goto(pilot, "5", ClustersScreen, "view")
        view = screen.view
        # the hypotheses' own cluster rows, all of them, ranked as the landing view ranks them
        report = app.session.hypotheses(top=10_000)
        rows = [h for h in report.hypotheses if h.kind == "cluster"]
        assert len(view.clusters) == report.k == 15 and rows
        by_id = {c.id: c for c in view.clusters}
        for h in rows:  # the same ids, names and sizes (nothing is marked: n is the whole group)
            c = by_id[h.group]
            assert c.name == h.group_name != "" and c.size == h.n
        for c in view.clusters:  # each cluster's rows are its best rows of that ranking, in its order
            mine = [h for h in rows if h.group == c.id][: len(c.hypotheses)]
            assert list(c.hypotheses) == mine and len(c.hypotheses) == min(3, len([h for h in rows if h.group == c.id]))
        assert sum(c.size for c in view.clusters) + len(view.silent) == report.n_pairs == 400
        assert all(c.source_indices for c in view.clusters)
        assert len(set().union(*(c.source_indices for c in view.clusters)) | set(view.silent)) == 400
        # the table: one row per cluster, largest first, with its name and its best hypothesis' concept
        shown = table_rows(screen)
        assert [r[0] for r in shown] == [str(c.id) for c in view.clusters]
        assert [int(r[1]) for r in shown] == [c.size for c in view.clusters]
        assert [c.size for c in view.clusters] == sorted((c.size for c in view.clusters), reverse=True)
        for r, c in zip(shown, view.clusters):
            assert r[5] == c.name and c.hypotheses[0].concept_name in r[6]
        goblin = next(c for c in view.clusters if c.n_established)  # the planted behaviour's cluster
        assert "goblin" in goblin.hypotheses[0].concept_name and goblin.hypotheses[0].rank == 1
        assert structure_files(ws) == before  # nothing was fitted again: the cached structure was read

        # Enter lists the cluster's pairs, each with its u on the best hypothesis' concept
        c = view.clusters[0]
        pairs = await goto(pilot, "enter", PairsScreen, "rows")
        assert [r.source_index for r in pairs.rows] == list(c.source_indices)
        assert [r.delta for r in pairs.rows] == app.session.pair_u(c.hypotheses[0].concept, c.source_indices)
        assert f"Data cluster {c.id} «{c.name}»" in str(app.screen.query_one("#screen-title").render())
        await pilot.press("escape")
        await settle(pilot)

        # c marks the cluster's pairs after the preview; the ✗ column counts them
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, MarkDialog), what="the preview")
        assert set(app.screen.preview.selection.source_indices) == set(c.source_indices)
        assert app.screen.preview.selection.scope == f"cluster data:{c.id}"
        await pilot.press("y")
        await settle(pilot)
        assert marks_on_disk(ws) == set(c.source_indices)
        await wait_until(pilot, lambda: screen.view.n_excluded == c.size, what="the re-ranking")
        await settle(pilot)
        assert table_rows(screen)[0][3] == str(c.size)
        assert not screen.view.clusters[0].hypotheses  # its pairs all left out: nothing ranked in it
    assert structure_files(ws) == before


async def test_the_kmeans_groupings_are_under_compare_with_nothing_lost(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        compare = await goto(pilot, "6", CompareScreen, "compare")
        k = compare.compare.k
        grouping = await goto(pilot, "K", GroupingScreen, "clustering")
        assert grouping.clustering.by == "sae" and grouping.clustering.k == k
        assert sum(c.size for c in grouping.clustering.clusters) == 24
        caption = str(grouping.query_one("#clusters-caption").render())
        assert f"k = {k} sae clusters" in caption
        await pilot.press("e")
        await wait_until(pilot, lambda: grouping.clustering and grouping.clustering.by == "embedding",
                         what="embedding clusters")
        assert grouping.clustering.k == k
        first = grouping.clustering.clusters[0]
        pairs = await goto(pilot, "enter", PairsScreen, "rows")
        assert {r.source_index for r in pairs.rows} == set(first.source_indices)
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is grouping, what="the groupings again")
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is compare, what="Compare again")
