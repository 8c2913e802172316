"""One pilot test per TUI defect of issue 13, each on the real app over the small real workspace."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from core.data.marks import Marks
from core.data.workspace import Workspace
from tests.tui.conftest import HOSTILE, goto, landed, make_app, settle, shifts_loaded, wait_until
from tui.screens.concepts import ConceptFeaturesScreen
from tui.screens.dialogs import ErrorDialog, ExportDialog, HelpScreen, MarkDialog
from tui.screens.pair import PairScreen
from tui.screens.pairs import PairsScreen
from tui.screens.shifts import ShiftsScreen
from tui.widgets.status import StatusLine
from tui.widgets.tables import KeyTable

pytestmark = pytest.mark.anyio


def reasons_on_disk(ws) -> dict[int, str]:
    return {s: m.reason for s, m in Marks(Workspace(ws)).marked.items()}


def status_text(app) -> str:
    return str(app.screen.query_one(StatusLine).render())


async def dialog(pilot, cls=MarkDialog):
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, cls), what=cls.__name__)
    await pilot.pause()
    return pilot.app.screen


async def to_pairs(pilot) -> PairsScreen:
    return await goto(pilot, "enter", PairsScreen, "rows")


async def test_a_reason_for_a_marked_pair_or_a_partly_marked_cluster_is_kept(workspace):
    from tui.screens.compare import CompareScreen
    from tui.screens.grouping import GroupingScreen

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        pairs = await to_pairs(pilot)
        first = pairs.rows[0].source_index
        await pilot.press("m")  # marked without a reason
        await settle(pilot)
        await pilot.press("M")
        box = await dialog(pilot)
        assert "1 marked already" in str(box.query_one("#mark-summary").render())
        await pilot.press(*"dup", "enter")
        await settle(pilot)
        assert reasons_on_disk(workspace) == {first: "dup"}

        await goto(pilot, "6", CompareScreen, "compare")
        clusters = await goto(pilot, "K", GroupingScreen, "clustering")  # every pair is in a k-means cluster
        holder = next(cl for cl in clusters.clustering.clusters if first in cl.source_indices)
        table = clusters.query_one("#clusters", KeyTable)
        keys = [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)]
        table.move_cursor(row=keys.index(str(holder.id)))
        await pilot.pause()
        cluster = app.screen._current()
        assert first in cluster.source_indices  # the cluster is partly marked
        await pilot.press("C")
        await dialog(pilot)
        await pilot.press(*"boilerplate", "enter")
        await settle(pilot)
        assert reasons_on_disk(workspace) == {s: "boilerplate" for s in cluster.source_indices}


async def test_the_status_counts_stay_in_view_after_mark_undo_and_export(workspace, tmp_path):
    from textual.widgets._toast import Toast

    app = make_app(workspace)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await shifts_loaded(pilot)
        pairs = await to_pairs(pilot)
        status = app.screen.query_one(StatusLine)
        await pilot.press("m")
        await settle(pilot)
        assert "kept 23 · marked 1 · total 24" in status_text(app)
        assert "marked 1 pair" in status_text(app)  # what happened, beside the counts
        await pilot.press("u")
        await settle(pilot)
        assert "kept 24 · marked 0 · total 24" in status_text(app) and "undid" in status_text(app)
        await pilot.press("x")
        export = await dialog(pilot, ExportDialog)
        export.query_one("#export-path").value = str(tmp_path / "out.jsonl")
        await pilot.press("enter")
        await wait_until(pilot, lambda: (tmp_path / "out.jsonl").exists(), what="the export")
        await wait_until(pilot, lambda: list(app.screen.query(Toast)), what="the export's notice")
        await pilot.pause()
        toasts = list(app.screen.query(Toast))
        assert all(not t.region.overlaps(status.region) for t in toasts)
        assert "out.jsonl.removed.jsonl" in str(toasts[-1].render())  # where the removed pairs went
        assert "total 24" in status_text(app) and isinstance(app.screen, PairsScreen) and pairs


async def test_bulk_marks_show_how_many_and_which_before_marking(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        f = app.screen._current()
        await pilot.press("t")
        box = await dialog(pilot)
        p = box.preview
        assert len(p.selection) == len(f.top_pairs) and p.n_new == len(f.top_pairs)
        assert p.changes[0].feature == f.feature and p.changes[0].after < p.changes[0].before
        assert [r.source_index for r in p.examples] == list(p.selection.source_indices[:5])
        assert f"Mark {len(f.top_pairs)} pairs" in str(box.query_one(".dialog-title").render())
        await pilot.press("escape")  # nothing is marked
        await settle(pilot)
        assert not reasons_on_disk(workspace) and isinstance(app.screen, ShiftsScreen)

        pairs = await to_pairs(pilot)
        await pilot.press("a")
        box = await dialog(pilot)
        assert len(box.preview.selection) == len(pairs.rows)
        await pilot.press("enter")  # one key accepts
        await settle(pilot)
        assert set(reasons_on_disk(workspace)) == {r.source_index for r in pairs.rows}


async def test_compare_opens_a_cluster_on_enter_with_the_k_groupings_shows(workspace):
    from tui.screens.compare import CompareScreen
    from tui.screens.grouping import GroupingScreen

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await goto(pilot, "6", CompareScreen, "compare")
        k_sae = (await goto(pilot, "K", GroupingScreen, "clustering")).clustering.k
        await pilot.press("e")
        await wait_until(
            pilot, lambda: app.screen.clustering and app.screen.clustering.by == "embedding"
        )
        assert app.screen.clustering.k == k_sae
        compare = await goto(pilot, "escape", CompareScreen, "compare")
        assert compare.compare.k == k_sae
        row = compare.compare.rows[0]
        pairs = await to_pairs(pilot)
        assert len(pairs.rows) == row.size and pairs.cluster.id == row.cluster


async def test_form_fields_leave_on_escape_and_nothing_starts_by_accident(workspace):
    from tui.commands import DELIBERATE, ActionsProvider
    from tui.screens.goblin import GoblinScreen
    from tui.screens.index import IndexScreen
    from tui.screens.models import ModelsScreen

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await goto(pilot, "7", GoblinScreen)
        await settle(pilot)
        assert app.focused is None or not hasattr(app.focused, "value")  # not in a field
        await goto(pilot, "8", ModelsScreen)  # a digit switches screens
        await goto(pilot, "7", GoblinScreen)
        rate = app.screen.query_one("#goblin-rate")
        rate.focus()
        rate.value = ""
        await pilot.press("0", ".", "2")  # digits type into the field
        assert rate.value == "0.2"
        await pilot.press("enter")  # moves on, starts nothing
        await settle(pilot)
        assert not [w for w in app.screen.workers if w.group == "job"]
        assert app.focused is not rate
        rate.focus()
        await pilot.press("escape")  # leaves the field; a digit switches screens again
        assert app.focused is None
        await goto(pilot, "4", ShiftsScreen)
        await goto(pilot, "9", IndexScreen)
        await settle(pilot)
        app.screen.query_one("#index-limit").focus()
        await pilot.press("3", "enter")
        await settle(pilot)
        assert not [w for w in app.screen.workers if w.group == "job"]
        # the palette's own list never offers a heavy job (it is found by typing its name)
        offered = [
            name
            for name, _, _, binding_id in ActionsProvider(app.screen)._commands()
            if binding_id not in DELIBERATE
        ]
        assert "Start / resume" not in offered and "Cancel run" in offered
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press("enter")  # the palette's first item
        await pilot.pause(0.3)
        await settle(pilot)
        assert not [w for w in app.screen.workers if w.group == "job"]


async def test_at_80x24_the_label_the_total_and_every_footer_key_stay_in_view(workspace):
    from textual.widgets import Footer

    Marks(Workspace(workspace)).mark(range(12), reason="half")
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await shifts_loaded(pilot)
        screen = app.screen
        table = screen.query_one("#amplified", KeyTable)
        assert table.column_names[-1] == "label"
        label_x = sum(c.get_render_width(table) for c in list(table.columns.values())[:-1])
        assert label_x + 12 <= table.scrollable_content_region.width  # 12+ label characters show
        assert "total 24" in status_text(app)
        footer = screen.query_one(Footer)
        keys = [k for k in footer.query("FooterKey")]
        assert keys and all(k.region.right <= 80 for k in keys)
        assert max(k.region.right for k in keys) <= footer.region.right
        await pilot.press("question_mark")
        help_screen = await dialog(pilot, HelpScreen)
        help_table = help_screen.query_one(KeyTable)
        assert help_table.virtual_size.width <= help_table.scrollable_content_region.width


async def test_at_120_columns_the_ci_and_stability_columns_are_in_view(workspace):
    Marks(Workspace(workspace)).mark(range(12))
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        for side in ("amplified", "suppressed"):
            table = app.screen.query_one(f"#{side}", KeyTable)
            names = list(table.column_names)
            widths = [c.get_render_width(table) for c in table.columns.values()]
            right_of_stab = sum(widths[: names.index("stab") + 1])
            assert {"95% CI", "stab", "score"} <= set(names)
            assert right_of_stab <= table.scrollable_content_region.width


async def test_opens_ranked_without_the_marked_pairs(workspace):
    Marks(Workspace(workspace)).mark([0, 1, 2])
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        report = app.screen.report
        assert report.n_excluded == 3 and report.n_pairs == 21
        assert "ranked on 21 kept pairs (3 marked left out)" in str(
            app.screen.query_one("#shifts-caption").render()
        )
        assert not app.screen.stale


async def test_the_pairs_header_shows_the_shift_before_and_after(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        pairs = await to_pairs(pilot)
        caption = pairs.query_one("#pairs-caption")
        assert "→" not in str(caption.render())
        await pilot.press("m")
        await settle(pilot)
        t = app.triage
        f = pairs.feature
        assert f"shift {t.before.shift[f]:+#.3g}→{t.after.shift[f]:+#.3g}" in str(caption.render())


async def test_a_digit_returns_to_its_screen_itself(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await to_pairs(pilot)
        await goto(pilot, "enter", PairScreen)
        await pilot.press("5")
        await pilot.pause()
        await goto(pilot, "4", ShiftsScreen)
        assert len(app.screen_stack) == 1


async def test_export_asks_before_replacing_and_offers_the_last_path(workspace, tmp_path):
    out = tmp_path / "clean.jsonl"
    out.write_text("keep me\n")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await pilot.press("x")
        box = await dialog(pilot, ExportDialog)
        box.query_one("#export-path").value = str(out)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ExportDialog)  # not replaced yet
        assert "enter again replaces it" in str(box.query_one("#export-warning").render())
        assert out.read_text() == "keep me\n"
        await pilot.press("escape")
        await pilot.press("x")
        box = await dialog(pilot, ExportDialog)
        box.query_one("#export-path").value = str(tmp_path / "first.jsonl")
        await pilot.press("enter")
        await wait_until(pilot, lambda: (tmp_path / "first.jsonl").exists())
        await settle(pilot)
        await pilot.press("x")
        box = await dialog(pilot, ExportDialog)
        assert box.query_one("#export-path").value == str(tmp_path / "first.jsonl")
        await pilot.press("enter", "enter")  # replacing it takes a second enter
        await settle(pilot)
        assert not isinstance(app.screen, (ExportDialog, ErrorDialog))


async def test_every_column_header_is_explained_on_its_screen(workspace):
    from tui.app import DataDebugApp

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await shifts_loaded(pilot)
        await to_pairs(pilot)
        seen = {"Pair": await goto(pilot, "enter", PairScreen, "pair_view")}
        for key in "123456":
            await pilot.press(key)
            await pilot.pause(0.2)
            await settle(pilot)
            seen[type(app.screen).__name__] = app.screen
        await pilot.press("1")
        seen["ConceptFeatures"] = await goto(pilot, "f", ConceptFeaturesScreen, "features")
        await pilot.press("escape", "6")
        for key, mode in (("escape", None), ("8", "models")):
            await pilot.press(key)
            await settle(pilot)
        seen["Models"] = app.screen
        for screen in seen.values():
            explained = {w for name, _ in screen.LEGEND for w in re.split(r",? ", name)}
            explained |= {name for name, _ in screen.LEGEND}
            for table in screen.query(KeyTable):
                for name in table.column_names:
                    generic = re.sub(r"\d+$", "j", name)
                    assert name in explained or generic in explained, (type(screen).__name__, name)
        assert {"shifts", "clusters", "compare", "models"} <= set(DataDebugApp.MODES)
        await pilot.press("4", "question_mark")
        help_screen = await dialog(pilot, HelpScreen)
        assert help_screen.legend == ShiftsScreen.LEGEND
        assert "score" in dict(help_screen.legend)


def test_numbers_have_one_format():
    from tui.format import before_after, number, signed

    assert [signed(x) for x in (1, 1.44, 0.0344, -12.345, 1234.5)] == [
        "+1.00", "+1.44", "+0.0344", "-12.3", "+1,234",
    ]
    assert number(0) == "0" and number(0.00012) == "1.2e-04"
    assert before_after(1, 1.0) == "+1.00" and before_after(1, 0.5) == "+1.00→+0.500"


# -- terminal safety ------------------------------------------------------------------------------

# What Textual itself sends: colours (CSI ... m) and cursor moves (CSI row;col H). Anything else that
# is a control character came from the data.
DRAWING = re.compile(r"\x1b\[[0-9;]*[mH]")
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_output(app) -> str:
    """What the app would send to a terminal for the current screen (a headless app draws it but
    sends nothing)."""
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor")
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    return update.render_segments(console)


def assert_safe(app, where: str) -> str:
    sent = DRAWING.sub("", terminal_output(app))
    raw = sorted({repr(c) for c in CONTROL.findall(sent)})
    assert not raw, f"{where}: raw control characters reach the terminal: {raw}"
    return sent


async def test_hostile_text_is_shown_never_executed(hostile_workspace):
    from tui.screens.clusters import ClustersScreen
    from tui.screens.compare import CompareScreen
    from tui.screens.grouping import GroupingScreen

    app = make_app(hostile_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)  # names fitted from the hostile text
        assert "data<ESC>[2J<U+202E>.jsonl" in assert_safe(app, "Hypotheses")
        await shifts_loaded(pilot)
        await pilot.press("s")  # a sort that puts a published (hostile) label on top
        await settle(pilot)
        shown = assert_safe(app, "Shifts")
        assert "[red]x[/red]" in shown and "<ESC>" in shown  # markup literal, controls as tags
        assert "data<ESC>[2J<U+202E>.jsonl" in shown  # the dataset's name in the title
        await to_pairs(pilot)
        shown = assert_safe(app, "Pairs")
        assert "[red]x[/red]" in shown
        await goto(pilot, "enter", PairScreen, "pair_view")
        assert_safe(app, "Pair")
        marked = next(iter(app.triage.marked))  # its reason is hostile
        app.push_screen(PairScreen(marked))
        await wait_until(pilot, lambda: isinstance(app.screen, PairScreen) and app.screen.pair_view)
        await settle(pilot)
        assert "MARKED ([red]x[/red]" in assert_safe(app, "a marked pair")
        await pilot.press("M")
        await dialog(pilot)
        assert "[red]x[/red]" in assert_safe(app, "the mark preview")
        await pilot.press("escape")
        await goto(pilot, "5", ClustersScreen, "view")  # names fitted from the hostile prompts
        assert_safe(app, "Clusters")
        await goto(pilot, "6", CompareScreen, "compare")
        await goto(pilot, "K", GroupingScreen, "clustering")
        assert_safe(app, "Groupings")
        app.push_screen(ErrorDialog("reading a pair failed", HOSTILE + "cause"))
        await pilot.pause()
        assert "[red]x[/red]" in assert_safe(app, "an error dialog")
        assert app.triage.reason(marked).startswith(HOSTILE)
