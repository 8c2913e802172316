"""Pilot tests for issue 23 on the real app over the small real workspace (tiny real SAE) and the
planted one: one truth for u from the list to the pair, evidence in the detail pane, the kind filter,
and the drive's defects, one test each."""

from __future__ import annotations

import pytest

from core.session import Session
from core.views import HypothesisKey
from tests.tui.conftest import goto, landed, make_app, settle, shifts_loaded, wait_until
from tui.format import signed
from tui.screens.clusters import ClustersScreen
from tui.screens.dialogs import PlanDialog
from tui.screens.hypotheses import HypothesesScreen
from tui.screens.pair import PairScreen
from tui.screens.pairs import PairsScreen
from tui.widgets.status import StatusLine
from tui.widgets.tables import SEPARATOR, KeyTable

pytestmark = pytest.mark.anyio


def detail_text(screen) -> str:
    return str(screen.query_one("#hypothesis-detail").render())


def cells(table: KeyTable, row: int) -> list[str]:
    return [str(c) for c in table.get_row_at(row)]


async def first_row(pilot):
    """The first hypothesis under the cursor (below the divider when nothing is established)."""
    screen = pilot.app.screen
    if screen.current() is None:
        await pilot.press("j")
        await settle(pilot)
    return screen.current()


async def driving_pairs(pilot) -> PairsScreen:
    """Land, and open the first hypothesis' driving pairs."""
    await landed(pilot)
    await first_row(pilot)
    return await goto(pilot, "enter", PairsScreen, "rows")


def fits(table: KeyTable) -> bool:
    """Every column of `table` in view: the columns' widths add up to no more than the table's."""
    return sum(c.get_render_width(table) for c in table.columns.values()) <= table.content_region.width


async def test_the_top_rows_pairs_show_the_same_u_in_list_detail_and_pair_view(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        h = await first_row(pilot)
        assert h is app.screen.report.hypotheses[0] and h.driving
        shown = detail_text(app.screen)
        for p in h.driving:  # the detail pane
            assert f"#{p.source_index}({signed(p.u)})" in shown
        pairs = await goto(pilot, "enter", PairsScreen, "rows")  # the list, through the TUI's own path
        assert [r.delta for r in pairs.rows] == pytest.approx([p.u for p in h.driving])
        table = pairs.query_one("#pairs", KeyTable)
        for i, row in enumerate(pairs.rows[:4]):
            assert cells(table, i)[2] == signed(row.delta)
            table.move_cursor(row=i, animate=False)
            pair = await goto(pilot, "enter", PairScreen, "pair_view")  # the pair view
            c = pair.pair_view.concept
            assert pair.source_index == row.source_index
            assert c.u == pytest.approx(row.delta) and c.chosen - c.rejected == pytest.approx(row.delta, abs=1e-6)
            caption = str(pair.query_one("#deltas-caption").render())
            assert f"u {signed(row.delta)}" in caption
            # the number columns are activations: the concept's row leaves them empty (shares in its label)
            concept_row = cells(pair.query_one("#deltas", KeyTable), 0)
            assert concept_row[1:4] == ["", "", ""] and f"u {signed(c.u)}" in concept_row[4]
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.screen is pairs)


