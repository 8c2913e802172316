"""Index: pick a dataset and a model + SAE, and index it with progress (pairs, tokens/s, ETA).

A run writes whole chunks of pairs, so Escape (or a crash) loses nothing: starting again resumes.
Only ctrl+s starts a run: Enter in a field moves to the next one.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Input, Label, Select
from textual.worker import get_current_worker

from core.views import CatalogChoices, WorkspaceStatus, data_files
from tui.format import count
from tui.messages import CatalogRead
from tui.screens.base import DataScreen, FormInput
from tui.widgets.job import JobPanel

HINT = "ctrl+s starts (a rerun resumes) · tab: next field · esc: leave a field, then cancel a run"


class IndexScreen(DataScreen):
    SCREEN_TITLE = "Index · run a dataset through the model and SAE"
    AUTO_FOCUS = ""  # nothing: digits switch screens until a field is picked (tab)
    LEGEND = (
        ("dataset", f"a {data_files()} file of pairs"),
        ("workspace", "the folder the index goes to (a rerun resumes it)"),
        ("limit", "index at most this many valid pairs (empty: all)"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "start", "Start / resume", id="index.start"),
        Binding("escape", "cancel", "Cancel run", show=False, id="index.cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._choices: CatalogChoices | None = None
        self._autostart = False  # start once the catalogue is read (the model and SAE are known)

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Label("dataset", classes="form-label")
            yield FormInput(
                placeholder=f"path to {data_files(' / ', ' / ')}", id="index-data"
            )
        with Horizontal(classes="form-row"):
            yield Label("workspace", classes="form-label")
            yield FormInput(id="index-workspace")
        with Horizontal(classes="form-row"):
            yield Label("model", classes="form-label")
            yield Select([], prompt="catalogue default", id="index-model", compact=True)
            yield Label("SAE", classes="form-label")
            yield Select([], prompt="the model's SAE", id="index-sae", compact=True)
        with Horizontal(classes="form-row"):
            yield Label("limit", classes="form-label")
            yield FormInput(placeholder="all pairs", id="index-limit", classes="form-short")
        yield Label(HINT, id="index-hint")
        yield JobPanel(id="index-job")

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
            data.value = str(self.app.session.dataset_path)

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
        """Fill the form for a workspace that is missing or partly indexed, and start when asked
        (the app was started with a dataset for it)."""
        self.query_one("#index-workspace", Input).value = str(status.path)
        data = self.app.services.data or (Path(status.dataset) if status.dataset else None)
        if data:
            self.query_one("#index-data", Input).value = str(data)
        if status.exists and status.n_pairs:
            self.query_one(JobPanel).say(
                f"{count(status.n_pairs)} pairs indexed so far: ctrl+s resumes"
            )
        if autostart and data:
            if self._choices is None:
                self._autostart = True
            else:
                self.action_start()

    # -- the run --------------------------------------------------------------------------------

    def action_start(self) -> None:
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
        services = self.app.services
        model = services.model if model is Select.NULL else str(model)
        sae = services.sae if sae is Select.NULL else str(sae)
        data_path, ws_path = Path(data).expanduser(), Path(workspace).expanduser()

        def job(progress, cancel):
            return services.index(data_path, ws_path, model, sae, limit, progress, cancel)

        def done(result) -> None:
            self.query_one(JobPanel).say(
                f"{count(result.n_pairs)} pairs indexed ({count(result.n_new)} this run, "
                f"{count(result.n_skipped_invalid)} invalid skipped)" + (f"; {result.reads()}" if result.reads() else "")
            )
            self.app.open_workspace(ws_path)

        self.query_one(JobPanel).run(f"indexing {data_path.name}", job, done)

    def action_cancel(self) -> None:
        self.query_one(JobPanel).cancel()
