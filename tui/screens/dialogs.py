"""Modal dialogs: an error with its cause, yes/no, a reason for a mark, the export confirmation, help."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from tui.widgets.tables import KeyTable


class ErrorDialog(ModalScreen[None]):
    """What failed and why, in words; Enter or Escape closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter", "dismiss", "Close", id="dialog.close"),
    ]

    def __init__(self, title: str, cause: str) -> None:
        super().__init__()
        self.title_text = title
        self.cause = cause

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -error"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.cause, classes="dialog-body", markup=False)
            yield Label("enter / esc: close", classes="dialog-hint")


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question: y or Enter says yes, n or Escape no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y,enter", "answer(True)", "Yes", id="dialog.yes"),
        Binding("n,escape", "answer(False)", "No", id="dialog.no"),
    ]

    def __init__(self, title: str, question: str) -> None:
        super().__init__()
        self.title_text = title
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.question, classes="dialog-body", markup=False)
            yield Label("y / enter: yes    n / esc: no", classes="dialog-hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ReasonDialog(ModalScreen[str | None]):
    """Asks why pairs are being marked; Enter marks (an empty reason is fine), Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel")
    ]

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Mark {self.what}", classes="dialog-title")
            yield Input(placeholder="reason (optional), e.g. 'refusal boilerplate'", id="reason")
            yield Label("enter: mark    esc: cancel", classes="dialog-hint")

    @on(Input.Submitted, "#reason")
    def _submit(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class ExportDialog(ModalScreen[tuple[Path, bool] | None]):
    """Shows what the export will write and where; Enter writes, Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel")
    ]

    def __init__(self, n_kept: int, n_marked: int, n_total: int, out: Path) -> None:
        super().__init__()
        self.n_kept, self.n_marked, self.n_total = n_kept, n_marked, n_total
        self.out = out

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export the cleaned dataset", classes="dialog-title")
            yield Static(
                f"keep {self.n_kept} of {self.n_total} indexed pairs, remove {self.n_marked} marked\n"
                + (
                    "(records that were not indexed are kept; only marked pairs are removed)"
                    if self.n_marked
                    else "(nothing is marked: the export is a copy of the source)"
                ),
                classes="dialog-body",
            )
            yield Label("write to:")
            yield Input(str(self.out), id="export-path")
            yield Static("", id="export-warning", classes="dialog-warning")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Export", variant="primary", id="export-go")
                yield Button("Cancel", id="export-cancel")
            yield Label("enter: export    esc: cancel", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#export-path", Input).focus()
        self._check(str(self.out))

    @on(Input.Changed, "#export-path")
    def _changed(self, event: Input.Changed) -> None:
        self._check(event.value)

    def _check(self, value: str) -> None:
        p = Path(value).expanduser()
        warn = ""
        if p.exists():
            warn = "exists: it will be replaced"
        self.query_one("#export-warning", Static).update(warn)

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#export-go")
    def _go(self) -> None:
        value = self.query_one("#export-path", Input).value.strip()
        if not value:
            return
        p = Path(value).expanduser()
        self.dismiss((p, p.exists()))

    @on(Button.Pressed, "#export-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """Every binding of the app, with its key (after the user's keymap) and its id for remapping."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "Close", id="dialog.close")
    ]

    def __init__(self, rows: list[tuple[str, str, str, str]], keymap_file: str) -> None:
        super().__init__()
        self.rows = rows
        self.keymap_file = keymap_file

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -help"):
            yield Label("Keys", classes="dialog-title")
            yield KeyTable("key", "does", "id", "where", id="help-table")
            yield Label(f"remap by id in {self.keymap_file}    esc: close", classes="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one(KeyTable)
        table.refill(
            (f"{i}", (keys, does, binding_id, where))
            for i, (where, keys, does, binding_id) in enumerate(self.rows)
        )
        table.focus()