async def test_the_detail_pane_shows_the_concepts_strongest_snippets(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        screen = app.screen
        h = await first_row(pilot)
        await wait_until(pilot, lambda: "evidence: reading" not in detail_text(screen), what="the evidence")
        want = Session(workspace).evidence(h)
        assert want
        shown = detail_text(screen)
        for s in want:
            assert f"{s.side:>8} #{s.source_index} u {signed(s.u)} " in shown and s.span in shown
        assert {s.side for s in want} <= {"chosen", "rejected"}
        await pilot.press("j")  # the next row's own evidence
        await wait_until(pilot, lambda: "evidence: reading" not in detail_text(screen))
        nxt = screen.current()
        assert all(f"#{s.source_index} " in detail_text(screen) for s in Session(workspace).evidence(nxt))


async def test_v_cycles_the_kind_shown_and_no_t_or_d_where_every_pair_agrees(planted_workspace):
    workspace, _ = planted_workspace
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        screen = app.screen
        assert {h.kind for h in screen.report.hypotheses} == {"cluster", "prompt", "concept"}  # mixed
        table = screen.query_one("#hypotheses", KeyTable)
        for kind in ("cluster", "prompt", "concept", None):
            await pilot.press("j")  # off the first row: a filter must not keep a position in another list
            await settle(pilot)
            before = table.current_key()
            await pilot.press("v")
            await wait_until(pilot, lambda: screen.kind == kind and screen.report is not None
                             and all(kind is None or h.kind == kind for h in screen.report.hypotheses))
            await settle(pilot)
            rows = [k for k in table._keys if not k.startswith(SEPARATOR)]
            assert table.current_key() == (before if before in rows else rows[0]), (kind, before)
            assert detail_text(screen).startswith(screen.current().sentence[:40])
            want = Session(workspace).hypotheses(top=50, kind=kind)
            assert [h.concept for h in screen.report.hypotheses] == [h.concept for h in want.hypotheses]
            assert screen.report.hypotheses
            caption = str(screen.query_one("#hypotheses-caption").render())
            assert (f"{kind} rows only" in caption) == (kind is not None)
        # every pair agrees (u has no spread): no t = 0 and no d "—" shown
        table = screen.query_one("#hypotheses", KeyTable)
        flat = [h for h in screen.report.hypotheses if h.d is None]
        assert flat, "the planted workspace has a hypothesis whose u has no spread"
        table.move_cursor(row=table._keys.index(str(HypothesisKey.of(flat[0]))), animate=False)
        await settle(pilot)
        assert "—" not in "".join(cells(table, table.cursor_row))
        shown = detail_text(screen)
        assert screen.current().d is None and " t +" not in shown and " t 0" not in shown and "d —" not in shown


async def test_driving_pairs_header_shows_before_and_after_the_marks(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        pairs = await driving_pairs(pilot)
        await wait_until(pilot, lambda: pairs.change is not None)
        caption = str(pairs.query_one("#pairs-caption").render())
        assert f"rank #{pairs.change.rank[0]}" in caption and "(before → after the marks)" in caption
        assert f"Δ {signed(pairs.change.delta[0])} " in caption
        await pilot.press("m")  # mark the first driving pair: its Δ moves
        await wait_until(pilot, lambda: pairs.change is not None and pairs.change.delta[0] != pairs.change.delta[1])
        await settle(pilot)
        c = pairs.change
        caption = str(pairs.query_one("#pairs-caption").render())
        assert f"Δ {signed(c.delta[0])}→{signed(c.delta[1])}" in caption


async def test_escape_closes_the_palettes_keys_panel_and_nothing_else(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        pairs = await driving_pairs(pilot)
        app.action_show_help_panel()  # what the palette's "Keys" command runs
        await pilot.pause()
        assert pairs.query("HelpPanel")
        await pilot.press("escape")
        await pilot.pause()
        assert not pairs.query("HelpPanel") and app.screen is pairs  # closed, the screen stays
        await pilot.press("escape")  # with no panel, Escape is the screen's again
        await wait_until(pilot, lambda: isinstance(app.screen, HypothesesScreen))


async def test_shifts_goes_back_to_the_top_after_a_filter(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 9)) as pilot:  # short: the small workspace ranks 5 features
        await shifts_loaded(pilot)
        screen = app.screen
        sides = {s: screen.query_one(f"#{s}", KeyTable).row_count for s in ("amplified", "suppressed")}
        if sides[screen.side] < max(sides.values()):  # the side with more rows than fit
            await pilot.press("l" if screen.side == "amplified" else "h")
            await pilot.pause()
        table = screen.query_one(f"#{screen.side}", KeyTable)
        assert table.row_count > table.scrollable_content_region.height
        table.move_cursor(row=table.row_count - 1, animate=False)
        await pilot.pause(0.2)
        assert table.scroll_y > 0 and table.cursor_row > 0  # scrolled down
        await pilot.press("slash", "1")
        await settle(pilot)
        assert table.row_count > 0
        assert table.scroll_y == 0 and table.cursor_row == 0


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_the_status_line_keeps_counts_and_workspace_in_view(workspace, size):
    app = make_app(workspace)
    async with app.run_test(size=size) as pilot:
        await landed(pilot)
        await first_row(pilot)
        await pilot.press("m")  # mark the top hypothesis' drivers: a long note
        await wait_until(pilot, lambda: not isinstance(app.screen, HypothesesScreen))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.triage is not None and app.triage.n_marked > 0)
        await settle(pilot)
        status = app.screen.query_one(StatusLine)
        text = status.render().plain
        assert app.note and text.startswith("kept") and "total 24" in text and "  │  hh" in text
        assert len(text) <= status.content_region.width, (len(text), text)  # nothing cut off the end


async def test_at_80x24_pair_lists_keep_both_replies_and_names_end_with_an_ellipsis(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await landed(pilot)
        hyp = app.screen.query_one("#hypotheses", KeyTable)
        assert fits(hyp)
        await first_row(pilot)
        pairs = await goto(pilot, "enter", PairsScreen, "rows")
        await settle(pilot)
        table = pairs.query_one("#pairs", KeyTable)
        assert "rejected" in [str(c.label) for c in table.columns.values()] and fits(table)
        cut = [cells(table, i)[4] for i, r in enumerate(pairs.rows) if len(" ".join(r.chosen.split())) > 30]
        assert cut and all(c.endswith("…") for c in cut)


async def test_the_plan_dialog_command_has_full_paths_leaves_the_marked_out_and_fits_80x24(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await landed(pilot)
        await first_row(pilot)
        await pilot.press("i")
        box = await goto(pilot, (), PlanDialog)
        await settle(pilot)
        now = "".join(str(box.query_one("#plan-now").render()).split())  # wrapped at 80 columns
        ws = str(workspace.resolve())
        data = str(Session(workspace).dataset_path.resolve())
        assert f"train-dpo{data}--outDIR--exclude-marked{ws}--plan{ws}" in now
        hint = box.query_one("#plan-hint")  # how to save, in view
        assert "ctrl+s: save" in str(hint.render())
        assert hint.region.height == 1 and 0 <= hint.region.y < 24 and hint.region.right <= 80


async def test_tables_shrink_when_the_terminal_narrows_from_120_to_80(workspace):
    """Started at 120 columns and resized to 80, Hypotheses and Clusters lay out for 80 (their columns
    kept their 120-column widths: the concept column mostly blank, "where" cut to "wherev")."""
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        screens = [(app.screen, "#hypotheses")]
        screens.append((await goto(pilot, "5", ClustersScreen, "view"), "#clusters"))
        await pilot.press("1")
        await settle(pilot)
        first = {}
        for width in (120, 80, 120):
            await pilot.resize_terminal(width, 30)
            for screen, table_id in screens:
                if app.screen is not screen:
                    await pilot.press("1" if table_id == "#hypotheses" else "5")
                await wait_until(pilot, lambda: app.screen is screen and screen.size.width == width)
                await settle(pilot)
                table = screen.query_one(table_id, KeyTable)
                used = sum(c.get_render_width(table) for c in table.columns.values())
                assert used <= table.scrollable_content_region.width, (table_id, width, used)
                assert first.setdefault((table_id, width), used) == used  # back at 120: as wide as at first


async def test_an_enter_while_clustering_opens_the_cluster_when_done(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        session = app.session
        session._lock.acquire()  # reading the clusters waits on the session's lock: the Enter comes first
        try:
            screen = await goto(pilot, "5", ClustersScreen)
            await pilot.pause(0.3)
            assert screen.view is None  # still loading: the race this test is about
            await pilot.press("enter")
            assert screen.view is None and screen.open_when_ready
        finally:
            session._lock.release()
        pairs = await goto(pilot, (), PairsScreen, "rows")
        assert pairs.cluster is screen.view.clusters[0]
        assert {r.source_index for r in pairs.rows} == set(screen.view.clusters[0].source_indices)


@pytest.mark.slow(14)  # 14 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
async def test_models_lists_trained_variants_and_t_trains_for_the_workspaces_dataset(
        workspace, config_dir, tmp_path, monkeypatch, one_torch_thread):
    from core import locations
    from core.data.workspace import file_sha256
    from tests.conftest import catalog_entries
    from tests.unit.test_dataset_sae import RECIPE
    from tui.screens.models import ModelsScreen

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(locations.models_dir(), target_is_directory=True)
    monkeypatch.setenv("DATADEBUG_CACHE_DIR", str(cache))
    data = Session(workspace).dataset_path
    name = f"tiny-recipe@{file_sha256(data)[:8]}"
    with catalog_entries(config_dir, RECIPE):
        app = make_app(workspace)
        async with app.run_test(size=(120, 40)) as pilot:
            await landed(pilot)
            screen = await goto(pilot, "8", ModelsScreen, "models")
            keys = [r.name for r in screen.models.rows]
            assert "tiny-recipe" in keys and name not in keys
            table = screen.query_one("#models", KeyTable)
            table.move_cursor(row=keys.index("tiny-recipe"), animate=False)
            await pilot.press("t")
            await wait_until(pilot, lambda: screen.models is not None and name in [r.name for r in screen.models.rows],
                             timeout=600, what=f"{name} trained and listed")
            row = next(r for r in screen.models.rows if r.name == name)
            assert row.ready and "FVU" in row.detail and data.name in row.detail

