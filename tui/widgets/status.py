"""The status line under every screen: kept / marked / total pairs, what the last change did, and the
workspace, in that order, so a narrow terminal cuts the model name before the counts."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from core.textsafe import one_line
from core.views import TriageState, WorkspaceInfo
from tui.format import count


class StatusLine(Static):
    """One line: how triage stands and what is open. Set `info`, `triage`, `note`; it redraws itself."""

    DEFAULT_CSS = """
    StatusLine { height: 1; padding: 0 1; }
    """

    info: reactive[WorkspaceInfo | None] = reactive(None, always_update=True)
    triage: reactive[TriageState | None] = reactive(None, always_update=True)
    note: reactive[str] = reactive("")

    def render(self) -> Text:
        if self.info is None:
            return Text("no workspace open", style="dim")
        i, t = self.info, self.triage
        line = Text(no_wrap=True, overflow="ellipsis")
        if t is not None:
            line.append(f"kept {count(t.n_kept)}", style="bold green")
            line.append(" · ")
            line.append(f"marked {count(t.n_marked)}", style="bold red" if t.n_marked else "")
            line.append(f" · total {count(t.n_total)}")
            undo = [x for x, ok in (("undo", t.can_undo), ("redo", t.can_redo)) if ok]
            if undo:
                line.append(f" ({' '.join(undo)})", style="dim")
            if self.note:
                line.append("  │  ")
                line.append(one_line(self.note), style="italic")
            line.append("  │  ")
        line.append(one_line(i.name), style="bold")
        line.append(one_line(f"  {i.model} / {i.sae} L{i.layer}"), style="dim")
        return line
