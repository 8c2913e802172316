"""DataTable with vim keys, keeping the cursor on the same row key across refills."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist


class KeyTable(DataTable):
    """A row-cursor table that also moves with j/k and g/G, and refills without losing its place."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open", id="nav.open"),
        Binding("j", "cursor_down", "Down", show=False, id="nav.down"),
        Binding("k", "cursor_up", "Up", show=False, id="nav.up"),
        Binding("g", "scroll_top", "First row", show=False, id="nav.top"),
        Binding("G", "scroll_bottom", "Last row", show=False, id="nav.bottom"),
    ]

    DEFAULT_CSS = """
    KeyTable { height: 1fr; }
    """

    def __init__(self, *columns: str, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._column_names = columns

    def on_mount(self) -> None:
        if not self.columns:
            self.add_columns(*self._column_names)

    def watch_loading(self, loading: bool) -> None:
        # The footer can miss the table's keys while it is covered by the loading indicator.
        self.call_after_refresh(self.refresh_bindings)

    def refill(self, rows: Iterable[tuple[str, Iterable]]) -> None:
        """Replace every row with (key, cells) pairs, keeping the cursor on the same key when it survives."""
        if not self.columns:
            self.add_columns(*self._column_names)
        current = self.current_key()
        old_row = self.cursor_row
        self.clear()
        keys = []
        for key, cells in rows:
            self.add_row(*cells, key=key)
            keys.append(key)
        if current in keys:
            self.move_cursor(row=keys.index(current), animate=False)
        elif keys:
            self.move_cursor(row=min(max(old_row, 0), len(keys) - 1), animate=False)

    def current_key(self) -> str | None:
        """The key of the row under the cursor, None when the table is empty."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except CellDoesNotExist:  # the cursor sits past the rows while a refill is in flight
            return None
