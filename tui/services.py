"""What the App is handed: where it starts, the core session it works on, and the catalogue by name.

A thin adapter over `core.session`, which holds every piece of analysis. It remembers what the App
was started with (a workspace, a dataset to index into it, catalogue names, a limit), keeps the open
`Session` (one at a time: opening another workspace replaces it), and applies mark changes in the
order their keys were pressed, whatever worker thread runs them. Tests hand the App one built on a
small workspace.
"""

from __future__ import annotations

import threading
from pathlib import Path

from core import session as core_session
from core.errors import WorkspaceError
from core.session import Session
from core.views import Selection, TriageState, WorkspaceInfo, WorkspaceStatus
from tui.quit import InFlight


class Services:
    """The TUI's one door into core.

    Args:
        workspace: the workspace folder to start on (may not exist yet).
        data: a dataset to index into it when it is not indexed yet.
        model, sae: catalogue names for indexing (None: the catalogue defaults).
        limit: index at most this many valid pairs.
    """

    # The catalogue's models and SAEs, and indexing: no workspace needed.
    models = staticmethod(core_session.models)
    pull = staticmethod(core_session.pull)
    verify = staticmethod(core_session.verify)
    remove = staticmethod(core_session.remove)
    train_sae = staticmethod(core_session.train_sae)
    catalog_choices = staticmethod(core_session.catalog_choices)
    intervention_kinds = staticmethod(core_session.intervention_kinds)
    index = staticmethod(core_session.index)

    def __init__(
        self,
        workspace: Path | str,
        data: Path | str | None = None,
        model: str | None = None,
        sae: str | None = None,
        limit: int | None = None,
    ):
        self.workspace_path = Path(workspace)
        self.data = Path(data) if data else None
        self.model = model
        self.sae = sae
        self.limit = limit
        self._session: Session | None = None
        # Mark changes are applied in the order they were asked for, whatever thread runs them.
        self._turn = threading.Condition()
        self.in_flight = InFlight()  # saves and jobs the process must not leave behind (tui.quit)
        self._next_ticket = 0
        self._serving = 0

    # -- the open workspace ---------------------------------------------------------------------

    def probe(self, path: Path | str | None = None) -> WorkspaceStatus:
        """What is at `path` (default: the start workspace): indexed, partly indexed or nothing."""
        return core_session.probe(path or self.workspace_path)

    def open(self, path: Path | str | None = None) -> tuple[WorkspaceInfo, TriageState]:
        """Open the workspace at `path` (default: the start one) in place of the open one.
        Raises WorkspaceError when it is not indexed."""
        session = Session(path or self.workspace_path)
        info, triage = session.info(), session.triage()
        self._session = session
        self.workspace_path = session.path
        return info, triage

    @property
    def is_open(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> Session:
        """The open workspace's session. Raises WorkspaceError when none is open."""
        if self._session is None:
            raise WorkspaceError("no workspace is open")
        return self._session

    # -- mark changes, in keypress order --------------------------------------------------------

    def take_ticket(self) -> int:
        """A place in the queue of mark changes; take it on the UI thread when the key is pressed."""
        with self._turn:
            ticket = self._next_ticket
            self._next_ticket += 1
            return ticket

    def apply(
        self, ticket: int, action: str, selection: Selection | None = None, reason: str = ""
    ) -> tuple[TriageState, str]:
        """Apply one mark change (core.session.Session.change) once every earlier ticket is done.

        Returns the new triage state and a one-line note of what changed.
        """
        with self._turn:
            if not self._turn.wait_for(lambda: self._serving == ticket, timeout=120):
                raise RuntimeError(
                    "an earlier mark change never finished; restart the app to reload the marks"
                )
        try:
            with self.in_flight("saving marks"):
                session = self.session
                note = session.change(action, selection, reason)
            return session.triage(), note
        finally:
            with self._turn:
                self._serving += 1
                self._turn.notify_all()
