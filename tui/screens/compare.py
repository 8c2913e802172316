"""Compare: SAE clusters against embedding clusters (ARI, NMI) and where each SAE cluster's pairs fall."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Label, Static
from textual.worker import get_current_worker

from tui.messages import CompareReady
from tui.screens.base import DataScreen, snippet
from tui.services import CompareView, WorkspaceInfo, available
from tui.widgets.tables import KeyTable

EXPLAIN = (
    "ARI / NMI near 1: the SAE groups pairs as their text embedding does (it adds little); "
    "near 0: it sees structure the embedding does not."
)


class CompareScreen(DataScreen):
    SCREEN_TITLE = "Compare · SAE clusters vs embedding clusters"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "refresh", "Recompute", id="compare.refresh")
    ]

    def __init__(self) -> None:
        super().__init__()
        self.compare: CompareView | None = None

    def compose_body(self) -> ComposeResult:
        yield Label("", id="compare-scores")
        yield Static(EXPLAIN, id="compare-explain")
        yield KeyTable("SAE cluster", "size", "top feature", id="compare")

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        scores = self.query_one("#compare-scores", Label)
        if info is None:
            scores.update("no workspace open")
        elif not available("clusters"):
            scores.update("the comparison is not available yet in this build (core/clusters.py)")
        else:
            self.action_refresh()

    def action_refresh(self) -> None:
        if self.app.info is None or not available("clusters"):
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
        result = self.app.services.compare()
        if not get_current_worker().is_cancelled:
            self.post_message(CompareReady(result))

    @on(CompareReady)
    def _ready(self, event: CompareReady) -> None:
        c = self.compare = event.compare
        self.query_one("#compare-scores", Label).update(
            f"ARI {c.ari:.3f} · NMI {c.nmi:.3f} · k = {c.k} each · {c.n_pairs} pairs"
        )
        table = self.query_one("#compare", KeyTable)
        table.loading = False
        table.clear(columns=True)
        table.add_columns(
            "SAE cluster", "size", "top feature", *[f"emb {j}" for j in range(c.k)], "purity"
        )
        for cid, size, label, spread in c.sae_to_embedding:
            counts = [spread.get(j, 0) for j in range(c.k)]
            purity = max(counts) / size if size else 0.0
            table.add_row(
                str(cid),
                str(size),
                snippet(label, 22),
                *[str(n) if n else "·" for n in counts],
                f"{purity:.0%}",
                key=str(cid),
            )
        table.focus()
