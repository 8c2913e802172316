"""Shifts: the features DPO is predicted to amplify and to suppress, with what-if numbers.

Side by side on a wide terminal, one above the other from 100 columns, one side at a time (h / l)
below that; the confidence interval and stability columns give way first, the label column never.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Vertical
from textual.widgets import DataTable, Input, Label, Static
from textual.worker import get_current_worker

from core.views import TriageState, WorkspaceInfo
from core.views import format_q as q_text
from tui.format import before_after, count, line, number, signed
from tui.messages import Open, ReportReady
from tui.screens.base import DataScreen
from tui.widgets.tables import KeyTable

SORTS = ("score", "shift", "effect", "firing", "stability", "feature")
TOP = 50  # features ranked per direction
N_TOP_PAIRS = 10  # pairs marked by "mark top pairs"
SIDES = ("amplified", "suppressed")
NARROW, WIDE = 100, 170  # below NARROW one side at a time; from WIDE side by side
COLUMNS = ("feat", "q", "shift", "d", "n", "score", "95% CI", "stab", "label")
NARROW_COLUMNS = ("feat", "q", "shift", "n", "score", "label")


class ShiftsScreen(DataScreen):
    """Amplified and suppressed tables, a detail pane for the feature under the cursor, filter and sort."""

    SCREEN_TITLE = "Shifts"
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [
        (0, "-narrow"),
        (NARROW, "-medium"),
        (WIDE, "-wide"),
    ]
    LEGEND = (
        ("feat", "SAE feature id (bold: stable, dim: unstable)"),
        ("q", "Benjamini–Hochberg q of the shift against labels swapped at random, over every feature"
              " that fires; established below 0.1 (bold, listed first by score). '…' until r re-ranks"),
        ("shift", "mean of chosen - rejected activation; a→b: without marked pairs"),
        ("d", "effect size (Cohen's d): shift / SD of the per-pair deltas"),
        ("n", "pairs where the feature fires in either reply"),
        ("score", "the CI bound nearest zero: the shift we are 95% sure of; ranks"),
        ("95% CI", "bootstrap 95% confidence interval of the shift"),
        ("stab", "share of split-halves agreeing in sign (stable: ≥ 0.90)"),
        ("label", "published label, else tokens it fires on → tokens it promotes"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_feature", "Open the feature's pairs", show=False, id="shifts.open"),
        Binding("t", "mark_top", "Mark top", id="shifts.mark_top"),
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
        Binding("h", "focus_side('amplified')", "Amplified side", show=False, id="shifts.left"),
        Binding("l", "focus_side('suppressed')", "Suppressed side", show=False, id="shifts.right"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="shifts.clear_filter"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.report = None
        self.without_marked = True
        self.stale = False  # marks changed since the ranking was computed
        self.sort_key = "score"
        self.filter_text = ""
        self.side = "amplified"  # the side shown when only one fits
        self._ranked_without: frozenset[int] = frozenset()  # the marked pairs left out of the ranking

    def compose_body(self) -> ComposeResult:
        yield Input(
            placeholder="filter: words of the label, or a feature number",
            id="filter",
            classes="-hidden",
        )
        yield Label("", id="shifts-caption")
        with Container(id="shifts-tables"):
            for side, title in (
                ("amplified", "AMPLIFIED · more in chosen"),
                ("suppressed", "SUPPRESSED · more in rejected"),
            ):
                with Vertical(classes=f"side -{side}", id=f"{side}-side"):
                    yield Label(title, classes=f"side-title -{side}", id=f"{side}-title")
                    yield KeyTable(*COLUMNS, id=side)
        yield Static("", id="feature-detail")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#amplified", KeyTable).focus()

    # -- data -----------------------------------------------------------------------------------

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        if info is None:
            self.query_one("#shifts-caption", Label).update(
                "no workspace open: press 9 to index a dataset"
            )
            return
        self.report = None
        self.set_title(
            line(f"Shifts · what DPO on {info.dataset_name} is predicted to teach {info.model}")
        )
        self._load()

    def triage_changed(self, triage: TriageState | None) -> None:
        if self.report is not None:
            self.stale = triage is not None and triage.marked != self._ranked_without
            self._fill()

    def _load(self) -> None:
        for table in self.query(KeyTable):
            table.loading = True
        self._rank()

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="report",
        description="ranking features",
    )
    def _rank(self) -> None:
        session = self.app.session
        excluded = session.marked()
        report = session.report(top=TOP, excluded=excluded)
        if not get_current_worker().is_cancelled:
            self.post_message(ReportReady(report, excluded))

    @on(ReportReady)
    def _report_ready(self, event: ReportReady) -> None:
        self.report = event.report
        self._ranked_without = event.excluded
        self.stale = self.triage is not None and self.triage.marked != self._ranked_without
        for table in self.query(KeyTable):
            table.loading = False
        if not isinstance(self.focused, (KeyTable, Input)):  # a loading table gives its focus away
            self.query_one(f"#{self.side}", KeyTable).focus()
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
        after = self.triage.after if self.triage else None
        keys = {
            "score": lambda f: (not f.established, -abs(f.score)),
            "shift": lambda f: -abs(after.shift[f.feature] if after else f.shift),
            "effect": lambda f: -abs(after.effect[f.feature] if after else f.effect_size),
            "firing": lambda f: -(after.n_firing[f.feature] if after else f.n_firing),
            "stability": lambda f: -f.stability,
            "feature": lambda f: f.feature,
        }
        return sorted(feats, key=keys[self.sort_key])

    def _columns(self) -> tuple[str, ...]:
        return NARROW_COLUMNS if self.has_class("-narrow") else COLUMNS

    def _cells(self, f, columns: tuple[str, ...]) -> tuple:
        t = self.triage
        if t is not None:
            b, a = t.before, t.after
            shift = before_after(b.shift[f.feature], a.shift[f.feature])
            effect = before_after(b.effect[f.feature], a.effect[f.feature])
            firing = before_after(b.n_firing[f.feature], a.n_firing[f.feature], count)
        else:
            shift, effect, firing = signed(f.shift), signed(f.effect_size), count(f.n_firing)
        cells = {
            "feat": Text(str(f.feature), style="bold" if f.stable else "dim"),
            "q": Text("…" if self.stale else q_text(f.q), style="bold" if f.established and not self.stale else "dim"),
            "shift": shift,
            "d": effect,
            "n": firing,
            "score": signed(f.score),
            "95% CI": f"[{signed(f.ci[0])}, {signed(f.ci[1])}]",
            "stab": number(f.stability),
            "label": line(f.label, 48),
        }
        return tuple(cells[c] for c in columns)

    def _fill(self) -> None:
        if self.report is None:
            return
        columns = self._columns()
        for direction in SIDES:
            table = self.query_one(f"#{direction}", KeyTable)
            table.set_columns(columns)
            table.refill(
                (str(f.feature), self._cells(f, columns)) for f in self._visible(direction)
            )
        self._side_titles()
        n, excluded = self.report.n_pairs, self.report.n_excluded
        basis = (
            f"ranked on {count(n)} kept pairs ({count(excluded)} marked left out)"
            if excluded
            else f"ranked on all {count(n)} pairs"
        )
        rep = self.report
        sure = ("q refreshing: r re-ranks" if self.stale else
                f"{count(rep.n_established)} established (q < {rep.fdr:g}) of {count(rep.n_tested)} features")
        parts = [sure, basis, f"sort: {self.sort_key}"]
        if self.filter_text:
            parts.append(f"filter: {self.filter_text}")
        if not self.report.features:
            parts.append("no feature has a CI clear of zero")
        self.query_one("#shifts-caption", Label).update(line(" · ".join(parts)))
        self._show_detail()

    def _side_titles(self) -> None:
        narrow = self.has_class("-narrow")
        for side, other, key in (("amplified", "suppressed", "l"), ("suppressed", "amplified", "h")):
            n = self.query_one(f"#{side}", KeyTable).row_count
            title = Text(f"{side.upper()} · more in {'chosen' if side == 'amplified' else 'rejected'} ({n})")
            if narrow:
                m = self.query_one(f"#{other}", KeyTable).row_count
                title.append(f"   {key}: {other} ({m})", style="dim not bold")
            self.query_one(f"#{side}-title", Label).update(title)
        for side in SIDES:
            self.query_one(f"#{side}-side").set_class(narrow and side != self.side, "-hidden")

    def on_resize(self) -> None:
        # The breakpoint classes are set by now: columns and visible sides follow the width.
        self.call_after_refresh(self._fill)

    def _current(self):
        """The feature under the cursor of the focused table (else of the side in view)."""
        if self.report is None:
            return None
        table = (
            self.focused
            if isinstance(self.focused, KeyTable)
            else self.query_one(f"#{self.side}", KeyTable)
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
        text.append_text(line(f.label, style="bold"))
        text.append(f"  {f.direction}{'' if f.stable else ' (unstable)'}\n", style="dim")
        if t is not None:
            b, a = t.before, t.after
            text.append(f"shift {before_after(b.shift[f.feature], a.shift[f.feature])}   ")
            text.append(f"d {before_after(b.effect[f.feature], a.effect[f.feature])}   ")
            text.append(
                f"n {before_after(b.n_firing[f.feature], a.n_firing[f.feature], count)}"
                f" of {before_after(b.n_kept, a.n_kept, count)} pairs\n"
            )
        text.append(
            f"95% CI [{signed(f.ci[0])}, {signed(f.ci[1])}]   stability {number(f.stability)}   "
            f"score {signed(f.score)}\n"
        )
        text.append("top pairs: ", style="dim")
        for p in f.top_pairs:
            marked = self.is_marked(p.source_index)
            text.append(
                f"#{p.source_index}" + ("✗" if marked else ""), style="red" if marked else ""
            )
            text.append(f"({signed(p.delta)}) ", style="dim")
        if f.contexts:
            text.append("\nfires on: ", style="dim")
            shown = " · ".join(c.replace("[[", "«").replace("]]", "»") for c in f.contexts[:3])
            text.append_text(line(shown))
        detail.update(text)

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._show_detail()

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_open_feature()

    def on_descendant_focus(self) -> None:
        focused = self.focused
        if isinstance(focused, KeyTable) and focused.id in SIDES and focused.id != self.side:
            self.side = focused.id
            self._side_titles()
        self._show_detail()

    # -- actions --------------------------------------------------------------------------------

    def action_open_feature(self) -> None:
        f = self._current()
        if f is not None:
            self.post_message(Open("pairs.feature", f.feature, f.label))
    def _propose_top(self, ask_reason: bool) -> None:
        f = self._current()
        if f is not None:
            feature = f.feature
            self.propose(
                lambda session: session.select(feature=feature, top=N_TOP_PAIRS, skip_marked=True),
                ask_reason,
            )

    def action_mark_top(self) -> None:
        """Preview the feature's top pairs not marked yet, and mark them when accepted."""
        self._propose_top(False)

    def action_mark_top_reason(self) -> None:
        self._propose_top(True)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("-hidden")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._fill()
        self._to_top()

    def _to_top(self) -> None:
        """Both tables back to their first row: a filter shows other rows, the old place means nothing."""
        for direction in SIDES:
            table = self.query_one(f"#{direction}", KeyTable)
            if table.row_count:
                table.move_cursor(row=0, animate=False)
            table.scroll_to(0, 0, animate=False)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one(f"#{self.side}", KeyTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_class("-hidden") and not self.filter_text:
            return
        box.value = ""
        box.add_class("-hidden")
        self.filter_text = ""
        self._fill()
        self._to_top()
        self.query_one(f"#{self.side}", KeyTable).focus()

    def action_sort(self) -> None:
        self.sort_key = SORTS[(SORTS.index(self.sort_key) + 1) % len(SORTS)]
        self._fill()

    def action_rerank(self) -> None:
        if self.app.info is not None:
            self._load()

    def action_focus_side(self, side: str) -> None:
        self.side = side
        self._side_titles()
        self.query_one(f"#{side}", KeyTable).focus()
