"""The status line under every screen: kept / marked / total pairs, what the last change did, the saved
intervention plan, and the workspace, in that order, so a narrow terminal cuts the model name first."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from core.data.textsafe import one_line
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
    plan = reactive(None, always_update=True)  # core.train.interventions.Plan saved in the workspace

    def render(self) -> Text:
        if self.info is None:
            return Text("no workspace open", style="dim")
        i, t = self.info, self.triage
        line = Text(no_wrap=True, overflow="ellipsis")
        width = max(self.content_region.width or self.size.width, 20)
        sep = "  │  "
        name = one_line(i.name)
        model = one_line(f"  {i.model} / {i.sae} L{i.layer}")
        if t is not None:
            line.append(f"kept {count(t.n_kept)}", style="bold green")
            line.append(" · ")
            line.append(f"marked {count(t.n_marked)}", style="bold red" if t.n_marked else "")
            line.append(f" · total {count(t.n_total)}")
            undo = [x for x, ok in (("undo", t.can_undo), ("redo", t.can_redo)) if ok]
            if undo:
                line.append(f" ({' '.join(undo)})", style="dim")
            # what is left for the note and the plan once the counts and the workspace's name are in
            room = width - len(line.plain) - len(sep) - len(name)
            plan = None
            if self.plan is not None:
                p = self.plan
                plan = one_line(f"{p.kind} «{p.label}» {p.strength:g}", 40)
            note = one_line(self.note) if self.note else ""
            if plan is not None and room >= len(sep) + 5 + 12:
                plan = one_line(plan, max(8, min(len(plan), room - len(sep) - 5 - (len(sep) + 12 if note else 0))))
                room -= len(sep) + 5 + len(plan)
            else:
                plan = None
            if note and room >= len(sep) + 8:
                note = one_line(note, room - len(sep))
                room -= len(sep) + len(note)
                line.append(sep)
                line.append(note, style="italic")
            if plan is not None:
                line.append(sep)
                line.append("plan ", style="dim")
                line.append(plan, style="bold magenta")
            line.append(sep)
        line.append(name, style="bold")
        if len(line.plain) + len(model) <= width:  # the model goes first when it does not fit
            line.append(model, style="dim")
        return line
