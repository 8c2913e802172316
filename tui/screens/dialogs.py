"""Modal dialogs: an error with its cause, yes/no, a preview of marks to confirm, the export, an
intervention plan, help.

Every string that may come from a dataset, a path or an exception is shown as plain text, never as
markup, with its control characters made visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from core.data.textsafe import one_line
from core.views import Preview
from core.views import format_q as q_text
from tui.format import before_after, count, line, number, safe, signed
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
            yield Label(line(self.title_text), classes="dialog-title")
            yield Static(safe(self.cause), classes="dialog-body")
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
            yield Label(line(self.title_text), classes="dialog-title")
            yield Static(safe(self.question), classes="dialog-body")
            yield Label("y / enter: yes    n / esc: no", classes="dialog-hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class MarkDialog(ModalScreen[str | None]):
    """Marks to confirm: how many pairs, a few of them, and how the shifts they drive would move.

    One key accepts (y or Enter; with a reason field, Enter in it); Escape cancels. Returns the reason
    ("" without one), None when cancelled.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y,enter", "accept", "Mark", id="dialog.accept"),
        Binding("n,escape", "cancel", "Cancel", id="dialog.cancel"),
    ]

    def __init__(self, preview: Preview, ask_reason: bool = False, unmark: bool = False) -> None:
        super().__init__()
        self.preview = preview
        self.ask_reason = ask_reason
        self.unmark = unmark

    def compose(self) -> ComposeResult:
        p = self.preview
        n = len(p.selection)
        verb = "Unmark" if self.unmark else "Mark"
        with Vertical(classes="dialog -mark"):
            yield Label(
                line(f"{verb} {count(n)} pair{'s' * (n != 1)} · {p.selection.scope}"),
                classes="dialog-title",
            )
            yield Static(self._summary(), classes="dialog-body", id="mark-summary")
            if self.ask_reason:
                yield Input(placeholder="reason (optional), e.g. 'refusal boilerplate'", id="reason")
                yield Label(f"enter: {verb.lower()}    esc: cancel", classes="dialog-hint")
            else:
                yield Label(f"y / enter: {verb.lower()}    n / esc: cancel", classes="dialog-hint")

    def _summary(self) -> Text:
        p = self.preview
        n = len(p.selection)
        out = Text()
        if self.unmark:
            out.append(f"all {count(n)} are marked: they would be kept again\n")
        else:
            already = n - p.n_new
            out.append(f"{count(p.n_new)} not marked yet")
            if already:
                out.append(f", {count(already)} marked already")
                out.append(" (the reason you give replaces theirs)" if self.ask_reason else "")
            out.append(f" · kept {before_after(p.n_kept_before, p.n_kept_after, count)}\n")
            for c in p.changes:
                out.append(f"#{c.feature} ", style="bold")
                out.append_text(line(c.label, 32))
                out.append(f"  shift {before_after(c.before, c.after, signed)}\n")
        h = p.hypothesis
        if h is not None:
            out.append_text(line(h.sentence, style="bold"))
            out.append("\n")
            rank = before_after(*(r if r is not None else 0 for r in h.rank), fmt=_rank)
            out.append(
                f"  q {before_after(*h.q, fmt=q_text)} · Δ {before_after(*h.delta)} · n {before_after(*h.n, fmt=count)}"
                f" · score {before_after(*h.score, fmt=number)} · rank {rank}\n"
            )
        for r in p.examples:
            out.append(f"#{r.source_index:<6}", style="bold")
            out.append_text(line(r.prompt, 60, style="dim"))
            out.append("\n")
        if n > len(p.examples):
            out.append(f"… and {count(n - len(p.examples))} more", style="dim")
        return out

    def on_mount(self) -> None:
        if self.ask_reason:
            self.query_one("#reason", Input).focus()

    @on(Input.Submitted, "#reason")
    def _submit(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_accept(self) -> None:
        if self.ask_reason:
            self.dismiss(self.query_one("#reason", Input).value.strip())
        else:
            self.dismiss("")

    def action_cancel(self) -> None:
        self.dismiss(None)


def _rank(r: float) -> str:
    return f"{int(r)}" if r else "unranked"


@dataclass(frozen=True)
class PlanTarget:
    """The concept a plan is asked for: its number, name, SAE features, and where it was picked."""

    concept: int
    name: str
    features: tuple[int, ...]
    source: str  # "hypothesis 3 (cluster:0:147)", "concept 12"


@dataclass(frozen=True)
class PlanAnswer:
    kind: str
    strength: float
    text: str


# What each intervention does in a few words, then in full, and what its strength means
# (core.train.interventions has the maths).
PLAN_KINDS = {
    "shape": ("reward shaping", "the DPO logit gets λ·(s(chosen) − s(rejected)), s the concept's z-scored"
              " projection read from the frozen model before training", "λ"),
    "steer": ("training-time steering", "α·SD·v, the concept's direction, is added to the residual stream"
              " at the SAE layer while training only", "α"),
    "mask": ("token-level filtering", "the reply words where the concept fires above the threshold leave"
             " the loss", "threshold"),
    "inoculate": ("inoculation prompting", "the logit is offset by the frozen model's gain from a system"
                  " prompt naming the behaviour (the text below)", "λ"),
}


class PlanDialog(ModalScreen[PlanAnswer | None]):
    """Pick an intervention on a concept (j/k), its strength (prefilled with the kind's default) and,
    for inoculation, the system prompt; Enter or ctrl+s saves it in the workspace, Escape cancels.
    `datadebug train-dpo DATA --out DIR --exclude-marked WS --plan WS` applies the saved plan."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save the plan", id="plan.save"),
        Binding("escape", "cancel", "Cancel", id="plan.cancel"),
    ]

    def __init__(self, target: PlanTarget, kinds: dict[str, float], current=None,
                 workspace: str = "WS", command: str = "datadebug train-dpo DATA --out DIR --exclude-marked WS"
                 " --plan WS") -> None:
        super().__init__()
        self.target = target
        self.kinds = dict(kinds)  # kind -> default strength
        self.current = current  # the plan saved now (core.train.interventions.Plan), or None
        self.workspace = workspace
        self.command = command  # core.session.Session.train_dpo_command: full paths, marked pairs left out
        self.kind = next(iter(self.kinds))

    def compose(self) -> ComposeResult:
        t = self.target
        n = len(t.features)
        with Vertical(classes="dialog -plan"):
            yield Label(
                line(f"Plan an intervention on concept {t.concept} «{t.name or '-'}» ({n} feature{'s' * (n != 1)})"),
                classes="dialog-title",
            )
            # first, so that a short terminal (80x24) still shows how to save
            yield Label(line(f"enter / ctrl+s: save in {self.workspace} · esc: cancel"), classes="dialog-hint",
                        id="plan-hint")
            yield KeyTable("kind", "default", "what it does", id="plan-kinds")
            yield Static("", id="plan-about", classes="dialog-body")
            with Horizontal(classes="form-row"):
                yield Label("strength", classes="form-label")
                yield Input(id="plan-strength", compact=True)
                yield Label("", id="plan-strength-unit")
            with Horizontal(classes="form-row"):
                yield Label("text", classes="form-label")
                yield Input(placeholder="inoculate: the system prompt naming the behaviour", id="plan-text",
                            compact=True)
            yield Static(self._now(), id="plan-now", classes="dialog-body")

    def _now(self) -> Text:
        out = Text("from ", style="dim")
        out.append_text(line(self.target.source))
        c = self.current
        out.append(" · saved now: ", style="dim")
        if c is None:
            out.append("no plan")
        else:
            out.append_text(line(f"{c.kind} on «{c.label or '-'}» ({len(c.features)} features), strength {c.strength:g}"
                                 f" (replaced when you save)"))
        out.append("\napplies with: ", style="dim")
        out.append(one_line(self.command))  # wraps: a path cut short cannot be pasted
        return out

    def on_mount(self) -> None:
        table = self.query_one("#plan-kinds", KeyTable)
        table.refill((kind, (kind, f"{default:g}", PLAN_KINDS.get(kind, ("", "", ""))[0]))
                     for kind, default in self.kinds.items())
        table.focus()
        self._picked(self.kind, force=True)

    def _picked(self, kind: str, force: bool = False) -> None:
        box = self.query_one("#plan-strength", Input)
        if force or box.value.strip() in ("", f"{self.kinds[self.kind]:g}"):  # not edited: the new default
            box.value = f"{self.kinds[kind]:g}"
        self.kind = kind
        _, about, unit = PLAN_KINDS.get(kind, ("", "", ""))
        self.query_one("#plan-strength-unit", Label).update(f" {unit}")
        self.query_one("#plan-about", Static).update(Text(f"{kind}: {about}" if about else kind))

    @on(DataTable.RowHighlighted, "#plan-kinds")
    def _kind_moved(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value in self.kinds:
            self._picked(event.row_key.value)

    @on(DataTable.RowSelected, "#plan-kinds")
    @on(Input.Submitted)
    def action_save(self) -> None:
        raw = self.query_one("#plan-strength", Input).value.strip()
        try:
            strength = float(raw) if raw else self.kinds[self.kind]
        except ValueError:
            self.notify(f"strength {raw!r} is not a number", severity="warning", markup=False)
            return
        if strength < 0:
            self.notify(f"strength {strength:g} must be >= 0", severity="warning", markup=False)
            return
        text = self.query_one("#plan-text", Input).value.strip()
        if self.kind == "inoculate" and not text:
            self.notify("inoculation needs the system prompt that names the behaviour (text)",
                        severity="warning", markup=False)
            self.query_one("#plan-text", Input).focus()
            return
        self.dismiss(PlanAnswer(self.kind, strength, text))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ExportDialog(ModalScreen[tuple[Path, bool] | None]):
    """Shows what the export will write and where; Enter writes, Escape cancels.

    An existing file is replaced only after a second Enter on the same path.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel")
    ]

    def __init__(self, n_kept: int, n_marked: int, n_total: int, out: Path) -> None:
        super().__init__()
        self.n_kept, self.n_marked, self.n_total = n_kept, n_marked, n_total
        self.out = out
        self._replace: Path | None = None  # the existing file a second Enter replaces

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export the cleaned dataset", classes="dialog-title")
            yield Static(
                f"keep {count(self.n_kept)} of {count(self.n_total)} indexed pairs, "
                f"remove {count(self.n_marked)} marked\n"
                + (
                    "(records that were not indexed are kept; only marked pairs are removed)"
                    if self.n_marked
                    else "(nothing is marked: the export is a copy of the source)"
                ),
                classes="dialog-body",
                markup=False,
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
        self._replace = None
        self._check(event.value)

    def _check(self, value: str) -> None:
        p = Path(value.strip()).expanduser()
        warn = ""
        if p.is_dir():
            warn = "a folder: give a file name"
        elif p.exists():
            warn = "exists: enter asks before replacing it"
        self.query_one("#export-warning", Static).update(Text(warn))

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#export-go")
    def _go(self) -> None:
        value = self.query_one("#export-path", Input).value.strip()
        if not value:
            return
        p = Path(value).expanduser()
        if p.is_dir():
            self._check(value)
            return
        if p.exists() and self._replace != p:
            self._replace = p
            self.query_one("#export-warning", Static).update(
                line(f"{p.name} exists: enter again replaces it (and its .removed.jsonl), esc cancels")
            )
            return
        self.dismiss((p, p.exists()))

    @on(Button.Pressed, "#export-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The current screen's column legend, then every binding of the app grouped by where it works,
    with its key (after the user's keymap) and its id for remapping."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "Close", id="dialog.close")
    ]

    def __init__(
        self,
        rows: list[tuple[str, str, str, str]],
        keymap_file: str,
        legend: tuple[tuple[str, str], ...] = (),
        where: str = "",
    ) -> None:
        super().__init__()
        self.rows = rows
        self.keymap_file = keymap_file
        self.legend = legend
        self.where = where

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -help"):
            yield Label("Keys", classes="dialog-title")
            if self.legend:
                text = Text()
                text.append(f"{self.where}: what the columns mean\n", style="bold")
                width = max(len(name) for name, _ in self.legend)
                for i, (name, meaning) in enumerate(self.legend):
                    text.append(f"{name:<{width}}", style="bold")
                    text.append(f"  {meaning}" + ("\n" if i < len(self.legend) - 1 else ""))
                with VerticalScroll(id="help-legend"):
                    yield Static(text)
            yield KeyTable("key", "does", "id", opens=False, id="help-table")
            yield Label(
                Text(f"remap by id in {self.keymap_file}    esc: close"), classes="dialog-hint"
            )

    def on_mount(self) -> None:
        sections: dict[str, list[tuple[str, str, str]]] = {}
        for where, keys, does, binding_id in self.rows:
            sections.setdefault(where, []).append((keys, does, binding_id))
        order = sorted(sections, key=lambda w: (w != "anywhere", w != self.where))
        rows = []
        for where in order:
            rows.append((f"§{where}", (Text(where, style="bold reverse"), "", "")))
            rows += [(f"{where}:{i}", row) for i, row in enumerate(sections[where])]
        table = self.query_one(KeyTable)
        table.refill(rows)
        table.focus()
