"""What every screen shares: a title line, the status line, the footer, and ways to ask for marks."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label

from tui.messages import MarkRequested
from tui.services import MarkRequest, TriageState, WorkspaceInfo
from tui.widgets.status import StatusLine


class DataScreen(Screen):
    """A screen with a title line on top and the status line + key footer at the bottom.

    Subclasses yield their body from `compose_body` and react to `info_changed` / `triage_changed`,
    which also run once on mount with the app's current values.
    """

    SCREEN_TITLE = ""
    AUTO_FOCUS = "KeyTable"

    def compose(self) -> ComposeResult:
        yield Label(self.SCREEN_TITLE, id="screen-title")
        with Vertical(id="body"):
            yield from self.compose_body()
        yield StatusLine()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.watch(self.app, "info", self._info_watch, init=True)
        self.watch(self.app, "triage", self._triage_watch, init=True)

    def _info_watch(self, info: WorkspaceInfo | None) -> None:
        self.query_one(StatusLine).info = info
        self.info_changed(info)

    def _triage_watch(self, triage: TriageState | None) -> None:
        self.query_one(StatusLine).triage = triage
        self.triage_changed(triage)

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        """The open workspace changed (None: none open yet)."""

    def triage_changed(self, triage: TriageState | None) -> None:
        """Marks changed; redraw marked flags and before -> after numbers."""

    def set_title(self, text: str) -> None:
        self.query_one("#screen-title", Label).update(text)

    # -- triage helpers -------------------------------------------------------------------------

    @property
    def triage(self) -> TriageState | None:
        return self.app.triage

    def is_marked(self, source_index: int) -> bool:
        return self.triage is not None and source_index in self.triage.marked

    def toggle_marks(
        self,
        source_indices: Iterable[int],
        scope: str,
        features: tuple[int, ...] = (),
        reason: str | None = None,
    ) -> None:
        """Mark the pairs, or unmark them when every one is marked already."""
        indices = tuple(int(s) for s in source_indices)
        if not indices or self.triage is None:
            self.notify("nothing to mark here", severity="warning", timeout=2)
            return
        all_marked = all(s in self.triage.marked for s in indices)
        action = "unmark" if all_marked and reason is None else "mark"
        self.post_message(
            MarkRequested(MarkRequest(action, indices, reason or "", scope, features))
        )

    def mark_with_reason(
        self, source_indices: Iterable[int], scope: str, features: tuple[int, ...] = ()
    ) -> None:
        """Ask for a reason, then mark the pairs with it."""
        from tui.screens.dialogs import ReasonDialog

        indices = tuple(int(s) for s in source_indices)
        if not indices:
            self.notify("nothing to mark here", severity="warning", timeout=2)
            return

        def done(reason: str | None) -> None:
            if reason is not None:
                self.post_message(
                    MarkRequested(MarkRequest("mark", indices, reason, scope, features))
                )

        what = f"{len(indices)} pair{'s' * (len(indices) != 1)} ({scope})"
        self.app.push_screen(ReasonDialog(what), done)


def snippet(text: str, width: int = 48) -> str:
    """One line of at most `width` characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def signed(x: float) -> str:
    """A number with its sign and three significant digits."""
    return f"{x:+.3g}"


def before_after(before: float, after: float, fmt=signed) -> str:
    """'before' when unchanged, else 'before→after'."""
    a, b = fmt(before), fmt(after)
    return a if a == b else f"{a}→{b}"
