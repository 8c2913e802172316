"""TUI fixtures: a private copy of the small real workspace per test (marks persist, so tests must not
share one), and helpers to drive the app until a condition holds."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # Pilot tests run on anyio's pytest plugin (installed with textual's dependencies), on asyncio.
    return "asyncio"


@pytest.fixture
def workspace(small_workspace, tmp_path) -> Path:
    """A fresh copy of the session's small workspace, always named `hh` (snapshots show the name)."""
    from core.marks import Marks
    from core.workspace import Workspace

    dest = tmp_path / "hh"
    shutil.copytree(small_workspace, dest)
    # Snapshots show the undo state: a test elsewhere that marks the shared workspace must copy it first.
    assert not Marks(Workspace(dest)).history(), "the session's small workspace was marked by another test"
    return dest


def make_app(workspace: Path, **kw):
    from tui.app import DataDebugApp
    from tui.services import Services

    services_kw = {k: kw.pop(k) for k in ("data", "model", "sae", "limit") if k in kw}
    return DataDebugApp(Services(workspace, **services_kw), **kw)


async def wait_until(pilot, condition, timeout: float = 60.0, what: str = "") -> None:
    """Let the app run until `condition()` is true (workers included), or fail after `timeout` s."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        await pilot.pause(0.05)
        await asyncio.sleep(0.02)


async def settle(pilot) -> None:
    """Wait for every worker to finish and the messages they posted to be handled."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def shifts_loaded(pilot) -> None:
    from tui.screens.shifts import ShiftsScreen

    app = pilot.app
    await wait_until(
        pilot,
        lambda: isinstance(app.screen, ShiftsScreen) and app.screen.report is not None,
        what="the Shifts screen with its ranking",
    )
    await settle(pilot)
