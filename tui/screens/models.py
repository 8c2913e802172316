"""Models: the catalogue (packaged + the user's file) with what is in the local store, and the SAEs
trained here for a dataset (RECIPE@KEY, with their corpus and FVU); pull, verify, remove, and train a
recipe for the open workspace's dataset (t, as `datadebug sae train RECIPE --data FILE`)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Label, Static
from textual.worker import get_current_worker

from core.data.textsafe import one_line
from core.views import ModelRow, ModelsView
from tui.format import line, number
from tui.messages import ModelsListed
from tui.screens.base import DataScreen
from tui.screens.dialogs import ConfirmDialog
from tui.widgets.job import JobPanel
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
    LEGEND = (
        ("kind", "a language model, or an SAE on one of its layers"),
        ("name", "the catalogue name (datadebug index --model / --sae NAME)"),
        ("source", "bundled, a hub, a local path, or trained here"),
        ("ready", "stored locally and usable offline"),
        ("size", "on disk in the store"),
        ("detail", "what the store knows: its files, its quality, or how to get it"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pull", "Pull", id="models.pull"),
        Binding("v", "verify", "Verify", id="models.verify"),
        Binding("D", "remove", "Remove", id="models.remove"),
        Binding("t", "train", "Train", id="models.train"),
        Binding("r", "refresh", "Refresh", id="models.refresh"),
        Binding("escape", "cancel", "Cancel job", show=False, id="models.cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: ModelsView | None = None

    def compose_body(self) -> ComposeResult:
        yield Label("", id="models-files")
        yield KeyTable("kind", "name", "source", "ready", "size", "detail", opens=False, id="models")
        yield Static("", id="models-detail")
        yield JobPanel(id="models-job")

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
        self.query_one("#models-files", Label).update(line(f"catalogue: {' + '.join(m.files)}{user}"))
        table = self.query_one("#models", KeyTable)
        table.loading = False
        table.refill(
            (
                f"{r.kind}:{r.name}",
                (
                    r.kind,
                    line(r.name),
                    r.source,
                    Text("ready", style="bold green") if r.ready else Text("-", style="dim"),
                    size_text(r.size_bytes),
                    line(r.detail or ("t trains it for this dataset" if r.trainable else ""), 60),
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
                line(f"{r.kind} {r.name}: {r.detail or r.source}", style="dim")
            )

    # -- jobs -----------------------------------------------------------------------------------

    def _start(self, what: str, job) -> None:
        def done(text: str) -> None:
            self.query_one(JobPanel).say(text)
            self.notify(one_line(text), timeout=4, markup=False)
            self.action_refresh()

        self.query_one(JobPanel).run(what, job, done)

    def action_pull(self) -> None:
        r = self._current()
        if r is not None:
            pull = self.app.services.pull
            self._start(
                f"pulling {r.name}", lambda progress, cancel: f"{r.name}: ready at {pull(r.name, progress)}"
            )

    def action_verify(self) -> None:
        r = self._current()
        if r is not None:
            verify = self.app.services.verify
            self._start(f"verifying {r.name}", lambda progress, cancel: verify(r.name))

    def action_remove(self) -> None:
        r = self._current()
        if r is None:
            return
        remove = self.app.services.remove

        def answer(yes: bool | None) -> None:
            if yes:
                self._start(
                    f"removing {r.name}",
                    lambda progress, cancel: f"{r.name}: removed ({remove(r.name) / 2**20:.1f} MiB freed)",
                )

        self.app.push_screen(
            ConfirmDialog(
                "Remove from the store", f"Delete the stored files of {r.kind} {r.name}?"
            ),
            answer,
        )

    def action_train(self) -> None:
        """Train the SAE recipe under the cursor for the open workspace's dataset ("RECIPE@KEY", the
        SAE `index` uses for it): core.session.train_sae, as `datadebug sae train RECIPE --data FILE`."""
        r = self._current()
        if r is None:
            return
        if not r.trainable:
            self.notify(
                one_line(f"{r.name} is not trained here: pull it (p) instead"),
                severity="warning",
                markup=False,
            )
            return
        app = self.app
        data = [app.session.dataset_path] if app.info is not None and app.session.dataset_path.name else []
        train = app.services.train_sae
        corpus = data[0].name if data else "the bundled sample"

        def job(progress, cancel) -> str:
            entry, q = train(r.name, data, progress=progress, cancel=cancel)
            return (
                f"SAE {entry.name} (for {corpus}): FVU {number(q.fvu)}, L0 {number(q.l0)}, "
                f"dead {q.dead_fraction:.1%}"
            )

        self._start(f"training {r.name.split('@')[0]} for {corpus}", job)

    def action_cancel(self) -> None:
        self.query_one(JobPanel).cancel()
