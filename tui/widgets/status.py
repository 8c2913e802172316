"""The status line under every screen: workspace, model, and kept / marked / total pairs."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from tui.services import TriageState, WorkspaceInfo


class StatusLine(Static):
    """One line: what is open and how triage stands. Set `info` and `triage`; it redraws itself."""

    DEFAULT_CSS = """
    StatusLine { height: 1; padding: 0 1; }
    """

    info: reactive[WorkspaceInfo | None] = reactive(None, always_update=True)
    triage: reactive[TriageState | None] = reactive(None, always_update=True)

    def render(self) -> Text:
        if self.info is None:
            return Text("no workspace open", style="dim")
        i, t = self.info, self.triage
        line = Text()
        line.append(i.name, style="bold")
        line.append(f"  {i.model} / {i.sae} L{i.layer}", style="dim")
        if t is not None:
            line.append("  │  ")
            line.append(f"kept {t.n_kept}", style="bold green")
            line.append(" · ")
            line.append(f"marked {t.n_marked}", style="bold red" if t.n_marked else "")
            line.append(f" · total {t.n_total}")
            undo = "undo" if t.can_undo else ""
            redo = "redo" if t.can_redo else ""
            if undo or redo:
                line.append(f"  ({' '.join(x for x in (undo, redo) if x)})", style="dim")
        return line
