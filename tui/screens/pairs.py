"""A list of pairs: the pairs that drive one feature or one hypothesis, or the pairs of one cluster (a
data cluster, or a k-means cluster of a grouping)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label
from textual.worker import get_current_worker

from core.views import HypothesisKey, PairRow, TriageState, format_q
from core.errors import UsageError
from tui.format import before_after, count, line, signed, text_widths
from tui.messages import FeaturePairsReady, HypothesisPairsReady, Open, PairRowsReady
from tui.screens.base import DataScreen
from tui.widgets.tables import KeyTable

N_FEATURE_PAIRS = 20
FIXED_WIDTH = 31  # pair (#12345), ✗, delta, the six columns' padding and the scroll bar


class PairsScreen(DataScreen):
    """Pairs in a table; Enter opens one. Built with `for_feature`, `for_hypothesis`, `for_data_cluster`
    or `for_cluster`."""

    SCREEN_TITLE = "Pairs"
    LEGEND = (
        ("pair", "source index: the record's position in the dataset file"),
        ("✗", "marked for removal"),
        ("delta", "a feature's pairs: its mean activation, chosen minus rejected reply;"
                  " a hypothesis' pairs: u, the share of the concept's features firing in the chosen"
                  " reply minus in the rejected one; a data cluster's pairs: u on the concept of its"
                  " best hypothesis"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", id="pairs.back"),
        Binding("enter", "open_pair", "Open the pair", show=False, id="pairs.open"),
        Binding("m", "mark_pair", "Mark pair", id="pairs.mark"),
        Binding(
            "M", "mark_pair_reason", "Mark pair with reason", show=False, id="pairs.mark_reason"
        ),
        Binding("a", "mark_all", "Mark all", id="pairs.mark_all"),
        Binding(
            "A",
            "mark_all_reason",
            "Mark all listed with reason",
            show=False,
            id="pairs.mark_all_reason",
        ),
    ]

    def __init__(
        self,
        title: str,
        feature: int | None = None,
        cluster=None,
        by: str = "sae",
        hypothesis=None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.feature = feature
        self.cluster = cluster  # a core.views.DataCluster (by "data"), else a core.analysis.clusters.Cluster
        self.by = by
        self.hypothesis = hypothesis  # a core.analysis.hypotheses.Hypothesis
        self.direction = ""
        self.rows: tuple[PairRow, ...] = ()
        self.change = None  # a hypothesis' Δ and rank before -> after the marks (core.views.HypothesisChange)

    @classmethod
    def for_feature(cls, feature: int, label: str) -> PairsScreen:
        return cls(f"Pairs driving feature #{feature} · {label}", feature=feature)

    @classmethod
    def for_hypothesis(cls, h) -> PairsScreen:
        """The driving pairs of a ranked hypothesis (core.analysis.hypotheses.Hypothesis)."""
        return cls(f"Pairs driving hypothesis {h.rank} · {h.sentence}", hypothesis=h)

    @classmethod
    def for_data_cluster(cls, cluster) -> PairsScreen:
        """The pairs of a data cluster (core.views.DataCluster)."""
        name = f" «{cluster.name}»" if cluster.name else ""
        return cls(f"Data cluster {cluster.id}{name} · {count(cluster.size)} pairs", cluster=cluster, by="data")

    @property
    def _best(self):
        """A data cluster's best hypothesis (core.analysis.hypotheses.Hypothesis), None otherwise."""
        hyps = self.cluster.hypotheses if self.by == "data" and self.cluster is not None else ()
        return hyps[0] if hyps else None

    @classmethod
    def for_cluster(cls, cluster, by: str) -> PairsScreen:
        top = cluster.top_features[0] if cluster.top_features else None
        label = f" · {top.label}" if top else ""
        return cls(
            f"{by.upper()} cluster {cluster.id} · {count(cluster.size)} pairs{label}",
            cluster=cluster,
            by=by,
        )

    def compose_body(self) -> ComposeResult:
        yield Label("", id="pairs-caption")
        yield KeyTable("pair", "✗", "delta", "prompt", "chosen", "rejected", id="pairs")

    def on_mount(self) -> None:
        super().on_mount()
        self.set_title(line(self.title_text))
        table = self.query_one("#pairs", KeyTable)
        table.loading = True
        table.focus()
        self._load()

    @work(
        thread=True, exclusive=True, exit_on_error=False, group="pairs", description="reading pairs"
    )
    def _load(self) -> None:
        session = self.app.session
        if self.feature is not None:
            result = session.feature_pairs(self.feature, top=N_FEATURE_PAIRS)
            if not get_current_worker().is_cancelled:
                self.post_message(FeaturePairsReady(result))
        elif self.hypothesis is not None:
            pairs = session.hypothesis_pairs(self.hypothesis)
            try:  # over all pairs, then without the marked ones
                change = session.hypothesis_change(HypothesisKey.of(self.hypothesis), frozenset(), session.marked())
            except UsageError:  # not ranked any more
                change = None
            if not get_current_worker().is_cancelled:
                self.post_message(HypothesisPairsReady(pairs, change))
        else:
            if self.by == "data":
                rows = session.data_cluster_pairs(self.cluster)
            else:
                rows = session.pair_rows(self.cluster.source_indices)
            if not get_current_worker().is_cancelled:
                self.post_message(PairRowsReady(rows))

    @on(FeaturePairsReady)
    def _feature_pairs(self, event: FeaturePairsReady) -> None:
        self.direction = event.pairs.direction
        self._show(event.pairs.rows)

    @on(PairRowsReady)
    def _cluster_pairs(self, event: PairRowsReady) -> None:
        self._show(event.rows)

    @on(HypothesisPairsReady)
    def _hypothesis_pairs(self, event: HypothesisPairsReady) -> None:
        self.change = event.change
        self._show(event.pairs.rows)

    def _show(self, rows: tuple[PairRow, ...]) -> None:
        self.rows = rows
        table = self.query_one("#pairs", KeyTable)
        table.loading = False
        table.focus()  # a loading table gives its focus away
        self._fill()

    def _caption(self) -> Text:
        h = self.hypothesis
        if h is not None:
            name = h.concept_name or f"concept {h.concept}"
            c = self.change
            now = ""
            if c is not None:
                rank = before_after(*(r or 0 for r in c.rank), fmt=lambda r: f"#{r:.0f}" if r else "unranked")
                now = f"Δ {before_after(*c.delta)} · rank {rank} (before → after the marks) · "
            return line(
                f"{now}the {len(self.rows)} pairs that move «{name}» most in Δ's direction"
                f" (u per pair) · enter: the pair with the concept's tokens highlighted"
            )
        if self.by == "data":
            best = self._best
            what = (f"its best hypothesis (#{best.rank}, q {format_q(best.q)}): {best.sentence} · delta: u on"
                    f" «{best.concept_name or best.concept}»" if best else "no hypothesis is ranked in it")
            return line(f"{len(self.rows)} pairs · {what}")
        if self.feature is None:
            feats = "; ".join(f"#{f.feature} {f.label}" for f in self.cluster.top_features[:3])
            return line(f"top features: {feats or '(none)'}")
        t = self.triage
        shift = (
            before_after(t.before.shift[self.feature], t.after.shift[self.feature])
            if t is not None
            else ""
        )
        return line(f"{self.direction} · shift {shift} · the {len(self.rows)} pairs pushing it hardest")

    def on_resize(self) -> None:
        if self.rows:
            self.call_after_refresh(self._fill)

    def _fill(self) -> None:
        self.query_one("#pairs-caption", Label).update(self._caption())
        # prompt, chosen and rejected share what the other columns leave: both replies stay in view
        prompt_w, chosen_w, rejected_w = text_widths(self.size.width or 120, FIXED_WIDTH, (0.26, 0.37, 0.37))
        self.query_one("#pairs", KeyTable).refill(
            (
                str(r.source_index),
                (
                    f"#{r.source_index}",
                    Text("✗", style="bold red") if self.is_marked(r.source_index) else "",
                    signed(r.delta) if r.delta is not None else "",
                    line(r.prompt, prompt_w),
                    line(r.chosen, chosen_w),
                    line(r.rejected, rejected_w),
                ),
            )
            for r in self.rows
        )

    def triage_changed(self, triage: TriageState | None) -> None:
        if self.rows:
            self._fill()
        if self.rows and self.hypothesis is not None:  # its Δ and rank without the marks, again
            self._load()

    def _current(self) -> int | None:
        key = self.query_one("#pairs", KeyTable).current_key()
        return int(key) if key is not None else None

    @property
    def _scope(self) -> str:
        if self.feature is not None:
            return f"feature {self.feature} top {len(self.rows)}"
        if self.hypothesis is not None:
            return f"hypothesis {HypothesisKey.of(self.hypothesis)} drivers"
        return f"cluster {self.by}:{self.cluster.id}"

    @property
    def _features(self) -> tuple[int, ...]:
        if self.feature is not None:
            return (self.feature,)
        if self.hypothesis is not None:
            return tuple(self.hypothesis.features)
        if self.by == "data":
            return tuple(self._best.features[:3]) if self._best else ()
        return tuple(f.feature for f in self.cluster.top_features[:3])

    # -- actions --------------------------------------------------------------------------------

    @on(DataTable.RowSelected)
    def action_open_pair(self) -> None:
        current = self._current()
        if current is None:
            return
        siblings = tuple(r.source_index for r in self.rows)
        if self.hypothesis is not None:
            self.post_message(Open("pair", current, pair_list=siblings, concept=self.hypothesis.concept))
            return
        if self.by == "data":
            concept = self._best.concept if self._best else None
            self.post_message(Open("pair", current, pair_list=siblings, concept=concept))
            return
        feature = self.feature
        if feature is None and self.cluster.top_features:
            feature = self.cluster.top_features[0].feature
        self.post_message(Open("pair", current, feature, siblings))
    def action_mark_pair(self) -> None:
        current = self._current()
        if current is not None:
            self.toggle_mark(current, self._features[:1])

    def action_mark_pair_reason(self) -> None:
        current = self._current()
        if current is not None:
            self.propose_pairs([current], "pair", self._features[:1], ask_reason=True)

    def _propose_all(self, ask_reason: bool) -> None:
        key = HypothesisKey.of(self.hypothesis) if self.hypothesis is not None else None
        self.propose_pairs(
            [r.source_index for r in self.rows], self._scope, self._features, ask_reason, key
        )

    def action_mark_all(self) -> None:
        self._propose_all(False)

    def action_mark_all_reason(self) -> None:
        self._propose_all(True)
