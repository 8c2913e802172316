"""Pilot tests of the real app on a real small workspace (SmolLM2 + a tiny trained SAE, 24 HH pairs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tui.conftest import make_app, settle, shifts_loaded, wait_until
from tui.screens.dialogs import ErrorDialog, ExportDialog, HelpScreen, MarkDialog
from tui.screens.pair import PairScreen
from tui.screens.pairs import PairsScreen
from tui.screens.shifts import ShiftsScreen
from tui.widgets.status import StatusLine
from tui.widgets.tables import KeyTable

pytestmark = pytest.mark.anyio


def marks_on_disk(ws) -> set[int]:
    from core.data.marks import Marks
    from core.data.workspace import Workspace

    return Marks(Workspace(ws)).marked_set()


def status_text(app) -> str:
    return str(app.screen.query_one(StatusLine).render())


async def test_opens_an_indexed_workspace_on_shifts(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        screen = app.screen
        assert isinstance(screen, ShiftsScreen)
        amplified = screen.query_one("#amplified", KeyTable)
        suppressed = screen.query_one("#suppressed", KeyTable)
        assert amplified.row_count > 0 and suppressed.row_count > 0
        assert app.info.name == "hh" and app.info.n_pairs == 24
        assert "kept 24 · marked 0 · total 24" in status_text(app)


async def test_feature_to_pairs_to_pair_then_mark_undo_redo(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        feature = int(app.screen.query_one("#amplified", KeyTable).current_key())

        await pilot.press("enter")  # the pairs that drive the feature
        await wait_until(
            pilot, lambda: isinstance(app.screen, PairsScreen) and app.screen.rows, what="pairs"
        )
        pairs_screen = app.screen
        assert pairs_screen.feature == feature
        deltas = [r.delta for r in pairs_screen.rows]
        assert deltas == sorted(deltas, reverse=True) and deltas[0] > 0
        first = pairs_screen.rows[0].source_index

        await pilot.press("enter")  # the pair itself
        await wait_until(
            pilot, lambda: isinstance(app.screen, PairScreen) and app.screen.pair_view, what="pair"
        )
        pair = app.screen
        assert pair.source_index == first
        assert pair._selected_feature() == feature  # the drilled feature is the one highlighted
        view = pair.pair_view
        assert view.chosen and view.rejected and view.top_deltas[0].feature == feature

        before = app.triage
        await pilot.press("m")
        await settle(pilot)
        assert marks_on_disk(workspace) == {first}
        assert app.triage.marked == {first}
        assert "kept 23 · marked 1 · total 24" in status_text(app)
        assert "MARKED" in str(pair.query_one("#screen-title").render())
        # what-if: the feature's predicted shift without the pair it was driven hardest by
        assert app.triage.after.n_kept == 23
        assert app.triage.after.shift[feature] < before.before.shift[feature]

        await pilot.press("u")
        await settle(pilot)
        assert marks_on_disk(workspace) == set()
        assert app.triage.after.shift[feature] == pytest.approx(before.before.shift[feature])

        await pilot.press("ctrl+r")
        await settle(pilot)
        assert marks_on_disk(workspace) == {first}

        await pilot.press("n")  # the next pair of the list
        await wait_until(
            pilot, lambda: pair.pair_view and pair.source_index == pairs_screen.rows[1].source_index
        )
        await pilot.press("p")
        await wait_until(pilot, lambda: pair.pair_view and pair.source_index == first)

        await pilot.press("escape")  # back to the list, which shows the mark
        await pilot.pause()
        assert isinstance(app.screen, PairsScreen)
        table = app.screen.query_one("#pairs", KeyTable)
        assert str(table.get_row(str(first))[1]) == "✗"


async def test_mark_top_pairs_shows_before_and_after_then_rerank(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        screen = app.screen
        table = screen.query_one("#amplified", KeyTable)
        feature = int(table.current_key())
        top = {p.source_index for p in screen._current().top_pairs}
        await pilot.press("t")  # a preview to confirm
        await wait_until(pilot, lambda: isinstance(app.screen, MarkDialog), what="the preview")
        await pilot.press("y")
        await settle(pilot)
        assert marks_on_disk(workspace) == top
        row = table.get_row(str(feature))
        assert str(row[1]) == "…"  # its q: re-ranking is needed, the old q is not shown as current
        shift_cell = str(row[2])
        assert "→" in shift_cell  # before -> after
        before, after = (float(x) for x in shift_cell.split("→"))
        assert after < before
        assert "r re-ranks" in str(screen.query_one("#shifts-caption").render())

        await pilot.press("r")
        await settle(pilot)
        assert screen.report.n_pairs == 24 - len(top) and screen.report.n_excluded == len(top)
        assert "kept pairs" in str(screen.query_one("#shifts-caption").render())

        await pilot.press("t")  # the next top pairs of the (re-ranked) feature under the cursor
        await wait_until(pilot, lambda: isinstance(app.screen, MarkDialog), what="the preview")
        await pilot.press("y")
        await settle(pilot)
        await pilot.press("u")
        await settle(pilot)
        assert marks_on_disk(workspace) == top


async def test_filter_sort_and_side_switch(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        screen = app.screen
        amplified = screen.query_one("#amplified", KeyTable)
        n = amplified.row_count
        feature = screen.report.amplified[0].feature
        await pilot.press("slash", *str(feature), "enter")
        assert amplified.row_count == 1 and amplified.current_key() == str(feature)
        assert app.focused is amplified
        await pilot.press("escape")
        assert amplified.row_count == n
        await pilot.press("s")
        assert screen.sort_key == "shift"
        keys = [amplified.coordinate_to_cell_key((r, 0)).row_key.value for r in range(n)]
        shifts = [abs(app.triage.after.shift[int(k)]) for k in keys]
        assert shifts == sorted(shifts, reverse=True)
        await pilot.press("l")
        assert app.focused is screen.query_one("#suppressed", KeyTable)
        await pilot.press("j", "k", "h")
        assert app.focused is amplified


async def test_export_writes_the_kept_records_and_a_manifest(workspace, tmp_path):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        removed = app.screen.report.amplified[0].top_pairs[0].source_index
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: isinstance(app.screen, PairsScreen) and app.screen.rows, what="pairs"
        )
        await pilot.press("M")  # mark with a reason
        await wait_until(pilot, lambda: isinstance(app.screen, MarkDialog), what="the dialog")
        await pilot.press(*"boilerplate", "enter")
        await settle(pilot)
        assert marks_on_disk(workspace) == {removed}

        out = tmp_path / "clean.jsonl"
        await pilot.press("x")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ExportDialog)
        assert (dialog.n_kept, dialog.n_marked, dialog.n_total) == (23, 1, 24)
        box = dialog.query_one("#export-path")
        box.value = str(out)
        await pilot.press("enter")
        await settle(pilot)
        await wait_until(pilot, lambda: out.exists(), what="the export")

    source = json.loads(json.dumps(app.session.dataset_path.read_text().splitlines()))
    kept = out.read_text().splitlines()
    assert len(kept) == len(source) - 1
    assert source[removed] not in kept
    assert kept == [line for i, line in enumerate(source) if i != removed]
    manifest = [
        json.loads(x) for x in out.with_name(out.name + ".removed.jsonl").read_text().splitlines()
    ]
    assert [(m["source_index"], m["reason"]) for m in manifest] == [(removed, "boilerplate")]


async def test_a_failed_job_shows_its_cause_in_a_dialog(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        source = app.session.dataset_path
        await pilot.press("x")
        await pilot.pause()
        # exporting over the source is refused (by core, after the overwrite is confirmed)
        app.screen.query_one("#export-path").value = str(source)
        await pilot.press("enter")  # it exists: a second enter is asked for
        await pilot.pause()
        assert isinstance(app.screen, ExportDialog)
        await pilot.press("enter")
        await settle(pilot)
        await wait_until(
            pilot, lambda: isinstance(app.screen, ErrorDialog), what="the error dialog"
        )
        assert "refusing to overwrite the source dataset" in app.screen.cause
        assert "exporting failed" == app.screen.title_text
        await pilot.press("escape")
        assert isinstance(app.screen, ShiftsScreen)


async def test_help_lists_every_binding_with_its_id(workspace):
    from tui.app import DataDebugApp
    from tui.commands import bindings_of

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        ids = {row[3] for row in app.screen.rows}
        screens = [
            DataDebugApp,
            ShiftsScreen,
            PairsScreen,
            PairScreen,
            KeyTable,
            *DataDebugApp.MODES.values(),
        ]
        every = {b.id for cls in screens for b in bindings_of(cls)}
        assert None not in every  # every binding can be remapped
        assert every <= ids
        await pilot.press("escape")
        assert isinstance(app.screen, ShiftsScreen)


async def test_palette_offers_the_screen_and_app_actions(workspace):
    from tui.commands import ActionsProvider

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        names = {name for name, _, _, _ in ActionsProvider(app.screen)._commands()}
        assert {
            "Mark top",
            "Filter",
            "Sort",
            "Re-rank",
            "Undo",
            "Redo",
            "Export",
            "Clusters screen",
            "Goblin test screen",
            "Models screen",
            "Index screen",
            "Keys",
        } <= names
        # run one through the palette itself
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"sort")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ShiftsScreen) and app.screen.sort_key == "shift"


async def test_user_keymap_remaps_bindings_by_id(workspace, tmp_path):
    from tui.keymap import load_keymap

    path = tmp_path / "keymap.toml"
    path.write_text('"triage.undo" = "z"\n[keymap]\n"shifts.mark_top" = ["b"]\n"bad" = 3\n')
    keymap, problems = load_keymap(path)
    assert keymap == {"triage.undo": "z", "shifts.mark_top": "b"}
    assert len(problems) == 1 and "'bad'" in problems[0]

    app = make_app(workspace, keymap=keymap)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await pilot.press("b")
        await wait_until(pilot, lambda: isinstance(app.screen, MarkDialog), what="the preview")
        await pilot.press("y")
        await settle(pilot)
        assert marks_on_disk(workspace)
        await pilot.press("z")
        await settle(pilot)
        assert marks_on_disk(workspace) == set()


async def test_groupings_drill_into_a_cluster_and_mark_it(workspace):
    from tui.screens.compare import CompareScreen
    from tui.screens.grouping import GroupingScreen

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await pilot.press("6", "K")  # the k-means groupings are under Compare
        await wait_until(
            pilot,
            lambda: isinstance(app.screen, GroupingScreen) and app.screen.clustering,
            what="clusters",
        )
        clusters = app.screen.clustering
        assert sum(c.size for c in clusters.clusters) == 24
        first = clusters.clusters[0]
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, MarkDialog), what="the preview")
        assert len(app.screen.preview.selection) == first.size
        await pilot.press("y")
        await settle(pilot)
        assert marks_on_disk(workspace) == set(first.source_indices)
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: isinstance(app.screen, PairsScreen) and app.screen.rows,
            what="cluster pairs",
        )
        assert {r.source_index for r in app.screen.rows} == set(first.source_indices)
        await pilot.press("a")  # all listed are marked: unmark them
        await wait_until(pilot, lambda: isinstance(app.screen, MarkDialog), what="the preview")
        assert app.screen.unmark
        await pilot.press("y")
        await settle(pilot)
        assert marks_on_disk(workspace) == set()
        await pilot.press("escape", "e")
        await wait_until(
            pilot,
            lambda: app.screen.clustering and app.screen.clustering.by == "embedding",
            what="embedding clusters",
        )

        await pilot.press("escape")  # back to Compare
        await wait_until(
            pilot,
            lambda: isinstance(app.screen, CompareScreen) and app.screen.compare,
            what="compare",
        )
        c = app.screen.compare
        assert -1 <= c.ari <= 1 and 0 <= c.nmi <= 1
        assert sum(r.size for r in c.rows) == 24


async def test_models_screen_lists_the_catalogue(workspace):
    from tui.screens.models import ModelsScreen

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await pilot.press("8")
        await wait_until(
            pilot, lambda: isinstance(app.screen, ModelsScreen) and app.screen.models, what="models"
        )
        names = {r.name for r in app.screen.models.rows}
        assert {"smollm2-135m", "tiny-test"} <= names
        tiny = next(r for r in app.screen.models.rows if r.name == "tiny-test")
        assert tiny.ready and tiny.size_bytes > 0
        # verify the tiny SAE from the keyboard: move to its row, press v
        table = app.screen.query_one("#models", KeyTable)
        table.move_cursor(
            row=list(table.rows).index(next(k for k in table.rows if k.value == "sae:tiny-test"))
        )
        await pilot.press("v")
        await settle(pilot)
        await wait_until(
            pilot,
            lambda: "SAE tiny-test: ok" in str(app.screen.query_one(".job-status").render()),
            what="the verify job",
        )


async def test_opening_another_workspace_drops_the_old_drill_downs(workspace, tmp_path):
    import shutil

    from tui.screens.models import ModelsScreen

    other = tmp_path / "other" / "hh2"
    shutil.copytree(workspace, other)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: isinstance(app.screen, PairsScreen) and app.screen.rows, what="pairs"
        )
        await pilot.press("8")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelsScreen), what="models")
        app.open_workspace(other)
        await wait_until(pilot, lambda: app.info.name == "hh2", what="the other workspace")
        await shifts_loaded(pilot)
        assert len(app.screen_stack) == 1 and app.screen.report.n_pairs == 24
        assert app.services.workspace_path == other


async def test_goblin_screen_checks_its_inputs(workspace):
    from tui.screens.goblin import GoblinScreen

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await pilot.press("7")
        await wait_until(pilot, lambda: isinstance(app.screen, GoblinScreen), what="goblin")
        await settle(pilot)
        rate = app.screen.query_one("#goblin-rate")
        rate.value = "2"
        await pilot.press("ctrl+g")
        await settle(pilot)
        assert not [w for w in app.workers if w.group == "goblin"]  # refused: a rate is at most 1
        assert app.screen.query_one("#goblin-sae").value == "tiny-test"


async def test_missing_workspace_opens_the_index_screen(tmp_path):
    from tui.screens.index import IndexScreen

    app = make_app(tmp_path / "nothing-here")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(
            pilot, lambda: isinstance(app.screen, IndexScreen), what="the Index screen"
        )
        await settle(pilot)
        assert app.info is None
        assert app.screen.query_one("#index-data").value == ""
        await pilot.press("ctrl+s")  # nothing to index yet: a warning, no worker
        await settle(pilot)
        assert isinstance(app.screen, IndexScreen)


async def test_index_a_dataset_then_land_on_hypotheses(tmp_path, hh_small, tiny_sae):
    """The real pipeline from the TUI: autostart with --data, progress, then Hypotheses on the new
    workspace (its structure fitted on first open), and Shifts one key away."""
    from tui.messages import JobProgressed
    from tui.screens.hypotheses import HypothesesScreen

    seen = []
    app = make_app(tmp_path / "new", data=hh_small, sae=tiny_sae, limit=4, autostart_index=True)
    async with app.run_test(size=(100, 30), message_hook=lambda m: seen.append(m)) as pilot:
        await wait_until(
            pilot,
            lambda: isinstance(app.screen, ErrorDialog)
            or (isinstance(app.screen, HypothesesScreen) and app.screen.report is not None),
            timeout=240,
            what="indexing, then Hypotheses",
        )
        assert isinstance(app.screen, HypothesesScreen), getattr(app.screen, "cause", "")
        assert app.info.n_pairs == 4 and app.info.sae == tiny_sae
        await pilot.press("4")
        await wait_until(
            pilot, lambda: isinstance(app.screen, ShiftsScreen) and app.screen.report is not None,
            what="Shifts",
        )
    stages = {m.progress.stage for m in seen if isinstance(m, JobProgressed)}
    assert "index" in stages


def test_what_if_matches_a_full_report_without_the_marked_pairs(workspace):
    """The instant before -> after numbers equal the full analysis rerun without the marked pairs."""
    from core.analysis.shifts import Analysis
    from core.views import Selection
    from core.data.workspace import Workspace
    from tui.services import Services

    services = Services(workspace)
    services.open()
    state, _ = services.apply(services.take_ticket(), "mark", Selection((0, 3, 5), "pairs"))
    report = Analysis(Workspace(workspace)).report(top=5, excluded={0, 3, 5})
    for f in report.features:
        assert state.after.shift[f.feature] == pytest.approx(f.shift, rel=1e-5, abs=1e-7)
    assert state.after.n_kept == 21 and np.all(state.before.n_firing >= state.after.n_firing)
