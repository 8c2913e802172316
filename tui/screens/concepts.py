"""Concepts: groups of SAE features that fire together, by global predicted shift (mean u over pairs),
and one level down a concept's own features with their per-feature shifts (as on Shifts)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label, Static
from textual.worker import get_current_worker

from core.views import ConceptFeatures, TriageState, WorkspaceInfo
from core.views import format_q as q_text
from tui.format import before_after, count, line, signed
from tui.messages import ConceptFeaturesReady, ConceptsReady, Open
from tui.screens.base import DIVIDER, DataScreen, with_engine
from tui.widgets.job import JobPanel
from tui.widgets.tables import KeyTable

TOP = 200  # concepts listed


class ConceptsScreen(DataScreen):
    """One row per concept; Enter lists its features, a shows only groups of ≥ 4 features, i plans
    an intervention on it."""

    SCREEN_TITLE = "Concepts"
    LEGEND = (
        ("concept", "concept number: groups of ≥ 4 co-firing features first (by size), then single features"),
        ("q", "Benjamini–Hochberg q of the global shift against labels swapped at random, over every"
              " concept that moves; established (listed first) below 0.1. '…' while marks re-rank"),
        ("feats", "SAE features in the concept"),
        ("shift", "global predicted shift: mean over pairs of u (share of its features firing in the"
                  " chosen reply minus the rejected one); a→b: without the marked pairs"),
        ("95% CI", "normal 95% confidence interval of the shift"),
        ("✓", "stable: the even and the odd pairs agree in sign with the whole"),
        ("n", "pairs where u is not 0"),
        ("name", "keywords where its features fire (c-TF-IDF)"),
        ("plan", "i saves an intervention on the concept in the workspace;"
                 " datadebug train-dpo DATA --out DIR --plan WS applies it"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "features", "Open the concept's features", show=False, id="concepts.open"),
        Binding("a", "toggle_grouped", "Groups/all", id="concepts.grouped"),
        Binding("i", "plan", "Plan", id="concepts.plan"),
        Binding("r", "reload", "Reload", show=False, id="concepts.reload"),
        Binding("escape", "cancel", "Cancel the fit", show=False, id="concepts.cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.view = None  # core.views.ConceptsView
        self.grouped_only = False
        self._listed_without: frozenset[int] = frozenset()

    def compose_body(self) -> ComposeResult:
        yield JobPanel(id="concepts-job")
        yield Label("", id="concepts-caption")
        yield KeyTable("concept", "q", "feats", "shift", "95% CI", "✓", "n", "name", id="concepts")
        yield Static("", id="concept-detail")

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        self.view = None
        if info is None:
            self.query_one("#concepts-caption", Label).update("no workspace open")
            return
        self.set_title(line(f"Concepts · co-firing SAE features by predicted shift · {info.dataset_name}"))
        self.action_reload()

    def action_reload(self) -> None:
        if self.app.info is None:
            return
        grouped = self.grouped_only
        with_engine(self, "reading the concepts", self._list,
                    lambda session, excluded: session.concepts(top=TOP, grouped_only=grouped, excluded=excluded),
                    ConceptsReady)

    def action_cancel(self) -> None:
        self.query_one(JobPanel).cancel()

    @work(thread=True, exclusive=True, exit_on_error=False, group="concepts", description="ranking concepts")
    def _list(self) -> None:
        session = self.app.session
        excluded = session.marked()
        view = session.concepts(top=TOP, grouped_only=self.grouped_only, excluded=excluded)
        if not get_current_worker().is_cancelled:
            self.post_message(ConceptsReady(view, excluded))

    @on(ConceptsReady)
    def _ready(self, event: ConceptsReady) -> None:
        self.view = event.concepts
        self._listed_without = event.excluded
        self.query_one("#concepts", KeyTable).focus()
        self._fill()

    def triage_changed(self, triage: TriageState | None) -> None:
        if self.view is not None and triage is not None and triage.marked != self._listed_without:
            self._fill()  # q shown as refreshing until the new list arrives
            self._list()

    def _fill(self) -> None:
        v = self.view
        if v is None:
            return
        narrow = self.size.width < 100
        t = self.triage
        stale = t is not None and t.marked != self._listed_without

        def cells(r):
            c = r.shift
            shift = before_after(v.before.get(c.concept, c.shift), c.shift)
            return (
                Text(str(c.concept), style="bold" if c.concept < v.n_grouped else ""),
                Text("…" if stale else q_text(c.q), style="bold" if c.established and not stale else "dim"),
                count(c.n_features),
                Text(shift, style="green" if c.shift > 0 else "red"),
                f"[{signed(c.ci[0])}, {signed(c.ci[1])}]",
                "✓" if c.stable else "",
                count(c.n_firing),
                line(r.name or "(no firings stored)", 30 if narrow else 60),
            )

        def rows():
            divided = False
            for r in v.rows:
                if not r.shift.established and not divided:
                    divided = True
                    yield DIVIDER, ("", "", "", "", "", "", "", line(
                        f"── not established at this data size (q ≥ {v.fdr:g})", 30 if narrow else 60,
                        style="dim italic"))
                yield str(r.shift.concept), cells(r)

        self.query_one("#concepts", KeyTable).refill(rows())
        basis = (
            f"{count(v.n_pairs)} kept pairs ({count(v.n_excluded)} marked left out)"
            if v.n_excluded
            else f"all {count(v.n_pairs)} pairs"
        )
        which = f"the {len(v.rows)} groups of ≥ 4 features" if self.grouped_only else f"top {len(v.rows)}"
        sure = ("q refreshing for the new marks…" if stale else
                f"{count(v.n_established)} established (q < {v.fdr:g}) of {count(v.n_tested)} tested")
        if not stale and v.n_established == 0:
            sure += f": nothing established (the smallest shift these pairs could show: {v.detectable_d:.2f} SD)"
        self.query_one("#concepts-caption", Label).update(
            line(f"{sure} · {which} of {count(v.n_concepts)} concepts ({v.n_grouped} groups), established first, "
                 f"by |shift| on {basis} · a: groups only / all")
        )
        self._detail()

    def on_resize(self) -> None:
        self.call_after_refresh(self._fill)

    def current(self):
        if self.view is None:
            return None
        key = self.query_one("#concepts", KeyTable).current_key()
        return next((r for r in self.view.rows if str(r.shift.concept) == key), None)

    def _detail(self) -> None:
        r = self.current()
        out = Text()
        if r is not None:
            c = r.shift
            out.append(f"concept {c.concept} ", style="bold")
            out.append_text(line(r.name, 60, style="bold"))
            out.append(
                f"\nshift {signed(c.shift)} · halves {signed(c.shift_a)} / {signed(c.shift_b)}"
                f" {'✓ stable' if c.stable else 'unstable'} · u ≠ 0 in {count(c.n_firing)} pairs\n"
            )
            feats = " ".join(f"#{f}" for f in r.features[:12]) + (" …" if len(r.features) > 12 else "")
            out.append(f"features: {feats}   enter: their shifts and pairs", style="dim")
        self.query_one("#concept-detail", Static).update(out)

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._detail()

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_features()

    # -- actions --------------------------------------------------------------------------------

    def action_features(self) -> None:
        r = self.current()
        if r is not None:
            self.post_message(Open("concept.features", r.shift.concept, r.name))
    def action_toggle_grouped(self) -> None:
        if self.view is None:
            return
        self.grouped_only = not self.grouped_only
        self._list()

    def action_plan(self) -> None:
        from tui.screens.dialogs import PlanTarget

        r = self.current()
        if r is not None:
            self.app.propose_plan(PlanTarget(r.shift.concept, r.name, tuple(r.features), f"concept {r.shift.concept}"))


class ConceptFeaturesScreen(DataScreen):
    """A concept's features with their per-feature shift (the Shifts numbers); Enter lists the pairs
    that drive one, i plans an intervention on the whole concept."""

    SCREEN_TITLE = "Concept"
    LEGEND = (
        ("feat", "SAE feature id"),
        ("shift", "mean of chosen - rejected activation; a→b: without marked pairs"),
        ("d", "effect size (Cohen's d)"),
        ("n", "pairs where the feature fires in either reply"),
        ("label", "published label, else tokens it fires on → tokens it promotes"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", id="concept.back"),
        Binding("enter", "open_feature", "Open the feature's pairs", show=False, id="concept.open"),
        Binding("i", "plan", "Plan", id="concept.plan"),
    ]

    def __init__(self, concept: int, name: str = "") -> None:
        super().__init__()
        self.concept = concept
        self.concept_name = name
        self.features: ConceptFeatures | None = None

    def compose_body(self) -> ComposeResult:
        yield Label("", id="concept-features-caption")
        yield KeyTable("feat", "shift", "d", "n", "label", id="concept-features")

    def on_mount(self) -> None:
        super().on_mount()
        self.set_title(line(f"Concept {self.concept} · {self.concept_name or 'its features'} · per-feature shifts"))
        table = self.query_one("#concept-features", KeyTable)
        table.loading = True
        table.focus()
        self._load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="concept-features",
          description="reading the concept's features")
    def _load(self) -> None:
        features = self.app.session.concept_features(self.concept)
        if not get_current_worker().is_cancelled:
            self.post_message(ConceptFeaturesReady(features))

    @on(ConceptFeaturesReady)
    def _ready(self, event: ConceptFeaturesReady) -> None:
        self.features = event.features
        table = self.query_one("#concept-features", KeyTable)
        table.loading = False
        table.focus()
        self._fill()

    def _fill(self) -> None:
        cf = self.features
        if cf is None:
            return
        self.query_one("#concept-features", KeyTable).refill(
            (
                str(f.feature),
                (
                    f"#{f.feature}",
                    before_after(*f.shift),
                    before_after(*f.effect),
                    before_after(*f.n_firing, fmt=count),
                    line(f.label, 60),
                ),
            )
            for f in cf.features
        )
        n = len(cf.features)
        self.query_one("#concept-features-caption", Label).update(
            line(f"{n} feature{'s' * (n != 1)}, largest |shift| first · enter: the pairs that drive one")
        )

    def triage_changed(self, triage: TriageState | None) -> None:
        if self.features is not None:
            self._load()  # the after numbers

    def _current(self):
        if self.features is None:
            return None
        key = self.query_one("#concept-features", KeyTable).current_key()
        return next((f for f in self.features.features if str(f.feature) == key), None)

    @on(DataTable.RowSelected)
    def action_open_feature(self) -> None:
        f = self._current()
        if f is not None:
            self.post_message(Open("pairs.feature", f.feature, f.label))
    def action_plan(self) -> None:
        from tui.screens.dialogs import PlanTarget

        if self.features is not None:
            cf = self.features
            self.app.propose_plan(
                PlanTarget(cf.concept, cf.name, tuple(f.feature for f in cf.features), f"concept {cf.concept}")
            )
