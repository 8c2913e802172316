"""Goblin test: plant goblin sentences in a known share of chosen replies and see what datadebug finds.

Only ctrl+g runs the test (it indexes a copy of the dataset, and may train an SAE): Enter in a field
moves to the next one, Escape leaves a field and then cancels a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Select, Static

from core.views import WorkspaceInfo
from tui.format import count, line, number, signed
from tui.screens.base import DataScreen, FormInput
from tui.widgets.job import JobPanel

EXPLAIN = (
    "Copies the dataset with a goblin sentence in a share of the chosen replies (the ground truth is kept "
    "outside the workspace), indexes the copy, then checks whether the goblin feature ranks as amplified "
    "and which method finds the planted pairs."
)
HINT = "ctrl+g runs · tab: next field · esc: leave a field, then cancel a run"
TRAIN = "__train__"


class GoblinScreen(DataScreen):
    AUTO_FOCUS = ""  # nothing: digits switch screens until a field is picked (tab)
    SCREEN_TITLE = "Goblin test · does datadebug find a planted behaviour?"
    LEGEND = (
        ("rate", "share of pairs whose chosen reply gets a goblin sentence"),
        ("precision", "of the pairs a method flags, the share that were planted"),
        ("recall", "of the planted pairs, the share the method flags"),
        ("peak delta", "pairs ranked by the feature's max activation, chosen - rejected"),
        ("mean delta", "pairs ranked by its mean activation, chosen - rejected"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+g", "run", "Run test", id="goblin.run"),
        Binding("escape", "cancel", "Cancel run", show=False, id="goblin.cancel"),
        Binding("o", "open_planted", "Open planted copy", id="goblin.open"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.result: dict | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(EXPLAIN, id="goblin-explain")
        with Horizontal(classes="form-row"):
            yield Label("rate", classes="form-label")
            yield FormInput("0.1", id="goblin-rate", classes="form-short")
            yield Label("seed", classes="form-label")
            yield FormInput("0", id="goblin-seed", classes="form-short")
            yield Label("limit", classes="form-label")
            yield FormInput("", placeholder="all", id="goblin-limit", classes="form-short")
        with Horizontal(classes="form-row"):
            yield Label("SAE", classes="form-label")
            yield Select(
                [("train one on the planted copy (slow)", TRAIN)],
                value=TRAIN,
                allow_blank=False,
                id="goblin-sae",
                compact=True,
            )
        yield Label(HINT, id="goblin-status")
        yield JobPanel(id="goblin-job")
        yield DataTable(cursor_type="none", zebra_stripes=True, id="goblin-results")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#goblin-results", DataTable).add_columns("method", "precision", "recall", "detail")

    def info_changed(self, info: WorkspaceInfo | None) -> None:
        if info is not None:
            select = self.query_one("#goblin-sae", Select)
            select.set_options(
                [
                    ("train one on the planted copy (slow)", TRAIN),
                    (f"the workspace's SAE ({info.sae})", info.sae),
                ]
            )
            select.value = info.sae

    def action_run(self) -> None:
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
        sae = None if sae == TRAIN else str(sae)
        session = self.app.session

        def job(progress, cancel):
            return session.goblin(rate, seed, limit, sae, progress=progress, cancel=cancel)

        self.query_one(JobPanel).run(f"planting goblins in {rate:.0%} of the pairs", job, self._done)

    def _done(self, r: dict) -> None:
        self.result = r
        rank = r.get("goblin_feature_rank")
        ap = r.get("goblin_feature_ap")
        specific = (
            f" (AP {number(ap)}{'' if r.get('has_goblin_feature') else '; this SAE has no goblin feature'})"
            if ap is not None
            else ""
        )
        self.query_one(JobPanel).say(
            f"goblins in {count(r['n_injected'])} of {count(r['n_pairs'])} chosen replies · goblin feature "
            f"#{r['goblin_feature']}{specific} ranks {rank if rank is not None else 'nowhere'} of "
            f"{r['n_amplified']} amplified · o opens the planted workspace"
        )

        def pr(d: dict) -> tuple[str, str]:
            return number(d.get("precision", 0)), number(d.get("recall", 0))

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
                line(r.get("goblin_feature_label") or "", 40),
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
        table = self.query_one("#goblin-results", DataTable)
        table.clear()
        for row in rows:
            table.add_row(*row)

    def action_cancel(self) -> None:
        self.query_one(JobPanel).cancel()

    def action_open_planted(self) -> None:
        """Look at the planted copy in Shifts (the goblin feature should rank as amplified)."""
        if self.result is None:
            self.notify("run the test first", severity="warning")
            return
        self.app.open_workspace(Path(self.result["workspace"]))
