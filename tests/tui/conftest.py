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


@pytest.fixture(scope="session")
def fitted_workspace(small_workspace, tmp_path_factory) -> Path:
    """The small workspace with its hypothesis structure and names fitted and cached, as after a first
    open (the app lands on Hypotheses: without this every test would fit it again)."""
    from core.analysis.hypotheses import open_hypotheses

    dest = tmp_path_factory.mktemp("fitted") / "hh"
    shutil.copytree(small_workspace, dest)
    open_hypotheses(dest)
    return dest


def private_copy(source: Path, tmp_path: Path, name: str) -> Path:
    """A copy of a session workspace for one test, always named `name` (snapshots show the name)."""
    from core.data.marks import Marks
    from core.data.workspace import Workspace

    dest = tmp_path / name
    shutil.copytree(source, dest)
    # Snapshots show the undo state: a test elsewhere that marks the shared workspace must copy it first.
    assert not Marks(Workspace(dest)).history(), f"the session's workspace {source} was marked by a test"
    return dest


@pytest.fixture
def workspace(fitted_workspace, tmp_path) -> Path:
    """A fresh copy of the session's small workspace (structure cached), named `hh`."""
    return private_copy(fitted_workspace, tmp_path, "hh")


@pytest.fixture
def unfitted_workspace(small_workspace, tmp_path) -> Path:
    """A fresh copy of the small workspace as indexing leaves it: no structure fitted yet (other tests
    may have fitted and cached one in the shared workspace: the copy drops it)."""
    ws = private_copy(small_workspace, tmp_path, "hh")
    shutil.rmtree(ws / "structure", ignore_errors=True)
    return ws


@pytest.fixture(scope="session")
def planted_session_workspace(tmp_path_factory) -> tuple[Path, dict]:
    """400 constructed pairs in 8 topics with a goblin behaviour planted in the chosen replies of one
    topic and a dragon one in 6 random pairs (tests/unit/planted.py: real LanceDB, firing frequencies
    and token firings set by hand), finished as an index run leaves it and its structure fitted: a
    workspace with grouped concepts and prompt-conditioned hypotheses whose truth is known."""
    from core.analysis.hypotheses import open_hypotheses
    from tests.bench.synthetic import finish_index
    from tests.unit.planted import regions

    ws, truth = regions(tmp_path_factory.mktemp("planted") / "planted", rare=6)
    finish_index(ws, dataset="planted.jsonl")
    open_hypotheses(ws.path)
    return ws.path, truth


@pytest.fixture
def planted_workspace(planted_session_workspace, tmp_path) -> tuple[Path, dict]:
    path, truth = planted_session_workspace
    return private_copy(path, tmp_path, "planted"), truth


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


async def goto(pilot, keys: str | tuple[str, ...], screen_type, ready: str = ""):
    """Press `keys`, then wait for a `screen_type` screen (with its attribute `ready` set, if named)."""
    await pilot.press(*((keys,) if isinstance(keys, str) else keys))
    await wait_until(
        pilot,
        lambda: isinstance(pilot.app.screen, screen_type)
        and (not ready or getattr(pilot.app.screen, ready)),
        what=f"the {screen_type.__name__}",
    )
    return pilot.app.screen


async def settle(pilot) -> None:
    """Wait for every worker to finish and the messages they posted to be handled. A keypress can
    start a chain (a dialog's answer posts a request, whose handler starts a worker, whose result
    is a message): three rounds, then until no worker runs."""
    for round in range(10):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if round >= 2 and not any(w.is_running for w in pilot.app.workers):
            break


async def landed(pilot) -> None:
    """Wait for the landing screen, Hypotheses, with its ranking."""
    from tui.screens.hypotheses import HypothesesScreen

    app = pilot.app
    await wait_until(
        pilot,
        lambda: type(app.screen) is HypothesesScreen and app.screen.report is not None,
        what="the Hypotheses screen with its ranking",
    )
    await settle(pilot)


async def shifts_loaded(pilot) -> None:
    """Wait for the app to land, then go to Shifts (4) and wait for its ranking."""
    from tui.screens.shifts import ShiftsScreen

    app = pilot.app
    await landed(pilot)
    await pilot.press("4")
    await wait_until(
        pilot,
        lambda: isinstance(app.screen, ShiftsScreen) and app.screen.report is not None,
        what="the Shifts screen with its ranking",
    )
    await settle(pilot)


# Text a dataset (or a person) can put in front of a terminal: CSI clear screen, OSC window title,
# BEL, an 8-bit C1 CSI, NEL, a right-to-left override, and markup that must show literally ("[/]"
# alone would even break a markup parser).
HOSTILE = "[red]x[/red] \x1b[2J\x1b]0;pwned\x07\x9b31m\x85\u202eevil[/] "
HOSTILE_TOKEN = "\x1b[2J\x07\u202e"  # put in front of every third reply token


@pytest.fixture
def hostile_workspace(workspace) -> Path:
    """The small workspace with hostile text in every prompt, reply, token, published label, the
    dataset's name and a mark's reason (the numbers are the real ones)."""
    import pyarrow as pa

    from core.data.marks import Marks
    from core.data.workspace import PAIRS_SCHEMA, Workspace

    ws = Workspace(workspace)
    t = ws.table("pairs").to_arrow()
    cols = {name: t[name].to_pylist() for name in t.column_names}
    for i in range(t.num_rows):
        cols["prompt_text"][i] = HOSTILE + cols["prompt_text"][i]
        for side in ("chosen", "rejected"):
            tokens = [
                (HOSTILE_TOKEN if j % 3 == 0 else "") + tok for j, tok in enumerate(cols[f"{side}_tokens"][i])
            ]
            cols[f"{side}_tokens"][i] = tokens
            cols[side][i] = "".join(tokens) + " " + HOSTILE
    ws.db.create_table("pairs", pa.table(cols, schema=PAIRS_SCHEMA), mode="overwrite")
    features = ws.table("features").to_arrow()
    labels = [HOSTILE + f"label {f}" if f % 2 == 0 else "" for f in features["feature"].to_pylist()]
    features = features.set_column(features.schema.get_field_index("label"), "label", pa.array(labels))
    ws.write_features(features)
    dataset = Path(ws.meta()["dataset"])
    ws.write_meta({"dataset": str(dataset.with_name("data\x1b[2J\u202e.jsonl"))})
    for names in (workspace / "structure").glob("*.names.json"):  # named again from the hostile text
        names.unlink()
    Marks(ws).mark([int(cols["source_index"][0])], reason=HOSTILE + "reason")
    return workspace
