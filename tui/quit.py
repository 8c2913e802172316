"""Leaving the app: what must finish before the process goes, and nothing else.

Work in the app's worker threads is of two kinds. Saves (marks, an export, a plan, a report) and long
jobs (indexing, the goblin test, fits) write to disk: a save must finish, and a job, cancelled, stops
at its next step after saving what it has (an index resumes from there). Everything else is a
computation whose result nobody will see once the screen is gone (a ranking, a preview, a fit's
read). Python joins every worker thread at exit, so a ranking still running on a loaded machine kept
the process alive for over a minute after its screen had closed. `serve` runs the app, lets the
saves and jobs finish (`InFlight.finish`), then leaves at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from textual.app import App

SAVE_TIMEOUT_S = 120.0  # a save of marks or an export: seconds, even on a loaded machine


class InFlight:
    """The saves and jobs running now, each with the event that cancels it (None: a save)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: dict[int, tuple[str, threading.Event | None]] = {}
        self._next = 0

    @contextmanager
    def __call__(self, what: str, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold `what` in flight while the block runs (a job gives its cancel event)."""
        with self._cond:
            key, self._next = self._next, self._next + 1
            self._running[key] = (what, cancel)
        try:
            yield
        finally:
            with self._cond:
                del self._running[key]
                self._cond.notify_all()

    def finish(self, timeout: float = SAVE_TIMEOUT_S) -> list[str]:
        """Cancel every job, wait up to `timeout` s for saves and jobs to end; returns what did not."""
        with self._cond:
            for _, cancel in self._running.values():
                if cancel is not None:
                    cancel.set()
            self._cond.wait_for(lambda: not self._running, timeout)
            return [what for what, _ in self._running.values()]


def serve(app: App, in_flight: InFlight, timeout: float = SAVE_TIMEOUT_S, **run_kw) -> tuple[int, list[str]]:
    """Run `app` until it quits, then let its saves and jobs finish (up to `timeout` s). Returns the
    exit code and what did not finish; `leave` with them.

    The app runs on a loop of its own: asyncio.run would also wait for the default executor's
    threads, the computations this leaves behind.
    """
    loop = asyncio.new_event_loop()
    try:
        app.run(loop=loop, **run_kw)
    finally:
        left = in_flight.finish(timeout)
    return app.return_code or (1 if left else 0), left


def leave(code: int, left: list[str] = ()) -> NoReturn:
    """Exit the process now, saying what was left unfinished; computations still running in worker
    threads are dropped, not joined."""
    for what in left:
        print(f"datadebug-tui: left while {what} was still running; open the workspace again to resume it",
              file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
