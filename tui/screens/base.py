"""What every screen shares: a title line, the status line, the footer, a legend, ways to ask for marks,
and failures of its workers passed to the app's one failure handler."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Label
from textual.worker import Worker, WorkerState

from core.session import Session
from core.views import HypothesisKey, Selection, TriageState, WorkspaceInfo
from tui.messages import MarkRequested, WorkerFailed
from tui.widgets.job import JobPanel
from tui.widgets.status import StatusLine
from tui.widgets.tables import SEPARATOR

DIVIDER = SEPARATOR + "not-established"  # the row between the established and the rest


class DataScreen(Screen):
    """A screen with a title line on top and the status line + key footer at the bottom.

    Subclasses yield their body from `compose_body` and react to `info_changed` / `triage_changed`,
    which also run once on mount with the app's current values. `LEGEND` explains the screen's
    column headers and numbers; `?` shows it above the keys.
    """

    SCREEN_TITLE = ""
    AUTO_FOCUS = "KeyTable"
    LEGEND: ClassVar[tuple[tuple[str, str], ...]] = ()
    _triage_stale = False  # marks changed while the screen was out of view

    def compose(self) -> ComposeResult:
        yield Label(self.SCREEN_TITLE, id="screen-title")
        with Vertical(id="body"):
            yield from self.compose_body()
        yield StatusLine()
        yield Footer(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.watch(self.app, "info", self._info_watch, init=True)
        self.watch(self.app, "triage", self._triage_watch, init=True)
        self.watch(self.app, "note", self._note_watch, init=True)
        self.watch(self.app, "plan", self._plan_watch, init=True)

    def _info_watch(self, info: WorkspaceInfo | None) -> None:
        self.query_one(StatusLine).info = info
        self.info_changed(info)

    def _triage_watch(self, triage: TriageState | None) -> None:
        if not self.is_current:  # out of view: redrawn when shown again (a keypress redraws one screen)
            self._triage_stale = True
            return
        self._triage_stale = False
        self.query_one(StatusLine).triage = triage
        self.triage_changed(triage)

    def on_screen_resume(self) -> None:
        if self._triage_stale:
            self._triage_watch(self.app.triage)

    def _note_watch(self, note: str) -> None:
        self.query_one(StatusLine).note = note

    def _plan_watch(self, plan) -> None:
        self.query_one(StatusLine).plan = plan

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        """The open workspace changed (None: none open yet)."""

    def triage_changed(self, triage: TriageState | None) -> None:
        """Marks changed; redraw marked flags and before -> after numbers."""

    def set_title(self, text: str | Text) -> None:
        """The title line (dataset names in it are shown verbatim, never as markup)."""
        self.query_one("#screen-title", Label).update(Text(text) if isinstance(text, str) else text)

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        # Worker.StateChanged does not bubble: pass failures on to the app's one handler.
        if event.state == WorkerState.ERROR:
            self.app.post_message(WorkerFailed(event.worker))

    # -- triage helpers -------------------------------------------------------------------------

    @property
    def triage(self) -> TriageState | None:
        return self.app.triage

    def is_marked(self, source_index: int) -> bool:
        return self.triage is not None and source_index in self.triage.marked

    def toggle_mark(self, source_index: int, features: tuple[int, ...] = ()) -> None:
        """Mark one pair, or unmark it when it is marked (one key, no dialog: it is on screen)."""
        if self.triage is None:
            return
        action = "unmark" if self.is_marked(source_index) else "mark"
        self.post_message(MarkRequested(action, Selection((int(source_index),), "pair", features)))

    def propose(self, select: Callable[[Session], Selection], ask_reason: bool = False) -> None:
        """Preview a selection of pairs (how many, which, what it does to the shifts), then mark it
        when accepted; `select` runs in a worker."""
        self.app.propose_marks(select, ask_reason)

    def propose_pairs(
        self, source_indices: Iterable[int], scope: str, features=(), ask_reason: bool = False,
        hypothesis: HypothesisKey | None = None,
    ) -> None:
        """`propose` for pairs already listed on screen (the preview shows how `hypothesis` moves)."""
        selection = Selection(tuple(int(s) for s in source_indices), scope, tuple(features), hypothesis)
        self.propose(lambda session: selection, ask_reason)


class FormInput(Input):
    """A form field: Escape leaves it (so digits switch screens again), Enter moves to the next field.
    Nothing starts from a field: a job starts only from its own key."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "leave", "Leave the field", show=False, id="form.leave"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("compact", True)
        super().__init__(*args, **kwargs)

    def action_leave(self) -> None:
        self.screen.set_focus(None)

    @on(Input.Submitted)
    def _next_field(self, event: Input.Submitted) -> None:
        event.stop()
        self.screen.focus_next()


def with_engine(screen, what: str, at_once, compute, message) -> None:
    """Show what needs the workspace's hypothesis engine: `at_once()` when it is loaded; otherwise load
    it (fitting the structure the first time) in the screen's JobPanel, with progress and Escape to
    cancel, then post `message(compute(session, excluded), excluded)`, excluded the marked pairs."""
    session = screen.app.session
    if session.has_hypotheses:
        at_once()
        return

    def job(progress, cancel):
        session.hypotheses_engine(progress, cancel)
        excluded = session.marked()
        return compute(session, excluded), excluded

    screen.query_one(JobPanel).run(what, job, lambda result: screen.post_message(message(*result)))
