"""`datadebug-tui`: triage a preference dataset from the terminal.

    datadebug-tui [WORKSPACE] [--data FILE] [--model M] [--sae S] [--limit N]

An indexed workspace opens on Hypotheses. A missing or partly indexed one opens on Index (and starts when
a dataset is known: --data, or the one it was indexed from). With no workspace, the demo workspace is
used, indexing the bundled sample first if needed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.widgets import LoadingIndicator, Static
from textual.worker import Worker, WorkerState, get_current_worker

from core import locations
from core.errors import Cancelled, DatadebugError
from core.session import Session, demo_paths
from core.data.textsafe import visible
from core.views import Preview, Selection, TriageState, WorkspaceInfo
from tui.commands import ActionsProvider, help_rows
from tui.keymap import keymap_file, load_keymap
from tui.messages import (
    Open,
    Exported,
    MarkRequested,
    PlanChanged,
    PlanChoicesReady,
    PreviewReady,
    ReportWritten,
    TriageChanged,
    WorkerFailed,
    WorkspaceNeedsIndex,
    WorkspaceOpened,
)
from tui.screens.base import DataScreen, FormInput
from tui.screens.clusters import ClustersScreen
from tui.screens.compare import CompareScreen
from tui.screens.concepts import ConceptFeaturesScreen, ConceptsScreen
from tui.screens.dialogs import (
    ConfirmDialog,
    ErrorDialog,
    ExportDialog,
    HelpScreen,
    MarkDialog,
    PlanAnswer,
    PlanDialog,
    PlanTarget,
)
from tui.screens.goblin import GoblinScreen
from tui.screens.grouping import GroupingScreen
from tui.screens.hypotheses import HypothesesScreen, PromptHypothesesScreen
from tui.screens.index import IndexScreen
from tui.screens.models import ModelsScreen
from tui.screens.pair import PairScreen
from tui.screens.pairs import PairsScreen
from tui.screens.shifts import ShiftsScreen
from tui.quit import leave, serve
from tui.services import Services
from tui.widgets.tables import KeyTable


# The screens one screen opens from another (tui.messages.Open): a name and how to build it.
SCREENS = {
    "pairs.feature": PairsScreen.for_feature,
    "pairs.hypothesis": PairsScreen.for_hypothesis,
    "pairs.cluster": PairsScreen.for_cluster,
    "pairs.datacluster": PairsScreen.for_data_cluster,
    "grouping": GroupingScreen,
    "pair": PairScreen,
    "concept.features": ConceptFeaturesScreen,
}


class StartScreen(DataScreen):
    """Shown while the workspace is probed and loaded."""

    SCREEN_TITLE = "datadebug"

    def compose_body(self) -> ComposeResult:
        yield Static("opening the workspace…", id="start-caption")
        yield LoadingIndicator()


def describe_error(exc: BaseException) -> str:
    """The cause of a failure in one or two lines, the way a person should read it."""
    text = str(exc).strip() or "no detail"
    if isinstance(exc, DatadebugError):
        return text
    return f"{type(exc).__name__} (a bug in datadebug): {text}"


class DataDebugApp(App):
    """The TUI. Everything it asks of core goes through `services`; `keymap` remaps bindings by id."""

    CSS_PATH = "app.tcss"
    TITLE = "datadebug"
    COMMANDS = App.COMMANDS | {ActionsProvider}
    # In the order of the number keys (1-9).
    MODES: ClassVar[dict[str, type]] = {
        "hypotheses": HypothesesScreen,
        "concepts": ConceptsScreen,
        "prompts": PromptHypothesesScreen,
        "shifts": ShiftsScreen,
        "clusters": ClustersScreen,
        "compare": CompareScreen,
        "goblin": GoblinScreen,
        "models": ModelsScreen,
        "index": IndexScreen,
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Keys", id="app.help"),
        Binding("u", "undo", "Undo", id="triage.undo"),
        Binding("ctrl+r", "redo", "Redo", show=False, id="triage.redo"),
        Binding("x", "export", "Export", id="triage.export"),
        Binding("R", "report", "Write the report", show=False, id="app.report"),
        Binding("1", "go('hypotheses')", "Hypotheses screen", show=False, id="go.hypotheses"),
        Binding("2", "go('concepts')", "Concepts screen", show=False, id="go.concepts"),
        Binding("3", "go('prompts')", "Prompt hypotheses screen", show=False, id="go.prompts"),
        Binding("4", "go('shifts')", "Shifts screen (per feature)", show=False, id="go.shifts"),
        Binding("5", "go('clusters')", "Clusters screen", show=False, id="go.clusters"),
        Binding("6", "go('compare')", "Compare screen", show=False, id="go.compare"),
        Binding("7", "go('goblin')", "Goblin test screen", show=False, id="go.goblin"),
        Binding("8", "go('models')", "Models screen", show=False, id="go.models"),
        Binding("9", "go('index')", "Index screen", show=False, id="go.index"),
        Binding("q", "quit", "Quit", show=False, id="app.quit"),
        # The palette's built-in "Keys" panel has no key of its own to close: Escape does, before
        # the screen's own Escape (a priority binding that stands aside while no panel is open).
        Binding("escape", "hide_help_panel", "Close the keys panel", show=False, priority=True,
                id="app.close_keys"),
    ]

    info: reactive[WorkspaceInfo | None] = reactive(None)
    triage: reactive[TriageState | None] = reactive(None, always_update=True)
    # What the last mark change did, shown in the status line beside the counts (not over them).
    note: reactive[str] = reactive("")
    # The workspace's intervention plan (core.train.interventions.Plan) that train-dpo --plan applies.
    plan = reactive(None, always_update=True)

    def __init__(
        self,
        services: Services,
        keymap: dict[str, str] | None = None,
        keymap_problems: list[str] | None = None,
        autostart_index: bool = False,
    ) -> None:
        super().__init__()
        self.services = services
        self.keymap = dict(keymap or {})
        self.keymap_problems = list(keymap_problems or [])
        self.autostart_index = autostart_index

    @property
    def session(self) -> Session:
        """The open workspace's core session (raises WorkspaceError when none is open)."""
        return self.services.session

    def get_default_screen(self) -> StartScreen:
        return StartScreen()

    def on_mount(self) -> None:
        if self.keymap:
            self.set_keymap(self.keymap)
        known = {row[3] for row in help_rows(HELP_SECTIONS, {})}
        unknown = sorted(set(self.keymap) - known)
        if unknown:
            self.keymap_problems.append(
                f"no binding has the id {', '.join(unknown)} (? lists the ids)"
            )
        for problem in self.keymap_problems:
            self.notify(visible(problem), title="keymap", severity="warning", timeout=8, markup=False)
        self._open(self.services.workspace_path, self.autostart_index)

    # -- opening a workspace --------------------------------------------------------------------

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="open",
        description="opening the workspace",
    )
    def _open(self, path: Path, autostart: bool) -> None:
        status = self.services.probe(path)
        if get_current_worker().is_cancelled:
            return
        if status.complete:
            info, triage = self.services.open(path)
            self.post_message(WorkspaceOpened(info, triage))
        else:
            self.post_message(WorkspaceNeedsIndex(status, autostart))

    @on(Open)
    def _open_screen(self, event: Open) -> None:
        self.push_screen(SCREENS[event.target](*event.args, **event.kwargs))

    @on(WorkspaceOpened)
    async def _opened(self, event: WorkspaceOpened) -> None:
        if self.info is not None:
            await self._reset_modes()
        self.note = ""
        self.plan = None
        self.info = event.info
        self.triage = event.triage
        await self.switch_mode("hypotheses")
        self._read_plan()

    async def _reset_modes(self) -> None:
        """Drop every screen of the previous workspace (drill-downs included), except the one in view."""
        for mode, screen in self.MODES.items():
            if mode != self.current_mode:
                await self.remove_mode(mode)
                self.add_mode(mode, screen)
        while len(self.screen_stack) > 1:
            await self.pop_screen()

    @on(WorkspaceNeedsIndex)
    async def _needs_index(self, event: WorkspaceNeedsIndex) -> None:
        await self.switch_mode("index")
        screen = self.screen
        if isinstance(screen, IndexScreen):
            screen.prepare(event.status, event.autostart)

    def open_workspace(self, path: Path) -> None:
        """Open another workspace (its Shifts when indexed, else the Index screen)."""
        self._open(path, False)

    # -- failures: the one place a failed worker becomes a dialog -------------------------------

    @on(Worker.StateChanged)
    def _app_worker_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self._failed(event.worker)

    @on(WorkerFailed)
    def _worker_failed(self, event: WorkerFailed) -> None:
        self._failed(event.worker)

    def _failed(self, worker: Worker) -> None:
        """A dialog with the cause (a cancelled job is only noted)."""
        error = worker.error
        what = worker.description or worker.name
        if isinstance(error, Cancelled):
            self.notify(f"{visible(what)}: cancelled", timeout=4, markup=False)
            return
        self.push_screen(ErrorDialog(f"{what} failed", describe_error(error)))
        if worker.group == "open" and self.current_mode == "_default":
            self.call_later(self.switch_mode, "index")  # somewhere to pick another dataset from

    # -- triage ---------------------------------------------------------------------------------

    @on(MarkRequested)
    def _mark_requested(self, event: MarkRequested) -> None:
        if not self.services.is_open:
            self.notify("open a workspace first", severity="warning")
            return
        # The ticket is taken here, on the UI thread, so changes apply in the order they were asked for.
        self._apply_mark(self.services.take_ticket(), event.action, event.selection, event.reason)

    # Not exclusive: every change must be applied, in ticket order (the service waits its turn).
    @work(
        thread=True, exclusive=False, exit_on_error=False, group="marks", description="saving marks"
    )
    def _apply_mark(
        self, ticket: int, action: str, selection: Selection | None, reason: str
    ) -> None:
        triage, note = self.services.apply(ticket, action, selection, reason)
        self.post_message(TriageChanged(triage, note))

    @on(TriageChanged)
    def _triage_changed(self, event: TriageChanged) -> None:
        self.triage = event.triage
        self.note = event.note

    def action_undo(self) -> None:
        self.post_message(MarkRequested("undo"))

    def action_redo(self) -> None:
        self.post_message(MarkRequested("redo"))

    def propose_marks(self, select, ask_reason: bool = False) -> None:
        """Show what marking a selection would do, then mark it when accepted (one key).

        `select(session) -> Selection` runs in a worker (it may read the workspace). When every pair
        of the selection is marked already and no reason is asked for, the dialog offers to unmark.
        """
        if not self.services.is_open:
            self.notify("open a workspace first", severity="warning")
            return
        self._preview(select, ask_reason)

    @work(thread=True, exclusive=True, exit_on_error=False, group="preview", description="previewing the marks")
    def _preview(self, select, ask_reason: bool) -> None:
        session = self.session
        preview = session.preview(select(session))
        if not get_current_worker().is_cancelled:
            self.post_message(PreviewReady(preview, ask_reason))

    @on(PreviewReady)
    def _preview_ready(self, event: PreviewReady) -> None:
        p: Preview = event.preview
        if not p.selection.source_indices:
            self.notify("no pair to mark here", severity="warning", timeout=3)
            return
        unmark = p.n_new == 0 and not event.ask_reason

        def answered(reason: str | None) -> None:
            if reason is not None:
                self.post_message(MarkRequested("unmark" if unmark else "mark", p.selection, reason))

        self.push_screen(MarkDialog(p, ask_reason=event.ask_reason, unmark=unmark), answered)

    # -- intervention plans ---------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan", description="reading the plan")
    def _read_plan(self) -> None:
        # Also imports core.train.interventions (torch) now, so the plan dialog opens at once later.
        plan = self.session.plan()
        self.post_message(PlanChanged(plan))

    @on(PlanChanged)
    def _plan_changed(self, event: PlanChanged) -> None:
        self.plan = event.plan
        p = event.plan
        if event.saved and p is not None:
            self.notify(
                visible(
                    f"{p.kind} on «{p.label}» ({len(p.features)} features), strength {p.strength:g}\n"
                    f"saved in {self.services.workspace_path.name}/plan.json; apply with:\n"
                    + self.session.train_dpo_command(),
                    keep_newlines=True,
                ),
                title="plan saved",
                timeout=10,
                markup=False,
            )

    def propose_plan(self, target: PlanTarget) -> None:
        """Open the plan dialog for a concept, then save the plan when accepted."""
        if not self.services.is_open:
            self.notify("open a workspace first", severity="warning")
            return
        self._plan_choices(target)

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan", description="reading the plan")
    def _plan_choices(self, target: PlanTarget) -> None:
        kinds = self.services.intervention_kinds()
        self.post_message(PlanChoicesReady(kinds, self.session.plan(), target))

    @on(PlanChoicesReady)
    def _plan_dialog(self, event: PlanChoicesReady) -> None:
        target = event.target

        def answered(answer: PlanAnswer | None) -> None:
            if answer is not None:
                self._save_plan(target, answer)

        self.push_screen(
            PlanDialog(target, event.kinds, event.current, workspace=self.services.workspace_path.name,
                       command=self.session.train_dpo_command()),
            answered,
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan", description="saving the plan")
    def _save_plan(self, target: PlanTarget, answer: PlanAnswer) -> None:
        with self.services.in_flight("saving the plan"):
            plan = self.session.save_plan(
                answer.kind, target.features, answer.strength, label=target.name or f"concept {target.concept}",
                source=target.source, text=answer.text,
            )
        self.post_message(PlanChanged(plan, saved=True))

    # -- export ---------------------------------------------------------------------------------

    def action_export(self) -> None:
        t = self.triage
        if not self.services.is_open or t is None:
            self.notify("open a workspace first", severity="warning")
            return

        def confirmed(answer: tuple[Path, bool] | None) -> None:
            if answer is not None:
                self._export(*answer)

        self.push_screen(
            ExportDialog(t.n_kept, t.n_marked, t.n_total, self.session.default_export_path()),
            confirmed,
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="export", description="exporting")
    def _export(self, out: Path, overwrite: bool) -> None:
        with self.services.in_flight("exporting"):
            result = self.session.export(out, overwrite=overwrite)
        self.post_message(Exported(result))

    @on(Exported)
    def _exported(self, event: Exported) -> None:
        r = event.result
        self.note = f"exported {r.n_kept} of {r.n_records} records"
        self.notify(
            visible(
                f"kept {r.n_kept} of {r.n_records} records, removed {r.n_removed}\n→ {r.out}\n"
                f"removed records and why: {r.manifest.name}",
                keep_newlines=True,
            ),
            title="exported",
            timeout=10,
            markup=False,
        )

    # -- report ---------------------------------------------------------------------------------

    def action_report(self) -> None:
        if not self.services.is_open:
            self.notify("open a workspace first", severity="warning")
            return
        self.notify(f"writing the report to {self.session.default_report_dir()} …", markup=False)
        self._report()

    @work(thread=True, exclusive=True, exit_on_error=False, group="report", description="writing the report")
    def _report(self) -> None:
        with self.services.in_flight("writing the report"):
            files = self.session.write_report()
        self.post_message(ReportWritten(files))

    @on(ReportWritten)
    def _report_written(self, event: ReportWritten) -> None:
        files = event.files
        self.note = "report written"
        self.notify(visible(f"{files.markdown}\n{files.html}", keep_newlines=True), title="report written",
                    timeout=10, markup=False)

    # -- navigation and help --------------------------------------------------------------------

    async def action_go(self, mode: str) -> None:
        """Switch to a screen's own view, not to whatever was drilled into from it."""
        await self.switch_mode(mode)
        while len(self.screen_stack) > 1 and not isinstance(self.screen, self.MODES[mode]):
            await self.pop_screen()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "hide_help_panel":  # Escape closes the keys panel only while one is open
            return bool(self.screen.query("HelpPanel"))
        return True

    def action_help(self) -> None:
        rows = help_rows(HELP_SECTIONS, self.keymap)
        rows.append(("anywhere", "ctrl+p", "Command palette", ""))
        rows.append(("anywhere", "tab", "Next field or pane", ""))
        rows.append(("tables", "↑ ↓", "Move", ""))
        rows.append(("tables", "pgup pgdn", "Page", ""))
        screen = self.screen
        legend = getattr(screen, "LEGEND", ())
        where = getattr(screen, "SCREEN_TITLE", "").split(" · ")[0]
        self.push_screen(HelpScreen(rows, _home(keymap_file()), legend, where))


HELP_SECTIONS = [
    ("anywhere", DataDebugApp),
    ("Hypotheses", HypothesesScreen),
    ("Concepts", ConceptsScreen),
    ("Concept", ConceptFeaturesScreen),
    ("Shifts", ShiftsScreen),
    ("Pairs", PairsScreen),
    ("Pair", PairScreen),
    ("Clusters", ClustersScreen),
    ("Compare", CompareScreen),
    ("Groupings", GroupingScreen),
    ("Goblin", GoblinScreen),
    ("Models", ModelsScreen),
    ("Index", IndexScreen),
    ("tables", KeyTable),
    ("forms", FormInput),
    ("dialogs", MarkDialog),
    ("Plan", PlanDialog),
    ("dialogs", ConfirmDialog),
    ("dialogs", ErrorDialog),
]


def _home(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def native_stderr_to(log: Path):
    """Send what native code (LanceDB's Rust logger, C extensions) writes to fd 2 into `log`.

    Textual draws on stderr; a stray native warning would land in the middle of the screen. Python's
    own stderr is captured by Textual already. The terminal is kept on a private duplicate of fd 2.
    """
    if not os.isatty(2):
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    terminal = os.dup(2)
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = sys.__stderr__
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.__stderr__ = os.fdopen(os.dup(terminal), "w", encoding="utf-8", errors="replace")
    try:
        yield
    finally:
        sys.__stderr__.close()
        sys.__stderr__ = saved
        os.dup2(terminal, 2)
        os.close(terminal)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="datadebug-tui",
        description="Triage a preference dataset: predicted DPO shifts, the pairs behind them, a cleaned export.",
    )
    parser.add_argument(
        "workspace", nargs="?", type=Path, help="workspace folder (default: the demo workspace)"
    )
    parser.add_argument(
        "--data", type=Path, help="dataset to index into the workspace when it is not indexed yet"
    )
    parser.add_argument("--model", help="catalogue model to index with (default: the catalogue's)")
    parser.add_argument("--sae", help="catalogue SAE to index with (default: the model's)")
    parser.add_argument("--limit", type=int, help="index at most this many valid pairs")
    args = parser.parse_args(argv)

    demo_ws, sample = demo_paths()
    if args.workspace is not None:
        workspace, data = args.workspace, args.data
    elif args.data is not None:
        workspace, data = demo_ws.parent / args.data.name.split(".")[0], args.data
    else:
        workspace, data = demo_ws, sample
    keymap, problems = load_keymap()
    services = Services(workspace, data=data, model=args.model, sae=args.sae, limit=args.limit)
    app = DataDebugApp(
        services, keymap=keymap, keymap_problems=problems, autostart_index=data is not None
    )
    with native_stderr_to(locations.cache_dir() / "datadebug-tui.log"):
        code, left = serve(app, services.in_flight)
    leave(code, left)


if __name__ == "__main__":
    main()
