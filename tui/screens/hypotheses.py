"""Hypotheses (the landing screen) and the prompt-conditioned view: "in this region of the data, the
preference labels select for (against) this concept", ranked, with Δ, d and the split-half check.

The first time a workspace opens its structure (concepts, data clusters, prompt groups) and names are
fitted and cached in the workspace (the job panel shows the stages; Escape cancels); later opens read
them back. Marks re-rank at once through the engine's incremental what-if: nothing is refitted.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label, Static
from textual.worker import get_current_worker

from core.views import HypothesisKey, Kind, TriageState, WorkspaceInfo
from core.views import format_q as q_text
from tui.format import around, concept_text, count, line, number, safe, signed, text_widths
from tui.messages import EvidenceReady, HypothesesReady, Open
from tui.screens.base import DIVIDER, DataScreen, with_engine
from tui.widgets.job import JobPanel
from tui.widgets.tables import KeyTable

TOP = 50  # hypotheses ranked
N_DRIVING = 10  # driving pairs a mark takes (the engine lists 10)
NARROW = 100  # below: shorter name columns
COLUMNS = ("#", "q", "moving", "Δ", "✓", "n", "concept", "where")
KINDS = (None, *Kind)  # v cycles the kind shown (None: every kind, one ranking)
FIXED_WIDTH = 44  # characters of the columns but concept and where, their padding and the scroll bar

LEGEND = (
    ("#", "rank: the established first, then the rest; each by the smaller |Δ| of the two split"
          " halves, shrunk for small groups"),
    ("q", "Benjamini–Hochberg q over every (group, concept) cell tested: each row against labels"
          " swapped at random and, for clusters and prompt concepts, membership drawn at random among"
          " the pairs where the concept moves; established below 0.1. '…' while marks re-rank"),
    ("moving", "pairs of the group moving the concept Δ's way / pairs where it differs at all"),
    ("Δ", "mean u inside the group minus outside; u = share of the concept's features firing in"
          " the chosen reply minus in the rejected one (> 0: DPO is predicted to amplify it there)"),
    ("✓", "split-half agreement: Δ on the even and on the odd pairs both have Δ's sign"),
    ("n", "pairs in the group (marked pairs left out)"),
    ("concept", "↑ chosen replies have more of it, ↓ less; its keyword name"),
    ("where", "the group: a data cluster, the prompts that express a prompt concept, or wherever"
              " the concept appears at all"),
    ("plan", "i saves an intervention on the concept in the workspace;"
             " datadebug train-dpo DATA --out DIR --plan WS applies it"),
)


def where_text(h) -> str:
    """The group of a hypothesis in a few words."""
    return Kind(h.kind).short(h.group, h.group_name)


def nothing_established(rep, concepts) -> Text:
    """What the landing view says when no hypothesis is established: what the data could have shown,
    and which global concept shifts are established (`concepts`, core.views.ConceptsView, or None).
    Each line fits 80 columns."""
    out = Text(f"nothing established at this data size (a finding needs ≈ {rep.detectable_pairs} pairs all"
               " one way)", style="bold")
    if concepts is not None and concepts.rows:
        names = ", ".join(f"«{r.name or r.shift.concept}» {'↑' if r.shift.shift > 0 else '↓'} q {q_text(r.shift.q)}"
                          for r in concepts.rows[:4])
        out.append_text(Text("\nestablished global shifts (Concepts, 2): ") + safe(names))
    elif concepts is not None:
        out.append(f"\nno global concept shift established either (it could show ≥ {concepts.detectable_d:.2f} SD)")
    return out


class HypothesesScreen(DataScreen):
    """Ranked hypotheses; Enter opens the driving pairs, m marks them, f lists the concept's features,
    i plans an intervention on the concept."""

    SCREEN_TITLE = "Hypotheses"
    KIND: ClassVar[str | None] = None  # one view of the engine (None: every kind in one ranking)
    WHAT = "what DPO is predicted to teach, and where"
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (NARROW, "-wide")]
    LEGEND = LEGEND
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_pairs", "Open the driving pairs", show=False, id="hypotheses.open"),
        Binding("m", "mark", "Mark drivers", id="hypotheses.mark"),
        Binding(
            "M", "mark_reason", "Mark drivers with reason", show=False,
            id="hypotheses.mark_reason",
        ),
        Binding("f", "features", "Features", id="hypotheses.features"),
        Binding("i", "plan", "Plan", id="hypotheses.plan"),
        Binding("v", "kind", "Kind", id="hypotheses.kind"),
        Binding("r", "reload", "Reload", show=False, id="hypotheses.reload"),
        Binding("escape", "cancel", "Cancel the fit", show=False, id="hypotheses.cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.report = None  # core.analysis.hypotheses.HypothesisReport
        self.concepts = None  # core.views.ConceptsView: the established global concept shifts
        self._ranked_without: frozenset[int] = frozenset()
        self.kind: str | None = self.KIND  # the kind shown (v cycles it)
        self.evidence: dict[tuple, tuple] = {}  # (key, driving pairs) -> exemplar snippets
        self._evidence_asked: set[tuple] = set()
        self._stale = False  # the marks changed since the ranking shown: its q are not current

    def compose_body(self) -> ComposeResult:
        yield JobPanel(id="hypotheses-job")
        yield Label("", id="hypotheses-caption")
        yield KeyTable(*COLUMNS, id="hypotheses")
        yield Static("", id="hypothesis-detail")

    # -- data -----------------------------------------------------------------------------------

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        self.report = None
        if info is None:
            self.query_one("#hypotheses-caption", Label).update("no workspace open: press 9 to index a dataset")
            return
        self.set_title(line(f"{self.SCREEN_TITLE} · {self.WHAT} · {info.dataset_name}"))
        self.action_reload()

    def action_reload(self) -> None:
        """Load the engine (fitting the structure the first time, with progress), then rank."""
        if self.app.info is None:
            return
        if not self.app.session.has_hypotheses:
            self.query_one("#hypotheses-caption", Label).update(
                "first open of this workspace: fitting concepts, data clusters and names (cached after)"
            )
        kind = self.kind
        with_engine(self, "reading the hypotheses", self._rank,
                    lambda session, excluded: session.landing(top=TOP, kind=kind, excluded=excluded),
                    HypothesesReady)

    def action_cancel(self) -> None:
        self.query_one(JobPanel).cancel()

    def triage_changed(self, triage: TriageState | None) -> None:
        if self.report is not None and triage is not None and triage.marked != self._ranked_without:
            self._stale = True  # shown as refreshing until the new ranking arrives: never stale q as current
            self._fill()
            self._rank()
        elif self.report is not None:
            self._fill()

    @work(thread=True, exclusive=True, exit_on_error=False, group="hypotheses",
          description="ranking hypotheses")
    def _rank(self) -> None:
        session = self.app.session
        excluded = session.marked()
        landing = session.landing(top=TOP, kind=self.kind, excluded=excluded)
        if not get_current_worker().is_cancelled:
            self.post_message(HypothesesReady(landing, excluded))

    @on(HypothesesReady)
    def _ready(self, event: HypothesesReady) -> None:
        self.report, self.concepts = event.landing.hypotheses, event.landing.concepts
        self._ranked_without = event.excluded
        t = self.triage
        self._stale = t is not None and t.marked != event.excluded
        table = self.query_one("#hypotheses", KeyTable)
        if not isinstance(self.focused, KeyTable):
            table.focus()
        self._fill()
        if self._stale:  # marks changed while it ranked
            self._rank()

    # -- rendering ------------------------------------------------------------------------------

    def _fill(self) -> None:
        rep = self.report
        if rep is None:
            return
        # the concept and where columns share what the others leave, so both stay whole or cut with "…"
        concept_w, where_w = text_widths(self.size.width or 120, FIXED_WIDTH, (0.45, 0.55), most=48)
        marked = self.triage.marked if self.triage else frozenset()

        stale = self._stale

        def cells(h):
            return (
                str(h.rank),
                Text("…" if stale else q_text(h.q), style="bold" if h.established and not stale else "dim"),
                f"{h.n_support}/{h.n_moving}",
                Text(signed(h.delta), style="green" if h.delta > 0 else "red"),
                "✓" if h.halves_agree else "",
                count(h.n),
                concept_text(h, concept_w),
                line(where_text(h), where_w),
            )

        def rows():
            divided = False
            for h in rep.hypotheses:
                if not h.established and not divided:
                    divided = True
                    note = f"── not established at this data size (q ≥ {rep.fdr:g})"
                    yield DIVIDER, ("", "", "", "", "", "", line(note, concept_w, style="dim italic"), "")
                yield str(HypothesisKey.of(h)), cells(h)

        self.query_one("#hypotheses", KeyTable).refill(rows())
        basis = (
            f"ranked on {count(rep.n_pairs)} kept pairs ({count(rep.n_excluded)} marked left out)"
            if rep.n_excluded
            else f"ranked on all {count(rep.n_pairs)} pairs"
        )
        sure = ("q refreshing for the new marks…" if stale else
                f"{count(rep.n_established)} established (q < {rep.fdr:g}) of {count(rep.n_tested)} cells tested")
        parts = [sure, basis, f"{rep.k} data clusters", f"{count(rep.n_concepts)} concepts ({rep.n_grouped} of ≥ 4 features)",
                 f"{rep.n_prompt_groups} prompt concepts"]
        if self.kind is not None:
            parts.insert(0, f"{self.kind} rows only (v: next kind)")
        if not rep.hypotheses:
            parts.insert(1, self.EMPTY)
        caption = line(" · ".join(parts))
        if rep.n_established == 0 and not stale:
            caption = Text.assemble(caption, "\n", nothing_established(rep, self.concepts))
        self.query_one("#hypotheses-caption", Label).update(caption)
        self._detail(marked)

    EMPTY = "no hypothesis has agreeing halves and enough supporting pairs"

    def on_resize(self) -> None:
        self.call_after_refresh(self._fill)

    def current(self):
        """The hypothesis under the cursor, None when there is none."""
        if self.report is None:
            return None
        key = self.query_one("#hypotheses", KeyTable).current_key()
        return next((h for h in self.report.hypotheses if str(HypothesisKey.of(h)) == key), None)

    def _detail(self, marked=frozenset()) -> None:
        h = self.current()
        out = Text()
        if h is not None:
            out.append_text(safe(h.sentence))  # wraps: the whole sentence is the point
            out.append("\n")
            agree = "✓" if h.halves_agree else "✗"
            n_feats = len(h.features)
            sure = ("q refreshing…" if self._stale else
                    f"{'established' if h.established else 'not established'} · p {q_text(h.p)} · q {q_text(h.q)}")
            out.append(
                f"{sure} · score {number(h.score)} · halves {signed(h.delta_a)} / {signed(h.delta_b)} {agree} · "
                f"{count(h.n_support)} of {count(h.n_moving)} pairs where it differs go this way ({count(h.n)} in "
                f"the group) · {n_feats} feature{'s' * (n_feats != 1)}\n"
            )
            out.append("driving pairs: ", style="dim")
            for p in h.driving:
                gone = p.source_index in marked
                out.append(f"#{p.source_index}" + ("✗" if gone else ""), style="red" if gone else "")
                out.append(f"({signed(p.u)}) ", style="dim")
            out.append_text(self._evidence_text(h))
        self.query_one("#hypothesis-detail", Static).update(out)

    # -- evidence: the concept's strongest snippets in the driving pairs -----------------------------

    @staticmethod
    def _evidence_key(h) -> tuple:
        return (str(HypothesisKey.of(h)), tuple(p.source_index for p in h.driving))

    def _evidence_text(self, h) -> Text:
        out = Text("\n")
        snippets = self.evidence.get(self._evidence_key(h))
        if snippets is None:
            key = self._evidence_key(h)
            if key not in self._evidence_asked:  # one read per row; a row visited again is cached
                self._evidence_asked.add(key)
                self._load_evidence(h, key)
            return out.append("evidence: reading…", style="dim")
        if not snippets:
            return out.append("evidence: the concept's features store no firing in these pairs", style="dim")
        width = self.query_one("#hypothesis-detail", Static).content_region.width or 100
        for i, s in enumerate(snippets):
            head = f"{s.side:>8} #{s.source_index} " + (f"u {signed(s.u)} " if s.u is not None else "")
            out.append(head, style="green" if s.side == "chosen" else "red")
            before, span, after = around(s.before, s.span, s.after, width - len(head) - 1)
            out.append(before)
            out.append(span, style="bold reverse")
            out.append(after + ("\n" if i < len(snippets) - 1 else ""))
        return out

    # Not exclusive: moving on must not cancel a read another row is waiting for.
    @work(thread=True, exit_on_error=False, group="evidence", description="reading the concept's exemplars")
    def _load_evidence(self, h, key: tuple) -> None:
        snippets = self.app.session.evidence(h)
        if not get_current_worker().is_cancelled:
            self.post_message(EvidenceReady(key, snippets))

    @on(EvidenceReady)
    def _evidence_ready(self, event: EvidenceReady) -> None:
        self.evidence[event.key] = event.snippets
        h = self.current()
        if h is not None and self._evidence_key(h) == event.key:
            self._detail(self.triage.marked if self.triage else frozenset())

    def action_kind(self) -> None:
        """Show the next kind of hypothesis: all, data clusters, prompt concepts, concepts."""
        self.kind = KINDS[(KINDS.index(self.kind) + 1) % len(KINDS)]
        self.notify(f"showing {self.kind or 'every kind of'} hypotheses", timeout=2)
        self.query_one("#hypotheses", KeyTable).lose_to_top()
        self.action_reload()

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._detail(self.triage.marked if self.triage else frozenset())

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_open_pairs()

    # -- actions --------------------------------------------------------------------------------

    def action_open_pairs(self) -> None:
        h = self.current()
        if h is not None:
            self.post_message(Open("pairs.hypothesis", h))
    def _propose(self, ask_reason: bool) -> None:
        h = self.current()
        if h is not None:
            key = HypothesisKey.of(h)
            self.propose(lambda session: session.select(hypothesis=key, top=N_DRIVING), ask_reason)

    def action_mark(self) -> None:
        """Preview the hypothesis' driving pairs not marked yet (and how its Δ and rank would move),
        mark them when accepted."""
        self._propose(False)

    def action_mark_reason(self) -> None:
        self._propose(True)

    def action_features(self) -> None:
        h = self.current()
        if h is not None:
            self.post_message(Open("concept.features", h.concept, h.concept_name))
    def action_plan(self) -> None:
        from tui.screens.dialogs import PlanTarget

        h = self.current()
        if h is not None:
            self.app.propose_plan(
                PlanTarget(h.concept, h.concept_name, tuple(h.features),
                           f"hypothesis {h.rank} ({HypothesisKey.of(h)})")
            )


class PromptHypothesesScreen(HypothesesScreen):
    """The prompt-conditioned view alone: "when the prompt is about A, chosen replies have more R"."""

    SCREEN_TITLE = "Prompts"
    KIND = "prompt"
    WHAT = "hypotheses conditioned on what the prompt is about"
    EMPTY = "no prompt-conditioned hypothesis (prompt concepts need ≥ 4 co-firing prompt features)"
