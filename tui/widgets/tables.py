"""DataTable with vim keys, keeping the cursor on the same row key across refills, and refilling in
place (only the cells that changed) when the rows are the same: a mark changes the before -> after
numbers of every row, and rebuilding the rows would re-measure every cell on each keypress."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist


SEPARATOR = "--"  # a row key starting with this is a divider between parts of a list: the cursor steps over it


class KeyTable(DataTable):
    """A row-cursor table that also moves with j/k and g/G, and refills without losing its place.
    Rows whose key starts with SEPARATOR divide the list (e.g. the established findings from the
    rest): the cursor never rests on one."""

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
        self._keys: list[str] = []  # the row keys in the order shown
        self._filled_width = 0  # the table's width at the last whole refill (a narrower one re-measures)
        self._lost_to_top = False  # the next refill puts a cursor whose row is gone on the first row

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
            self._keys = []
            self.clear(columns=True)
            self._column_names = names
            self.add_columns(*names)

    def refill(self, rows: Iterable[tuple[str, Iterable]]) -> None:
        """Replace every row with (key, cells) pairs, keeping the cursor on the same key when it survives.

        When the keys are the ones shown, in the same order, and the table is as wide as at the last
        whole refill, only the cells that changed are updated (columns only ever widen then: a table
        made narrower, e.g. the terminal resized from 120 to 80 columns, is filled whole again so
        that its columns shrink to the cells cut for the new width).
        """
        rows = [(key, tuple(cells)) for key, cells in rows]
        if not self.columns:
            self.add_columns(*self._column_names)
        width = self.size.width
        if rows and [key for key, _ in rows] == self._keys and width == self._filled_width:
            self._update_changed(rows)
            return
        current = self.current_key() or self._kept_key
        self._kept_key = None
        old_row = 0 if self._lost_to_top else self.cursor_row
        self._lost_to_top = False
        self.clear()
        for column in self.columns.values():  # DataTable's clear keeps each column's widest cell
            if column.auto_width:
                column.content_width = column.label.cell_len
        keys = []
        for key, cells in rows:
            self.add_row(*cells, key=key)
            keys.append(key)
        self._keys = keys
        self._filled_width = width
        if current in keys:
            self.move_cursor(row=keys.index(current), animate=False)
        elif keys:
            self.move_cursor(row=min(max(old_row, 0), len(keys) - 1), animate=False)
        self._step_off(+1)

    def lose_to_top(self) -> None:
        """The next refill shows another list (a filter changed): if the row under the cursor is not in
        it, the cursor goes to its first row, not to the same position in a list it does not belong to."""
        self._lost_to_top = True

    def _step_off(self, direction: int) -> None:
        """Move the cursor off a divider row: on in `direction`, else back."""
        row = self.cursor_row
        if not (0 <= row < len(self._keys)) or not self._keys[row].startswith(SEPARATOR):
            return
        for target in (row + direction, row - direction):
            if 0 <= target < len(self._keys) and not self._keys[target].startswith(SEPARATOR):
                self.move_cursor(row=target, animate=False)
                return

    def action_cursor_down(self) -> None:
        super().action_cursor_down()
        self._step_off(+1)

    def action_cursor_up(self) -> None:
        super().action_cursor_up()
        self._step_off(-1)

    def action_scroll_top(self) -> None:
        super().action_scroll_top()
        self._step_off(+1)

    # DataTable keys its rendered cells on a counter that every update_cell bumps, so a mark (which
    # changes the three before -> after columns) would re-render every visible cell; these keep the
    # rendered cells by their content, and only the changed ones render again.
    _cells: LRUCache | None = None

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ):
        if row_index < 0 or column_index < 0:  # the header and row labels: DataTable's own cache
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        if self._cells is None:
            self._cells = LRUCache(4096)
        cell = self.coordinate_to_cell_key(Coordinate(row_index, column_index))
        key = (
            cell,
            _content(self.get_cell(*cell)),
            row_index,
            base_style,
            width,
            cursor,
            hover,
            self.has_focus,
            self.show_cursor,
        )
        lines = self._cells.get(key)
        if lines is None:
            lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
            self._cells[key] = lines
        return lines

    def _clear_caches(self) -> None:
        super()._clear_caches()
        if self._cells is not None:
            self._cells.clear()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        if self._cells is not None:
            self._cells.clear()

    def _update_changed(self, rows: list[tuple[str, tuple]]) -> None:
        columns = list(self.columns.items())
        for key, cells in rows:
            for (column_key, column), new in zip(columns, cells):
                if not _same(self.get_cell(key, column_key), new):
                    width = new.cell_len if isinstance(new, Text) else cell_len(str(new))
                    # Widening is cheap; narrowing would re-measure the whole column: it stays wide.
                    grow = width > column.content_width
                    self.update_cell(key, column_key, new, update_width=grow)

    async def _on_idle(self, event) -> None:
        # Textual's DataTable caches rendered cells by its update count, not by width: a frame drawn
        # between update_cell(update_width=True) and the idle re-measure keeps the cell cropped to
        # its old column width until the next edit (a marked pair's "before→after" showed as
        # "before"). When the re-measure changes a width, drop those caches and draw again.
        widths = [c.content_width for c in self.columns.values()]
        await super()._on_idle(event)
        if [c.content_width for c in self.columns.values()] != widths:
            self._clear_caches()
            self.refresh()

    def clear(self, columns: bool = False) -> KeyTable:
        self._keys = []
        return super().clear(columns)

    def current_key(self) -> str | None:
        """The key of the row under the cursor, None when the table is empty."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except CellDoesNotExist:  # the cursor sits past the rows while a refill is in flight
            return None


def _same(old, new) -> bool:
    """Whether a cell shows the same thing (Text equality ignores the base style)."""
    if isinstance(old, Text) and isinstance(new, Text):
        return old.plain == new.plain and old.style == new.style and old.spans == new.spans
    return type(old) is type(new) and old == new


def _content(cell) -> object:
    """A hashable key of what a cell shows."""
    if isinstance(cell, Text):
        return (cell.plain, str(cell.style), tuple(cell.spans))
    return cell if isinstance(cell, str) else repr(cell)
