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

    def __init__(self, *columns: str, opens: bool = True, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.opens = opens  # Enter opens the row (else the footer does not offer it)
        self._column_names = tuple(columns)
        self._kept_key: str | None = None  # the row under the cursor before the columns changed

    def on_mount(self) -> None:
        if not self.columns:
            self.add_columns(*self._column_names)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "select_cursor" and not self.opens:
            return False
        return True

    def watch_loading(self, loading: bool) -> None:
        # The footer can miss the table's keys while it is covered by the loading indicator.
        self.call_after_refresh(self.refresh_bindings)

    @property
    def column_names(self) -> tuple[str, ...]:
        return self._column_names

    def set_columns(self, names: Iterable[str]) -> None:
        """Show these columns (rows are dropped when they change: refill after)."""
        names = tuple(names)
        if names != self._column_names or not self.columns:
            self._kept_key = self.current_key()
            self.clear(columns=True)
            self._column_names = names
            self.add_columns(*names)

    def refill(self, rows: Iterable[tuple[str, Iterable]]) -> None:
        """Replace every row with (key, cells) pairs, keeping the cursor on the same key when it survives."""
        if not self.columns:
            self.add_columns(*self._column_names)
        current = self.current_key() or self._kept_key
        self._kept_key = None
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
