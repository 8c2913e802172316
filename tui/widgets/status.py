"""The status line under every screen: kept / marked / total pairs, what the last change did, the saved
intervention plan, and the workspace, in that order, so a narrow terminal cuts the model name first."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from core.textsafe import one_line
from core.views import TriageState, WorkspaceInfo
from tui.format import count


class StatusLine(Static):
    """One line: how triage stands, the plan, and what is open. Set `info`, `triage`, `note`, `plan`;
    it redraws itself."""

    DEFAULT_CSS = """
    StatusLine { height: 1; padding: 0 1; }
    """

    info: reactive[WorkspaceInfo | None] = reactive(None, always_update=True)
    triage: reactive[TriageState | None] = reactive(None, always_update=True)
    note: reactive[str] = reactive("")
    plan = reactive(None, always_update=True)  # core.interventions.Plan saved in the workspace

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
            if self.plan is not None:
                p = self.plan
                line.append("  │  ")
                line.append("plan ", style="dim")
                line.append(one_line(f"{p.kind} «{p.label}» {p.strength:g}", 40), style="bold magenta")
            line.append("  │  ")
        line.append(one_line(i.name), style="bold")
        line.append(one_line(f"  {i.model} / {i.sae} L{i.layer}"), style="dim")
        return line
