"""Snapshots of the main screens at 80x24 and 120x40 on the fixed small workspace.

Nothing that varies is on screen: the workspace copy is always called `hh`, no path or clock is drawn,
and notifications are cleared before the picture is taken. Update with `--snapshot-update`.
"""

from __future__ import annotations

import pytest

from tests.tui.conftest import make_app, settle, shifts_loaded, wait_until
from tui.services import available

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


async def _quiet(pilot) -> None:
    await settle(pilot)
    pilot.app.clear_notifications()
    await pilot.pause()


async def _to_pair(pilot) -> None:
    from tui.screens.pair import PairScreen
    from tui.screens.pairs import PairsScreen

    app = pilot.app
    await shifts_loaded(pilot)
    await pilot.press("enter")
    await wait_until(
        pilot, lambda: isinstance(app.screen, PairsScreen) and app.screen.rows, what="pairs"
    )
    await pilot.press("enter")
    await wait_until(
        pilot, lambda: isinstance(app.screen, PairScreen) and app.screen.pair_view, what="pair"
    )
    await _quiet(pilot)


@pytest.mark.parametrize("size", SIZES)
def test_shifts(snap_compare, workspace, size):
    async def run_before(pilot):
        await shifts_loaded(pilot)
        await _quiet(pilot)

    assert snap_compare(make_app(workspace), terminal_size=size, run_before=run_before)


def test_shifts_after_marking_top_pairs(snap_compare, workspace):
    async def run_before(pilot):
        await shifts_loaded(pilot)
        await pilot.press("t")
        await _quiet(pilot)

    assert snap_compare(make_app(workspace), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_pair(snap_compare, workspace, size):
    assert snap_compare(make_app(workspace), terminal_size=size, run_before=_to_pair)


def test_feature_pairs(snap_compare, workspace):
    from tui.screens.pairs import PairsScreen

    async def run_before(pilot):
        await shifts_loaded(pilot)
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: isinstance(pilot.app.screen, PairsScreen) and pilot.app.screen.rows
        )
        await _quiet(pilot)

    assert snap_compare(make_app(workspace), terminal_size=(80, 24), run_before=run_before)


@pytest.mark.skipif(not available("clusters"), reason="core/clusters.py is not in this build")
def test_clusters(snap_compare, workspace):
    from tui.screens.clusters import ClustersScreen

    async def run_before(pilot):
        await shifts_loaded(pilot)
        await pilot.press("2")
        await wait_until(
            pilot,
            lambda: isinstance(pilot.app.screen, ClustersScreen) and pilot.app.screen.clustering,
        )
        await _quiet(pilot)

    assert snap_compare(make_app(workspace), terminal_size=(120, 40), run_before=run_before)
