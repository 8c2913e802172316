"""Index: pick a dataset and a model + SAE, and index it with progress (pairs, tokens/s, ETA).

A run writes whole chunks of pairs, so Escape (or a crash) loses nothing: starting again resumes.
"""

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

from tui.messages import CatalogRead, IndexFinished, IndexProgressed
from tui.screens.base import DataScreen
from tui.services import CatalogChoices, WorkspaceStatus

DEFAULT = "__default__"


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class IndexScreen(DataScreen):
    SCREEN_TITLE = "Index · run a dataset through the model and SAE"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "start", "Start / resume", id="index.start"),
        Binding("escape", "cancel", "Cancel run", id="index.cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._cancel: threading.Event | None = None
        self._choices: CatalogChoices | None = None
        self._autostart = False  # start once the catalogue is read (the model and SAE are known)

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Label("dataset", classes="form-label")
            yield Input(
                placeholder="path to .jsonl / .jsonl.gz / .json / .parquet",
                id="index-data",
                compact=True,
            )
        with Horizontal(classes="form-row"):
            yield Label("workspace", classes="form-label")
            yield Input(id="index-workspace", compact=True)
        with Horizontal(classes="form-row"):
            yield Label("model", classes="form-label")
            yield Select([], prompt="catalogue default", id="index-model", compact=True)
            yield Label("SAE", classes="form-label")
            yield Select([], prompt="the model's SAE", id="index-sae", compact=True)
        with Horizontal(classes="form-row"):
            yield Label("limit", classes="form-label")
            yield Input(
                placeholder="all pairs", id="index-limit", classes="form-short", compact=True
            )
        yield Label("enter or ctrl+s starts · a rerun resumes · esc cancels", id="index-hint")
        yield ProgressBar(id="index-progress", show_eta=False, classes="-idle")
        yield Static("", id="index-status")
        yield Static("", id="index-log")

    def on_mount(self) -> None:
        super().on_mount()
        services = self.app.services
        self.query_one("#index-workspace", Input).value = str(services.workspace_path)
        if services.data:
            self.query_one("#index-data", Input).value = str(services.data)
        if services.limit:
            self.query_one("#index-limit", Input).value = str(services.limit)
        self._load_choices()

    def info_changed(self, info) -> None:
        data = self.query_one("#index-data", Input)
        if info is not None and not data.value and self.app.services.is_open:
            data.value = str(self.app.services.dataset_path())

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="index-choices",
        description="reading the catalogue",
    )
    def _load_choices(self) -> None:
        choices = self.app.services.catalog_choices()
        if not get_current_worker().is_cancelled:
            self.post_message(CatalogRead(choices))

    @on(CatalogRead)
    def _set_choices(self, event: CatalogRead) -> None:
        self._choices = choices = event.choices
        services = self.app.services
        model = self.query_one("#index-model", Select)
        model.set_options([(m, m) for m in choices.models])
        if services.model in choices.models:
            model.value = services.model
        sae = self.query_one("#index-sae", Select)
        sae.set_options([(s, s) for s in choices.saes])
        if services.sae in choices.saes:
            sae.value = services.sae
        if self._autostart:
            self._autostart = False
            self.action_start()

    def prepare(self, status: WorkspaceStatus, autostart: bool) -> None:
        """Fill the form for a workspace that is missing or partly indexed, and start when asked."""
        self.query_one("#index-workspace", Input).value = str(status.path)
        data = self.app.services.data or (Path(status.dataset) if status.dataset else None)
        if data:
            self.query_one("#index-data", Input).value = str(data)
        if status.exists and status.n_pairs:
            self.query_one("#index-status", Static).update(
                f"{status.n_pairs} pairs indexed so far: start again to resume"
            )
        if autostart and data:
            if self._choices is None:
                self._autostart = True
            else:
                self.action_start()

    # -- the run --------------------------------------------------------------------------------

    def _index_running(self) -> bool:
        return any(w.group == "index" and w.is_running for w in self.workers)

    @on(Input.Submitted)
    def action_start(self) -> None:
        if self._index_running():
            self.notify("indexing is running; escape cancels it", severity="warning")
            return
        data = self.query_one("#index-data", Input).value.strip()
        workspace = self.query_one("#index-workspace", Input).value.strip()
        limit_text = self.query_one("#index-limit", Input).value.strip()
        if not data or not workspace:
            self.notify("give a dataset file and a workspace folder", severity="warning")
            return
        try:
            limit = int(limit_text) if limit_text else None
        except ValueError:
            self.notify("limit is a whole number of pairs", severity="error")
            return
        model = self.query_one("#index-model", Select).value
        sae = self.query_one("#index-sae", Select).value
        model = self.app.services.model if model is Select.NULL else str(model)
        sae = self.app.services.sae if sae is Select.NULL else str(sae)
        self._cancel = threading.Event()
        bar = self.query_one("#index-progress", ProgressBar)
        bar.remove_class("-idle")
        bar.update(total=None, progress=0)
        self.query_one("#index-status", Static).update(f"indexing {Path(data).name}…")
        self._index(
            Path(data).expanduser(), Path(workspace).expanduser(), model, sae, limit, self._cancel
        )

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="index",
        description="indexing the dataset",
    )
    def _index(
        self, data: Path, workspace: Path, model, sae, limit, cancel: threading.Event
    ) -> None:
        worker = get_current_worker()

        def progress(p) -> None:
            if worker.is_cancelled:
                cancel.set()
            self.post_message(IndexProgressed(p))

        result = self.app.services.index(
            data, workspace, model, sae, limit, progress=progress, cancel=cancel
        )
        self.post_message(IndexFinished(result, workspace))

    @on(IndexProgressed)
    def _progressed(self, event: IndexProgressed) -> None:
        p = event.progress
        bar = self.query_one("#index-progress", ProgressBar)
        if p.stage == "index" and p.total:
            bar.update(total=p.total, progress=p.done)
            self.query_one("#index-status", Static).update(
                f"pairs saved {p.done}/{p.total} · {p.rate:,.0f} tokens/s · ETA {eta_text(p.eta_s)}"
            )
        elif p.message:
            self.query_one("#index-log", Static).update(p.message)

    @on(IndexFinished)
    def _finished(self, event: IndexFinished) -> None:
        r = event.result
        self.query_one("#index-log", Static).update("")
        status = self.query_one("#index-status", Static)
        status.update(
            f"{r.n_pairs} pairs indexed ({r.n_new} this run, {r.n_skipped_invalid} invalid skipped)"
        )
        # The app opens the workspace when the run is complete (the message bubbles on to it).

    def action_cancel(self) -> None:
        if self._cancel is not None and self._index_running():
            self._cancel.set()
            self.query_one("#index-status", Static).update("cancelling after the current batch…")
