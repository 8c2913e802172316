"""Compare: SAE clusters against embedding clusters (ARI, NMI) and where each SAE cluster's pairs fall.

Both groupings are k-means with the workspace's one k (the SAE grouping's silhouette choice); Enter on
a row lists that SAE cluster's pairs, K opens the groupings themselves (each cluster with what sets it
apart, e switches SAE / embedding). They are not the data clusters the hypotheses read (Clusters, 5).
"""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label, Static
from textual.worker import get_current_worker

from core.views import CompareView, WorkspaceInfo
from tui.format import count, line, number
from tui.messages import CompareReady, Open
from tui.screens.base import DataScreen
from tui.widgets.tables import KeyTable

EXPLAIN = (
    "ARI / NMI near 1: the SAE groups pairs as their text embedding does (it adds little); "
    "near 0: it sees structure the embedding does not. Enter lists a cluster's pairs; K shows each "
    "grouping's clusters with what sets them apart."
)


class CompareScreen(DataScreen):
    SCREEN_TITLE = "Compare · SAE clusters vs embedding clusters"
    LEGEND = (
        ("ARI", "adjusted Rand index of the groupings: 1 same, 0 as by chance"),
        ("NMI", "normalised mutual information: 1 same, 0 independent"),
        ("k", "clusters per side: the SAE silhouette choice, as on Groupings (K)"),
        ("SAE cluster", "its number on Groupings (K), SAE side"),
        ("size", "pairs in the cluster"),
        ("top feature", "its most characteristic SAE feature"),
        ("emb j", "how many of its pairs fall in embedding cluster j"),
        ("purity", "share of its pairs in its largest embedding cluster"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_cluster", "Open the cluster's pairs", show=False, id="compare.open"),
        Binding("r", "refresh", "Recompute", id="compare.refresh"),
        Binding("K", "groupings", "Groupings", id="compare.groupings"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.compare: CompareView | None = None
        self.clustering = None  # the SAE grouping (core.analysis.clusters.Clustering) the rows are of

    def compose_body(self) -> ComposeResult:
        yield Label("", id="compare-scores")
        yield Static(EXPLAIN, id="compare-explain")
        yield KeyTable("SAE cluster", "size", "top feature", id="compare")

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        if info is None:
            self.query_one("#compare-scores", Label).update("no workspace open")
        else:
            self.action_refresh()

    def action_refresh(self) -> None:
        if self.app.info is None:
            return
        self.query_one("#compare", KeyTable).loading = True
        self.query_one("#compare-scores", Label).update("clustering both ways…")
        self._compare()

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="compare",
        description="comparing clusterings",
    )
    def _compare(self) -> None:
        session = self.app.session
        result = session.compare_view()
        clustering = session.clusters("sae", result.k)
        if not get_current_worker().is_cancelled:
            self.post_message(CompareReady(result, clustering))

    @on(CompareReady)
    def _ready(self, event: CompareReady) -> None:
        c = self.compare = event.compare
        self.clustering = event.clustering
        self.query_one("#compare-scores", Label).update(
            f"ARI {number(c.ari)} · NMI {number(c.nmi)} · k = {c.k} each · {count(c.n_pairs)} pairs"
        )
        table = self.query_one("#compare", KeyTable)
        table.loading = False
        table.set_columns(
            ("SAE cluster", "size", "top feature", *[f"emb {j}" for j in range(c.k)], "purity")
        )
        rows = []
        for r in c.rows:
            counts = [r.spread.get(j, 0) for j in range(c.k)]
            purity = max(counts) / r.size if r.size else 0.0
            cells = (
                str(r.cluster),
                count(r.size),
                line(r.label, 22),
                *[count(n) if n else "·" for n in counts],
                f"{purity:.0%}",
            )
            rows.append((str(r.cluster), cells))
        table.refill(rows)
        table.focus()

    def action_groupings(self) -> None:
        """The SAE and embedding groupings, each cluster with its features (the old Clusters view)."""
        if self.app.info is not None:
            self.post_message(Open("grouping", "sae"))

    @on(DataTable.RowSelected)
    def action_open_cluster(self) -> None:
        key = self.query_one("#compare", KeyTable).current_key()
        if self.clustering is None or key is None:
            return
        cluster = next((cl for cl in self.clustering.clusters if str(cl.id) == key), None)
        if cluster is not None:
            self.post_message(Open("pairs.cluster", cluster, "sae"))