"""Snapshots of the screens at 80x24 and 120x40 on the fixed small workspace.

Nothing that varies is on screen: the workspace copy is always called `hh`, no temporary path or clock
is drawn, and notifications are cleared before the picture is taken. Update with `--snapshot-update`
(and look at each changed SVG: say in the commit why it changed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.conftest import goto, landed, make_app, settle, shifts_loaded, wait_until

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


async def _quiet(pilot) -> None:
    from textual.widgets import DataTable

    await settle(pilot)
    pilot.app.clear_notifications()
    # A cell that grew re-measures its column on the table's next idle: on a busy machine the picture
    # could be taken before it (half-updated columns). Wait for it.
    await wait_until(
        pilot,
        lambda: not any(t._require_update_dimensions for t in pilot.app.screen.query(DataTable)),
        what="the tables' column widths",
    )
    await pilot.pause()


def steps(*moves, start=shifts_loaded):
    """A run_before: Shifts loaded (or the landing screen, with start=landed), then each (keys, screen
    class name, attribute to wait for)."""

    async def run_before(pilot):
        from tui import app as tui_app
        from tui.screens import dialogs

        screens = {**{c.__name__: c for c in tui_app.DataDebugApp.MODES.values()}, **vars(dialogs)}
        screens.update(PairsScreen=tui_app.PairsScreen, PairScreen=tui_app.PairScreen,
                       GroupingScreen=tui_app.GroupingScreen)
        await start(pilot)
        for keys, screen, ready in moves:
            if screen is None:
                await pilot.press(*keys)
                await settle(pilot)
            else:
                await goto(pilot, keys, screens[screen], ready)
        await _quiet(pilot)

    return run_before


TO_PAIRS = ("enter", "PairsScreen", "rows")
PREVIEW_TOP_PAIRS = ("t", "MarkDialog", "")

# name -> the moves after Shifts is loaded; each picture guards what its comment says.
SCREENS = {
    "shifts": (),
    # `t` asks first: how many pairs, which, and how the feature's shift would move.
    "mark_preview": (PREVIEW_TOP_PAIRS,),
    # the label, the CI and stability columns and the status line's total stay in view.
    "shifts_after_marking_top_pairs": (PREVIEW_TOP_PAIRS, ("y", None, "")),
    # the screen's column legend above the keys, grouped by where they work, nothing cut.
    "help": (("question_mark", "HelpScreen", ""),),
    "pair": (TO_PAIRS, ("enter", "PairScreen", "pair_view")),
    # the header shows the feature's shift before -> after.
    "feature_pairs_after_marking_one": (TO_PAIRS, ("m", None, "")),
    # the data clusters the hypotheses read: names, sizes, the best hypothesis' q and concept.
    "clusters": (("5", "ClustersScreen", "view"),),
    # the same k on both sides; Enter (a cluster's pairs) and K (the groupings) are offered.
    "compare": (("6", "CompareScreen", "compare"),),
    # the k-means groupings under Compare: silhouette k, contrast, top features.
    "groupings": (("6", "CompareScreen", "compare"), ("K", "GroupingScreen", "clustering")),
    # no field focused (digits switch screens); ctrl+g is the only way to start.
    "goblin_form": (("7", "GoblinScreen", ""),),
}


# name -> the moves after the app lands on Hypotheses (its ranking computed).
LANDING = {
    # the ranked sentences' parts readable: Δ, d, ✓, n, the concept's and the group's names.
    "hypotheses": (),
    # m asks first: the driving pairs, and how the hypothesis' Δ, score and rank would move.
    "hypothesis_mark_preview": (("m", "MarkDialog", ""),),
    # Enter, Enter: a driving pair with the concept's row on top and its tokens highlighted.
    "hypothesis_pair": (TO_PAIRS, ("enter", "PairScreen", "pair_view")),
    "concepts": (("2", "ConceptsScreen", "view"),),
    # the kinds, the default strength of the first, and the command that applies the plan.
    "plan_dialog": (("i", "PlanDialog", ""),),
}

# name -> the moves after the app lands on the planted workspace (grouped concepts, prompt groups).
PLANTED = {
    "hypotheses": (),
    "prompts": (("3", "PromptHypothesesScreen", "report"),),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(SCREENS))
def test_screen(snap_compare, workspace, size, name, monkeypatch):
    monkeypatch.setattr("tui.app.keymap_file", lambda: Path("/config/datadebug/keymap.toml"))
    run_before = steps(*SCREENS[name])
    assert snap_compare(make_app(workspace), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(LANDING))
def test_landing(snap_compare, workspace, size, name, monkeypatch, tmp_path_factory):
    from core.session import Session

    # the plan dialog prints the train-dpo command with absolute paths: the test's temporary root,
    # which differs per run, is drawn as /tmp/pytest
    base, command = str(tmp_path_factory.getbasetemp()), Session.train_dpo_command
    monkeypatch.setattr(Session, "train_dpo_command",
                        lambda self, *a, **k: command(self, *a, **k).replace(base, "/tmp/pytest"))
    assert snap_compare(make_app(workspace), terminal_size=size, run_before=steps(*LANDING[name], start=landed))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(PLANTED))
def test_planted(snap_compare, planted_workspace, size, name):
    app = make_app(planted_workspace[0])
    assert snap_compare(app, terminal_size=size, run_before=steps(*PLANTED[name], start=landed))


@pytest.mark.parametrize("size", SIZES)
def test_hostile_text(snap_compare, hostile_workspace, size):
    """Escape sequences, BEL, C1, RTL overrides and markup in the data shown as text: the pair
    marked with a hostile reason, its texts and tokens, hostile labels."""
    from tui.screens.pair import PairScreen

    async def run_before(pilot):
        await shifts_loaded(pilot)
        pilot.app.push_screen(PairScreen(next(iter(pilot.app.triage.marked))))
        await goto(pilot, (), PairScreen, "pair_view")
        await _quiet(pilot)

    assert snap_compare(make_app(hostile_workspace), terminal_size=size, run_before=run_before)
