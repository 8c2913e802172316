"""Clusters: the data clusters the hypotheses read (their "cluster N" rows), each with its name, its size
and what the preference labels select there.

The clusters are those fitted once with the workspace's structure and cached (core.analysis.structure):
nothing is clustered again on launch. The first open of a workspace fits the structure in the job
panel (Escape cancels), as Hypotheses does. The k-means groupings by SAE features and by MiniLM
embedding are under Compare (6), which sets them side by side.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label, Static
from textual.worker import get_current_worker

from core.views import DataClustersView, TriageState, WorkspaceInfo
from core.views import format_q as q_text
from tui.format import concept_text, count, line, safe, signed, text_widths
from tui.messages import DataClustersReady, Open
from tui.screens.base import DataScreen, with_engine
from tui.widgets.job import JobPanel
from tui.widgets.tables import KeyTable

PER_CLUSTER = 3  # hypotheses shown per cluster
COLUMNS = ("id", "pairs", "share", "✗", "q", "name", "what the labels select here")
FIXED_WIDTH = 44  # characters of the columns but name and what, their padding and the scroll bar


class ClustersScreen(DataScreen):
    """One row per data cluster; Enter lists its pairs, c marks them."""

    SCREEN_TITLE = "Clusters"
    LEGEND = (
        ("id", "the data cluster's number, as Hypotheses' cluster rows name it (largest first)"),
        ("pairs", "pairs in the cluster (marked ones included)"),
        ("share", "of the workspace's pairs"),
        ("✗", "pairs of the cluster marked for removal"),
        ("q", "of the cluster's best hypothesis, as Hypotheses ranks it (bold: established, q < 0.1)"),
        ("name", "keyword name from the cluster's prompts' distinctive phrases"),
        ("what the labels select here", "the concept of its best hypothesis: ↑ chosen replies have more of it here, ↓ less"),
        ("clusters", "spherical k-means on concept activity, fitted once with the concepts; the"
                     " least active pairs are in none (silent)"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_cluster", "Open the cluster's pairs", show=False, id="clusters.open"),
        Binding("c", "mark_cluster", "Mark cluster", id="clusters.mark"),
        Binding(
            "C", "mark_cluster_reason", "Mark cluster with reason", show=False,
            id="clusters.mark_reason",
        ),
        Binding("r", "reload", "Reload", show=False, id="clusters.reload"),
        Binding("escape", "cancel", "Cancel the fit", show=False, id="clusters.cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.view: DataClustersView | None = None
        self._ranked_without: frozenset[int] = frozenset()
        self.open_when_ready = False  # Enter was pressed while loading: open the cluster then

    def compose_body(self) -> ComposeResult:
        yield JobPanel(id="clusters-job")
        yield Label("", id="clusters-caption")
        yield KeyTable(*COLUMNS, id="clusters")
        yield Static("", id="cluster-detail")

    # -- data -----------------------------------------------------------------------------------

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        self.view = None
        if info is None:
            self.query_one("#clusters-caption", Label).update("no workspace open")
            return
        self.set_title(line(f"Clusters · the data clusters the hypotheses read · {info.dataset_name}"))
        self.action_reload()

    def action_reload(self) -> None:
        if self.app.info is None:
            return
        self.query_one("#clusters-caption", Label).update("reading the data clusters…")
        self.query_one("#clusters", KeyTable).loading = True
        with_engine(self, "reading the data clusters", self._load,
                    lambda session, excluded: session.data_clusters(PER_CLUSTER, excluded), DataClustersReady)

    def action_cancel(self) -> None:
        self.query_one(JobPanel).cancel()

    @work(thread=True, exclusive=True, exit_on_error=False, group="clusters",
          description="reading the data clusters")
    def _load(self) -> None:
        session = self.app.session
        excluded = session.marked()
        view = session.data_clusters(PER_CLUSTER, excluded)
        if not get_current_worker().is_cancelled:
            self.post_message(DataClustersReady(view, excluded))

    @on(DataClustersReady)
    def _ready(self, event: DataClustersReady) -> None:
        self.view, self._ranked_without = event.view, event.excluded
        table = self.query_one("#clusters", KeyTable)
        table.loading = False
        if not isinstance(self.focused, KeyTable):
            table.focus()
        self._fill()
        t = self.triage
        if t is not None and t.marked != event.excluded:  # marks changed while it read
            self._load()
        if self.open_when_ready:
            self.open_when_ready = False
            self.action_open_cluster()

    def triage_changed(self, triage: TriageState | None) -> None:
        if self.view is None:
            return
        self._fill()  # the ✗ counts at once; q after the hypotheses re-rank without the marks
        if triage is not None and triage.marked != self._ranked_without:
            self._load()

    # -- rendering ------------------------------------------------------------------------------

    def _fill(self) -> None:
        v = self.view
        if v is None:
            return
        name_w, what_w = text_widths(self.size.width or 120, FIXED_WIDTH, (0.45, 0.55), most=48)
        marked = self.triage.marked if self.triage else frozenset()

        def cells(c):
            n_marked = len(marked.intersection(c.source_indices))
            best = c.hypotheses[0] if c.hypotheses else None
            return (
                str(c.id),
                count(c.size),
                f"{c.share:.0%}",
                Text(count(n_marked), style="bold red") if n_marked else "",
                Text(q_text(best.q), style="bold" if best.established else "dim") if best else "",
                line(c.name or "(no name)", name_w),
                concept_text(best, what_w) if best else Text("nothing ranked here", style="dim"),
            )

        self.query_one("#clusters", KeyTable).refill((str(c.id), cells(c)) for c in v.clusters)
        n_est = sum(c.n_established > 0 for c in v.clusters)
        basis = f" (without {count(v.n_excluded)} marked)" if v.n_excluded else ""
        self.query_one("#clusters-caption", Label).update(line(
            f"{len(v.clusters)} data clusters of {count(v.n_pairs)} pairs, {count(len(v.silent))} silent in none"
            f" · {n_est} with an established row{basis}"
        ))
        self._detail()

    def _current(self):
        if self.view is None:
            return None
        key = self.query_one("#clusters", KeyTable).current_key()
        return next((c for c in self.view.clusters if str(c.id) == key), None)

    def _detail(self) -> None:
        """The cluster under the cursor: its name, size and first pairs, then one line per hypothesis
        listed (rank on Hypotheses, q, Δ, pairs going its way, the concept), each cut to the pane."""
        c = self._current()
        out = Text()
        if c is not None:
            width = self.query_one("#cluster-detail", Static).content_region.width or 100
            head = Text(f"cluster {c.id}", style="bold")
            head.append_text(safe(f" «{c.name}»" if c.name else "", style="bold"))
            head.append(f" · {count(c.size)} pairs ({c.share:.0%}) · first: "
                        + " ".join(f"#{s}" for s in c.source_indices[:12]))
            head.truncate(width, overflow="ellipsis")
            out.append_text(head)
            for h in c.hypotheses:
                row = Text(f"#{h.rank:<4} q {q_text(h.q)} ", style="bold" if h.established else "")
                row.append(f"Δ {signed(h.delta)} · {h.n_support}/{h.n_moving} go its way · ", style="dim")
                row.append_text(concept_text(h, max(12, width - row.cell_len)))
                out.append("\n")
                out.append_text(row)
            if c.hypotheses:
                out.append("\n(# its rank on Hypotheses; bold: established) Enter: its pairs · c: mark them",
                           style="dim")
            else:
                out.append("\nno hypothesis is ranked here: none has agreeing halves and enough supporting pairs",
                           style="dim")
        self.query_one("#cluster-detail", Static).update(out)

    def on_resize(self) -> None:
        self.call_after_refresh(self._fill)

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._detail()

    # -- actions --------------------------------------------------------------------------------

    @on(DataTable.RowSelected)
    def action_open_cluster(self) -> None:
        if self.view is None:  # still loading: the keypress is not lost
            self.open_when_ready = True
            self.query_one("#clusters-caption", Label).update(
                "reading the data clusters… (Enter: opens the first cluster when done)")
            return
        c = self._current()
        if c is not None:
            self.post_message(Open("pairs.datacluster", c))

    def _propose(self, ask_reason: bool) -> None:
        c = self._current()
        if c is not None:
            cid = c.id
            self.propose(lambda session: session.select(cluster=cid, by="data"), ask_reason)

    def action_mark_cluster(self) -> None:
        """Preview the cluster's pairs (and what marking them does), mark them when accepted."""
        self._propose(False)

    def action_mark_cluster_reason(self) -> None:
        self._propose(True)
