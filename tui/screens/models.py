"""Models: the catalogue (packaged + the user's file) with what is in the local store; pull, verify,
remove, and train the SAE of a model that has none published."""

from __future__ import annotations

import threading
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label, ProgressBar, Static
from textual.worker import get_current_worker

from tui.messages import JobDone, JobProgress, ModelsListed
from tui.screens.base import DataScreen, snippet
from tui.screens.dialogs import ConfirmDialog
from tui.services import ModelRow, ModelsView
from tui.widgets.tables import KeyTable


def size_text(n: int) -> str:
    if n <= 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class ModelsScreen(DataScreen):
    SCREEN_TITLE = "Models · the catalogue and the local store"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pull", "Pull", id="models.pull"),
        Binding("v", "verify", "Verify", id="models.verify"),
        Binding("D", "remove", "Remove", id="models.remove"),
        Binding("t", "train", "Train SAE", id="models.train"),
        Binding("r", "refresh", "Refresh", id="models.refresh"),
        Binding("escape", "cancel", "Cancel job", id="models.cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: ModelsView | None = None
        self._cancel: threading.Event | None = None

    def compose_body(self) -> ComposeResult:
        yield Label("", id="models-files")
        yield KeyTable("kind", "name", "source", "ready", "size", "detail", id="models")
        yield Static("", id="models-detail")
        yield Static("", id="models-status")
        yield ProgressBar(
            id="models-progress", show_eta=False, show_percentage=False, classes="-idle"
        )

    def on_mount(self) -> None:
        super().on_mount()
        self.action_refresh()

    def action_refresh(self) -> None:
        self.query_one("#models", KeyTable).loading = True
        self._list()

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="models-list",
        description="reading the model store",
    )
    def _list(self) -> None:
        view = self.app.services.models()
        if not get_current_worker().is_cancelled:
            self.post_message(ModelsListed(view))

    @on(ModelsListed)
    def _listed(self, event: ModelsListed) -> None:
        self.models = m = event.models
        user = "" if m.user_file in m.files else f" (your entries go in {m.user_file})"
        self.query_one("#models-files", Label).update(f"catalogue: {' + '.join(m.files)}{user}")
        table = self.query_one("#models", KeyTable)
        table.loading = False
        table.refill(
            (
                f"{r.kind}:{r.name}",
                (
                    r.kind,
                    r.name,
                    r.source,
                    Text("ready", style="bold green") if r.ready else Text("-", style="dim"),
                    size_text(r.size_bytes),
                    snippet(r.detail or ("t trains it" if r.trainable else ""), 60),
                ),
            )
            for r in m.rows
        )
        table.focus()

    def _current(self) -> ModelRow | None:
        if self.models is None:
            return None
        key = self.query_one("#models", KeyTable).current_key()
        return next((r for r in self.models.rows if f"{r.kind}:{r.name}" == key), None)

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        r = self._current()
        if r is not None:
            self.query_one("#models-detail", Static).update(
                Text(f"{r.kind} {r.name}: {r.detail or r.source}", style="dim")
            )

    # -- jobs -----------------------------------------------------------------------------------

    def _job_running(self) -> bool:
        return any(w.group == "models-job" and w.is_running for w in self.workers)

    def _start(self, job: str, name: str) -> None:
        if self._job_running():
            self.notify("a model job is running; escape cancels it", severity="warning")
            return
        self._cancel = threading.Event()
        bar = self.query_one("#models-progress", ProgressBar)
        bar.remove_class("-idle")
        bar.update(total=None)
        self.query_one("#models-status", Static).update(f"{job} {name}…")
        self._job(job, name, self._cancel)

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="models-job",
        description="the model job",
    )
    def _job(self, job: str, name: str, cancel: threading.Event) -> None:
        worker = get_current_worker()

        def progress(p) -> None:
            if worker.is_cancelled:
                cancel.set()
            self.post_message(JobProgress("models", p.line(), p.fraction))

        services = self.app.services
        if job == "pull":
            text = services.pull(name, progress)
        elif job == "verify":
            text = services.verify(name)
        elif job == "remove":
            text = services.remove(name)
        else:
            text = services.train_sae(name, progress, cancel)
        self.post_message(JobDone("models", text))

    @on(JobProgress)
    def _progress(self, event: JobProgress) -> None:
        if event.job == "models":
            self.query_one("#models-status", Static).update(event.text)

    @on(JobDone)
    def _done(self, event: JobDone) -> None:
        if event.job != "models":
            return
        self.query_one("#models-progress").add_class("-idle")
        self.query_one("#models-status", Static).update(event.text)
        self.notify(event.text, timeout=4)
        self.action_refresh()

    def on_worker_state_changed(self, event) -> None:
        # A failed or cancelled job leaves no JobDone behind; the app shows the cause.
        if event.worker.group == "models-job" and event.worker.is_finished:
            self.query_one("#models-progress").add_class("-idle")

    def action_pull(self) -> None:
        r = self._current()
        if r is not None:
            self._start("pull", r.name)

    def action_verify(self) -> None:
        r = self._current()
        if r is not None:
            self._start("verify", r.name)

    def action_remove(self) -> None:
        r = self._current()
        if r is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._start("remove", r.name)

        self.app.push_screen(
            ConfirmDialog(
                "Remove from the store", f"Delete the stored files of {r.kind} {r.name}?"
            ),
            answer,
        )

    def action_train(self) -> None:
        r = self._current()
        if r is None:
            return
        if not r.trainable:
            self.notify(
                f"{r.name} has no SAE to train here (or it is trained already)", severity="warning"
            )
            return
        self._start("train", r.name)

    def action_cancel(self) -> None:
        if self._cancel is not None and self._job_running():
            self._cancel.set()
            for w in self.workers:
                if w.group == "models-job":
                    w.cancel()
            self.query_one("#models-status", Static).update("cancelling at the next step…")
