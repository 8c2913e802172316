"""Groupings: the pairs grouped by k-means on their SAE features (or on their MiniLM embedding), each
cluster with what sets it apart; opened from Compare (the SAE-vs-embedding comparison sets the same
two groupings side by side). The data clusters the hypotheses read are on Clusters (5)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label, Static
from textual.worker import get_current_worker

from core.data.textsafe import one_line
from core.views import TriageState, WorkspaceInfo
from tui.format import count, line, number, signed
from tui.messages import ClustersReady, Open
from tui.screens.base import DataScreen
from tui.widgets.tables import KeyTable

class GroupingScreen(DataScreen):
    """One row per k-means cluster; Enter lists its pairs, c marks it, e switches SAE / embedding
    clusters, Escape goes back to Compare."""

    SCREEN_TITLE = "Groupings"
    LEGEND = (
        ("id", "cluster number, largest cluster first"),
        ("size", "pairs in the cluster"),
        ("✗", "pairs of the cluster marked for removal"),
        ("contrast", "top feature's activity inside minus outside the cluster"),
        ("activity", "(chosen + rejected) / 2 of a feature's mean activation"),
        ("top features", "the features with the largest contrast"),
        ("shifts harder", "features whose delta is larger inside than outside"),
        ("q", "Benjamini-Hochberg q of Welch's t-test (listed: q < 0.05)"),
        ("k", "one k for both groupings: the SAE grouping's silhouette choice"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", id="grouping.back"),
        Binding(
            "enter", "open_cluster", "Open the cluster's pairs", show=False, id="grouping.open"
        ),
        Binding("c", "mark_cluster", "Mark", id="grouping.mark"),
        Binding(
            "C",
            "mark_cluster_reason",
            "Mark cluster with reason",
            show=False,
            id="grouping.mark_reason",
        ),
        Binding("e", "switch_by", "SAE/embedding", id="grouping.by"),
    ]

    def __init__(self, by: str = "sae") -> None:
        super().__init__()
        self.by = by
        self.clustering = None  # core.analysis.clusters.Clustering
        self.open_when_ready = False  # Enter was pressed while clustering: open the cluster then

    def compose_body(self) -> ComposeResult:
        yield Label("", id="clusters-caption")
        yield KeyTable("id", "size", "✗", "contrast", "top features", id="clusters")
        yield Static("", id="cluster-detail")

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        self.clustering = None
        if info is None:
            self.query_one("#clusters-caption", Label).update("no workspace open")
            return
        self._load()

    def _load(self) -> None:
        self.set_title(
            f"Groupings · k-means on {'SAE features' if self.by == 'sae' else 'MiniLM embedding'}"
        )
        self.query_one("#clusters", KeyTable).loading = True
        self.query_one("#clusters-caption", Label).update("clustering…")
        self._cluster(self.by)

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="clusters",
        description="clustering pairs",
    )
    def _cluster(self, by: str) -> None:
        clustering = self.app.session.clusters(by)
        if not get_current_worker().is_cancelled:
            self.post_message(ClustersReady(clustering))

    @on(ClustersReady)
    def _ready(self, event: ClustersReady) -> None:
        self.clustering = event.clustering
        table = self.query_one("#clusters", KeyTable)
        table.loading = False
        table.focus()
        self._fill()
        if self.open_when_ready:
            self.open_when_ready = False
            self.action_open_cluster()

    def _fill(self) -> None:
        c = self.clustering
        if c is None:
            return
        self.query_one("#clusters-caption", Label).update(
            f"k = {c.k} {c.by} clusters (the SAE grouping's silhouette choice), largest first"
            " · ? explains the columns"
        )
        marked = self.triage.marked if self.triage else frozenset()

        def cells(cl):
            n_marked = len(marked.intersection(cl.source_indices))
            top = cl.top_features[0] if cl.top_features else None
            feats = "; ".join(f"#{f.feature} {f.label}" for f in cl.top_features[:2])
            return (
                str(cl.id),
                count(cl.size),
                Text(count(n_marked), style="bold red") if n_marked else "",
                signed(top.contrast) if top else "",
                line(feats, 60),
            )

        self.query_one("#clusters", KeyTable).refill((str(cl.id), cells(cl)) for cl in c.clusters)
        self._detail()

    def _current(self):
        if self.clustering is None:
            return None
        key = self.query_one("#clusters", KeyTable).current_key()
        return next((cl for cl in self.clustering.clusters if str(cl.id) == key), None)

    def _detail(self) -> None:
        cl = self._current()
        out = Text()
        if cl is not None:
            out.append(f"cluster {cl.id}: {count(cl.size)} pairs · representative: ", style="bold")
            out.append(" ".join(f"#{s}" for s in cl.representative) + "\n")
            out.append("sets it apart: ", style="dim")
            apart = "; ".join(
                f"#{f.feature} {one_line(f.label, 24)} ({signed(f.contrast)})" for f in cl.top_features[:4]
            )
            out.append_text(line(apart or "-"))
            out.append("\nshifts harder here: ", style="dim")
            harder = "; ".join(
                f"#{f.feature} {one_line(f.label, 24)} ({signed(f.contrast)}, q {number(f.q_value)})"
                for f in cl.shift_contrast[:3]
            )
            out.append_text(line(harder or "no feature (q < 0.05)"))
        self.query_one("#cluster-detail", Static).update(out)

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._detail()

    def triage_changed(self, triage: TriageState | None) -> None:
        self._fill()

    # -- actions --------------------------------------------------------------------------------

    @on(DataTable.RowSelected)
    def action_open_cluster(self) -> None:
        if self.clustering is None:  # still clustering: a keypress is not lost
            self.open_when_ready = True
            self.query_one("#clusters-caption", Label).update("clustering… (Enter: opens the first cluster when done)")
            return
        cl = self._current()
        if cl is not None:
            self.post_message(Open("pairs.cluster", cl, self.by))
    def _propose(self, ask_reason: bool) -> None:
        cl, by = self._current(), self.by
        if cl is not None:
            self.propose(lambda session: session.select(cluster=cl.id, by=by), ask_reason)

    def action_mark_cluster(self) -> None:
        """Preview the cluster's pairs (and what marking them does), mark them when accepted."""
        self._propose(False)

    def action_mark_cluster_reason(self) -> None:
        self._propose(True)

    def action_switch_by(self) -> None:
        if self.app.info is None:
            return
        self.by = "embedding" if self.by == "sae" else "sae"
        self._load()

