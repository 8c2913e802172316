"""Shifts: the features DPO is predicted to amplify and to suppress, side by side, with what-if numbers."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, Static
from textual.worker import get_current_worker

from tui.messages import ReportReady
from tui.screens.base import DataScreen, before_after, signed, snippet
from tui.services import TriageState, WorkspaceInfo
from tui.widgets.tables import KeyTable

SORTS = ("score", "shift", "effect", "firing", "stability", "feature")
TOP = 50  # features ranked per direction
N_TOP_PAIRS = 10  # pairs marked by "mark top pairs"


class ShiftsScreen(DataScreen):
    """Amplified | suppressed tables, a detail pane for the feature under the cursor, filter and sort."""

    SCREEN_TITLE = "Shifts"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_feature", "Open the feature's pairs", show=False, id="shifts.open"),
        Binding("t", "mark_top", "Mark top pairs", id="shifts.mark_top"),
        Binding(
            "T",
            "mark_top_reason",
            "Mark top pairs with reason",
            id="shifts.mark_top_reason",
            show=False,
        ),
        Binding("slash", "filter", "Filter", id="shifts.filter"),
        Binding("s", "sort", "Sort", id="shifts.sort"),
        Binding("r", "rerank", "Re-rank", id="shifts.rerank"),
        Binding("h", "focus_side('amplified')", "Amplified", show=False, id="shifts.left"),
        Binding("l", "focus_side('suppressed')", "Suppressed", show=False, id="shifts.right"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="shifts.clear_filter"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.report = None
        self.without_marked = False
        self.stale = False  # marks changed since the ranking was computed
        self.sort_key = "score"
        self.filter_text = ""

    def compose_body(self) -> ComposeResult:
        yield Input(
            placeholder="filter: words of the label, or a feature number",
            id="filter",
            classes="-hidden",
        )
        yield Label("", id="shifts-caption")
        with Horizontal(id="shifts-tables"):
            with Vertical(classes="side"):
                yield Label("AMPLIFIED · more in chosen", classes="side-title -amplified")
                yield KeyTable("feat", "shift", "d", "n", "label", "95% CI", "stab", id="amplified")
            with Vertical(classes="side"):
                yield Label("SUPPRESSED · more in rejected", classes="side-title -suppressed")
                yield KeyTable(
                    "feat", "shift", "d", "n", "label", "95% CI", "stab", id="suppressed"
                )
        yield Static("", id="feature-detail")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#amplified", KeyTable).focus()

    # -- data -----------------------------------------------------------------------------------

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        if info is None:
            self.query_one("#shifts-caption", Label).update(
                "no workspace open: press 6 to index a dataset"
            )
            return
        self.report = None
        self.set_title(
            f"Shifts · what DPO on {info.dataset_name} is predicted to teach {info.model}"
        )
        self._load(False)

    def triage_changed(self, triage: TriageState | None) -> None:
        if self.report is not None:
            self.stale = True
            self._fill()

    def _load(self, without_marked: bool) -> None:
        for table in self.query(KeyTable):
            table.loading = True
        self._rank(without_marked)

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="report",
        description="ranking features",
    )
    def _rank(self, without_marked: bool) -> None:
        report = self.app.services.report(top=TOP, exclude_marked=without_marked)
        if not get_current_worker().is_cancelled:
            self.post_message(ReportReady(report, without_marked))

    @on(ReportReady)
    def _report_ready(self, event: ReportReady) -> None:
        self.report = event.report
        self.without_marked = event.without_marked
        self.stale = False
        for table in self.query(KeyTable):
            table.loading = False
        if not isinstance(self.focused, (KeyTable, Input)):  # a loading table gives its focus away
            self.query_one("#amplified", KeyTable).focus()
        self._fill()

    # -- rendering ------------------------------------------------------------------------------

    def _visible(self, direction: str) -> list:
        feats = [f for f in self.report.features if f.direction == direction]
        if self.filter_text:
            words = self.filter_text.lower().split()
            feats = [
                f
                for f in feats
                if all(w in f"{f.feature} #{f.feature} {f.label.lower()}" for w in words)
            ]
        t = self.triage
        after = t.after if t else None
        keys = {
            "score": lambda f: -abs(f.score),
            "shift": lambda f: -abs(after.shift[f.feature] if after else f.shift),
            "effect": lambda f: -abs(after.effect[f.feature] if after else f.effect_size),
            "firing": lambda f: -(after.n_firing[f.feature] if after else f.n_firing),
            "stability": lambda f: -f.stability,
            "feature": lambda f: f.feature,
        }
        return sorted(feats, key=keys[self.sort_key])

    def _cells(self, f) -> tuple:
        t = self.triage
        b, a = (t.before, t.after) if t else (None, None)
        shift = before_after(b.shift[f.feature], a.shift[f.feature]) if t else signed(f.shift)
        effect = (
            before_after(b.effect[f.feature], a.effect[f.feature], lambda x: f"{x:+.2f}")
            if t
            else f"{f.effect_size:+.2f}"
        )
        firing = (
            before_after(b.n_firing[f.feature], a.n_firing[f.feature], lambda x: f"{int(x)}")
            if t
            else str(f.n_firing)
        )
        style = "bold" if f.stable else "dim"
        return (
            Text(str(f.feature), style=style),
            shift,
            effect,
            firing,
            snippet(f.label, 28),
            f"[{signed(f.ci[0])}, {signed(f.ci[1])}]",
            f"{f.stability:.2f}",
        )

    def _fill(self) -> None:
        if self.report is None:
            return
        for direction in ("amplified", "suppressed"):
            table = self.query_one(f"#{direction}", KeyTable)
            table.refill((str(f.feature), self._cells(f)) for f in self._visible(direction))
        n = self.report.n_pairs
        basis = f"ranked on {n} kept pairs" if self.without_marked else f"ranked on all {n} pairs"
        if self.stale:
            basis += " · marks changed: r re-ranks"
        parts = [basis, f"sort: {self.sort_key}"]
        if self.filter_text:
            parts.append(f"filter: {self.filter_text!r}")
        if not self.report.features:
            parts.append("no feature has a CI clear of zero")
        self.query_one("#shifts-caption", Label).update(" · ".join(parts))
        self._show_detail()

    def _current(self):
        """The feature under the cursor of the focused table (else the amplified one)."""
        if self.report is None:
            return None
        table = (
            self.focused
            if isinstance(self.focused, KeyTable)
            else self.query_one("#amplified", KeyTable)
        )
        key = table.current_key()
        if key is None:
            return None
        return next((f for f in self.report.features if str(f.feature) == key), None)

    def _show_detail(self) -> None:
        f = self._current()
        detail = self.query_one("#feature-detail", Static)
        if f is None:
            detail.update("")
            return
        t = self.triage
        text = Text()
        text.append(f"#{f.feature} ", style="bold")
        text.append(f.label, style="bold")
        text.append(f"  {f.direction}{'' if f.stable else ' (unstable)'}\n", style="dim")
        if t is not None:
            b, a = t.before, t.after
            text.append(f"shift {before_after(b.shift[f.feature], a.shift[f.feature])}   ")
            text.append(
                f"d {before_after(b.effect[f.feature], a.effect[f.feature], lambda x: f'{x:+.2f}')}   "
            )
            text.append(
                f"firing {before_after(b.n_firing[f.feature], a.n_firing[f.feature], lambda x: str(int(x)))}"
            )
            text.append(
                f" of {b.n_kept}" + (f"→{a.n_kept}" if a.n_kept != b.n_kept else "") + " pairs\n"
            )
        text.append(
            f"95% CI [{signed(f.ci[0])}, {signed(f.ci[1])}]   stability {f.stability:.2f}   score {signed(f.score)}\n"
        )
        pairs = Text("top pairs: ", style="dim")
        for p in f.top_pairs:
            marked = self.is_marked(p.source_index)
            pairs.append(
                f"#{p.source_index}" + ("✗" if marked else ""), style="red" if marked else ""
            )
            pairs.append(f"({signed(p.delta)}) ", style="dim")
        text.append_text(pairs)
        if f.contexts:
            text.append("\nfires on: ", style="dim")
            text.append(" · ".join(c.replace("[[", "«").replace("]]", "»") for c in f.contexts[:3]))
        detail.update(text)

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._show_detail()

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_open_feature()

    def on_descendant_focus(self) -> None:
        self._show_detail()

    # -- actions --------------------------------------------------------------------------------

    def action_open_feature(self) -> None:
        from tui.screens.pairs import PairsScreen

        f = self._current()
        if f is not None:
            self.app.push_screen(PairsScreen.for_feature(f.feature, f.label))

    def action_mark_top(self) -> None:
        f = self._current()
        if f is not None:
            top = [p.source_index for p in f.top_pairs[:N_TOP_PAIRS]]
            self.toggle_marks(top, f"feature {f.feature} top {len(top)}", (f.feature,))

    def action_mark_top_reason(self) -> None:
        f = self._current()
        if f is not None:
            top = [p.source_index for p in f.top_pairs[:N_TOP_PAIRS]]
            self.mark_with_reason(top, f"feature {f.feature} top {len(top)}", (f.feature,))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("-hidden")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._fill()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one("#amplified", KeyTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_class("-hidden") and not self.filter_text:
            return
        box.value = ""
        box.add_class("-hidden")
        self.filter_text = ""
        self._fill()
        self.query_one("#amplified", KeyTable).focus()

    def action_sort(self) -> None:
        self.sort_key = SORTS[(SORTS.index(self.sort_key) + 1) % len(SORTS)]
        self._fill()

    def action_rerank(self) -> None:
        if self.app.info is not None:
            self._load(bool(self.triage and self.triage.marked))

    def action_focus_side(self, side: str) -> None:
        self.query_one(f"#{side}", KeyTable).focus()
