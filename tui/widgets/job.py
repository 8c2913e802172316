"""The one runner of long core jobs in the TUI (index, goblin test, pull, verify, remove, train).

A job is a callable `job(progress, cancel) -> result` over core's protocol (core/progress.py): it
reports `Progress` and raises `Cancelled` once `cancel` is set. `JobPanel.run` starts it in a thread
worker; each Progress becomes a message that moves the bar and rewrites the status line; the result
comes back on the UI thread to the `done` callback. `cancel()` (a screen binds it to Escape) sets the
event: the job stops at its next check, and the panel notes "cancelled". A failure reaches the app's
one failure handler (a dialog with the cause) and the panel notes it in a line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static
from textual.worker import Worker, WorkerState, get_current_worker

from core.errors import Cancelled
from core.progress import Progress, ProgressFn
from core.data.textsafe import one_line
from tui.format import line, safe
from tui.messages import JobFinished, JobProgressed, WorkerFailed

Job = Callable[[ProgressFn, threading.Event], Any]


class JobPanel(Vertical):
    """A progress bar (shown while a job runs) over a status line, and the job behind them."""

    DEFAULT_CSS = """
    JobPanel { height: auto; padding: 0 1; }
    JobPanel ProgressBar { height: 1; }
    JobPanel.-idle ProgressBar { display: none; }
    JobPanel .job-status { height: auto; }
    """

    def __init__(self, idle_text: str = "", id: str | None = None) -> None:
        super().__init__(id=id, classes="-idle")
        self.idle_text = idle_text
        self.what = ""  # the running (or last) job, in words
        self._cancel: threading.Event | None = None
        self._done: Callable[[Any], None] | None = None
        self._job = 0  # the running job's number: late messages of an earlier job are dropped

    def compose(self) -> ComposeResult:
        yield ProgressBar(show_eta=False)
        yield Static(self.idle_text, classes="job-status")

    @property
    def running(self) -> bool:
        return any(w.is_running for w in self.workers if w.group == "job")

    def run(self, what: str, job: Job, done: Callable[[Any], None] | None = None) -> bool:
        """Start `job` unless one is running (then say so). `done(result)` runs on the UI thread."""
        if self.running:
            self.notify(
                one_line(f"{self.what} is running; esc cancels it"), severity="warning", markup=False
            )
            return False
        self.what, self._done, self._job = what, done, self._job + 1
        self._cancel = threading.Event()
        self.remove_class("-idle")
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.say(f"{what}…")
        self.run_worker(
            partial(self._work, job, self._cancel, self._job),
            thread=True,
            exclusive=True,
            exit_on_error=False,
            group="job",
            description=what,
        )
        return True

    def _work(self, job: Job, cancel: threading.Event, number: int) -> None:
        worker = get_current_worker()

        def progress(p: Progress) -> None:
            if worker.is_cancelled:  # the panel went away: stop the job too
                cancel.set()
            self.post_message(JobProgressed(number, p))

        with self.app.services.in_flight(self.what, cancel):  # quitting cancels it and waits (tui.quit)
            result = job(progress, cancel)
        self.post_message(JobFinished(number, result))

    def cancel(self) -> bool:
        """Ask the running job to stop at its next check. False when none runs."""
        if self._cancel is None or not self.running:
            return False
        self._cancel.set()
        self.say(f"{self.what}: cancelling at the next step…")
        return True

    def say(self, text: str) -> None:
        """Rewrite the status line (text from a job or a dataset is shown verbatim, never as markup)."""
        self.query_one(".job-status", Static).update(safe(text))

    # -- messages from the worker ---------------------------------------------------------------

    @on(JobProgressed)
    def _progressed(self, event: JobProgressed) -> None:
        event.stop()
        if event.job != self._job:
            return
        p = event.progress
        fraction = p.fraction
        self.query_one(ProgressBar).update(
            total=100 if fraction is not None else None, progress=100 * (fraction or 0)
        )
        self.query_one(".job-status", Static).update(line(p.line()))

    @on(JobFinished)
    def _finished(self, event: JobFinished) -> None:
        event.stop()
        if event.job != self._job:
            return
        self.add_class("-idle")
        self.say(f"{self.what}: done")
        if self._done is not None:
            self._done(event.result)

    @on(Worker.StateChanged)
    def _ended(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "job" or event.state not in (
            WorkerState.ERROR,
            WorkerState.CANCELLED,
        ):
            return
        self.add_class("-idle")
        error = event.worker.error
        if event.state == WorkerState.CANCELLED or isinstance(error, Cancelled):
            self.say(f"{self.what}: cancelled")
        else:
            self.say(f"{self.what}: failed (see the message)")
        if event.state == WorkerState.ERROR:
            self.app.post_message(WorkerFailed(event.worker))

    def on_unmount(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
