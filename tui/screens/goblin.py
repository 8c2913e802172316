"""Goblin test: plant goblin sentences in a known share of chosen replies and see what datadebug finds."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Input, Label, ProgressBar, Select, Static
from textual.worker import get_current_worker

from tui.messages import GoblinDone, JobProgress
from tui.screens.base import DataScreen, signed
from tui.services import WorkspaceInfo, available
from tui.widgets.tables import KeyTable

EXPLAIN = (
    "Copies the dataset with a goblin sentence in a share of the chosen replies (the ground truth is kept "
    "outside the workspace), indexes the copy, then checks whether the goblin feature ranks as amplified "
    "and which method finds the planted pairs."
)
TRAIN = "__train__"


class GoblinScreen(DataScreen):
    SCREEN_TITLE = "Goblin test · does datadebug find a planted behaviour?"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+g", "run", "Run test", id="goblin.run"),
        Binding("escape", "cancel", "Cancel run", id="goblin.cancel"),
        Binding("o", "open_planted", "Open planted workspace", id="goblin.open"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._cancel: threading.Event | None = None
        self.result: dict | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(EXPLAIN, id="goblin-explain")
        with Horizontal(classes="form-row"):
            yield Label("rate", classes="form-label")
            yield Input("0.1", id="goblin-rate", classes="form-short", compact=True)
            yield Label("seed", classes="form-label")
            yield Input("0", id="goblin-seed", classes="form-short", compact=True)
            yield Label("limit", classes="form-label")
            yield Input(
                "", placeholder="all", id="goblin-limit", classes="form-short", compact=True
            )
        with Horizontal(classes="form-row"):
            yield Label("SAE", classes="form-label")
            yield Select(
                [("train one on the planted copy (slow)", TRAIN)],
                value=TRAIN,
                allow_blank=False,
                id="goblin-sae",
                compact=True,
            )
        yield Label("enter in a field or ctrl+g runs · escape cancels", id="goblin-status")
        yield ProgressBar(id="goblin-progress", show_eta=False, classes="-idle")
        yield KeyTable("method", "precision", "recall", "detail", id="goblin-results")

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        status = self.query_one("#goblin-status", Label)
        if not available("goblin"):
            status.update("the goblin test is not available yet in this build (core/goblin.py)")
        elif info is not None:
            select = self.query_one("#goblin-sae", Select)
            select.set_options(
                [
                    ("train one on the planted copy (slow)", TRAIN),
                    (f"the workspace's SAE ({info.sae})", info.sae),
                ]
            )
            select.value = info.sae

    @on(Input.Submitted)
    def action_run(self) -> None:
        if not available("goblin"):
            self.notify("the goblin test is not available in this build", severity="warning")
            return
        if self.app.info is None:
            self.notify("open a workspace first", severity="warning")
            return
        try:
            rate = float(self.query_one("#goblin-rate", Input).value)
            seed = int(self.query_one("#goblin-seed", Input).value or 0)
            limit_text = self.query_one("#goblin-limit", Input).value.strip()
            limit = int(limit_text) if limit_text else None
        except ValueError:
            self.notify("rate is a fraction (0.1), seed and limit whole numbers", severity="error")
            return
        if not 0 < rate <= 1:
            self.notify("rate must be above 0 and at most 1", severity="error")
            return
        sae = self.query_one("#goblin-sae", Select).value
        self._cancel = threading.Event()
        bar = self.query_one("#goblin-progress", ProgressBar)
        bar.remove_class("-idle")
        bar.update(total=None, progress=0)
        self.query_one("#goblin-status", Label).update(
            f"planting goblins in {rate:.0%} of the pairs…"
        )
        self._run(rate, seed, limit, None if sae == TRAIN else str(sae), self._cancel)

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="goblin",
        description="the goblin test",
    )
    def _run(
        self, rate: float, seed: int, limit: int | None, sae: str | None, cancel: threading.Event
    ) -> None:
        worker = get_current_worker()

        def progress(p) -> None:
            if worker.is_cancelled:
                cancel.set()
            self.post_message(JobProgress("goblin", p.line(), p.fraction))

        result = self.app.services.goblin(rate, seed, limit, sae, progress=progress, cancel=cancel)
        if not worker.is_cancelled:
            self.post_message(GoblinDone(result))

    @on(JobProgress)
    def _progress(self, event: JobProgress) -> None:
        if event.job != "goblin":
            return
        self.query_one("#goblin-status", Label).update(event.text)
        bar = self.query_one("#goblin-progress", ProgressBar)
        bar.update(
            total=100 if event.fraction is not None else None, progress=100 * (event.fraction or 0)
        )

    @on(GoblinDone)
    def _done(self, event: GoblinDone) -> None:
        self.result = r = event.result
        bar = self.query_one("#goblin-progress", ProgressBar)
        bar.update(total=100, progress=100)
        rank = r.get("goblin_feature_rank")
        ap = r.get("goblin_feature_ap")
        specific = (
            f" (AP {ap:.2f}{'' if r.get('has_goblin_feature') else '; this SAE has no goblin feature'})"
            if ap is not None
            else ""
        )
        self.query_one("#goblin-status", Label).update(
            f"goblins in {r['n_injected']} of {r['n_pairs']} chosen replies · goblin feature "
            f"#{r['goblin_feature']}{specific} ranks {rank if rank is not None else 'nowhere'} of "
            f"{r['n_amplified']} amplified · o opens the planted workspace"
        )

        def pr(d: dict) -> tuple[str, str]:
            return f"{d.get('precision', 0):.2f}", f"{d.get('recall', 0):.2f}"

        shift = (
            f"shift {signed(r['shift_before'])}→{signed(r['shift_after'])} without its flagged pairs"
            if r.get("shift_before") is not None
            else ""
        )
        rows = [
            ("SAE feature (peak delta)", *pr(r["sae_feature"]), shift),
            (
                "SAE feature (mean delta)",
                *pr(r["sae_feature_mean"]),
                (r.get("goblin_feature_label") or "")[:40],
            ),
            (
                "SAE cluster",
                *pr(r["sae_cluster"]),
                f"cluster {r['sae_cluster'].get('cluster')} of k={r['sae_cluster'].get('k')}",
            ),
            (
                "embedding cluster",
                *pr(r["embedding_cluster"]),
                f"cluster {r['embedding_cluster'].get('cluster')} of k={r['embedding_cluster'].get('k')}",
            ),
        ]
        table = self.query_one("#goblin-results", KeyTable)
        table.refill((str(i), row) for i, row in enumerate(rows))

    def action_cancel(self) -> None:
        if self._cancel is not None and not self._cancel.is_set():
            self._cancel.set()
            self.query_one("#goblin-status", Label).update("cancelling at the next batch…")

    def action_open_planted(self) -> None:
        """Look at the planted copy in Shifts (the goblin feature should rank as amplified)."""
        if self.result is None:
            self.notify("run the test first", severity="warning")
            return
        self.app.open_workspace(Path(self.result["workspace"]))
