"""KeyTable on its own, in a minimal app (no workspace)."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult

from tui.widgets.tables import KeyTable

pytestmark = pytest.mark.anyio


class OneTable(App):
    def compose(self) -> ComposeResult:
        yield KeyTable("feat", "shift", "label")


def row_text(table: KeyTable, y: int) -> str:
    return "".join(segment.text for segment in table.render_line(y))


async def test_a_cell_that_grows_is_drawn_whole_after_a_frame_drawn_before_the_re_measure():
    """The CI failure of the Shifts snapshot after marking: a frame drawn between a cell's update and
    the table's idle re-measure cached the cell cropped to its old width ("+0.905" for
    "+0.905→-0.290"), and Textual keys that cache by edit count, not width."""
    app = OneTable()
    async with app.run_test(size=(80, 10)) as pilot:
        table = app.query_one(KeyTable)
        table.refill([("73", ("73", "+0.905", "address")), ("317", ("317", "+0.902", "people"))])
        await pilot.pause()
        assert "+0.905" in row_text(table, 1) and "→" not in row_text(table, 1)
        # the same keys: only the changed cells are updated, and they are wider than their column
        table.refill([("73", ("73", "+0.905→-0.290", "address")), ("317", ("317", "+0.902→+0.729", "people"))])
        early = row_text(table, 1)  # a frame before the idle re-measure: the race itself
        assert "+0.905→-0.290" not in early, "the frame came after the re-measure: the race did not happen"
        await pilot.pause()
        await pilot.pause()
        assert "+0.905→-0.290" in row_text(table, 1)
        assert "+0.902→+0.729" in row_text(table, 2)
        assert "shift" in row_text(table, 0)
