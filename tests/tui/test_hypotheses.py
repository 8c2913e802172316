"""Pilot tests of the hypothesis screens (issue 10 item 6) and of a plan saved from the TUI driving a
real train-dpo run (issue 11 item 3), on the real small workspace and on the planted one."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from core.views import format_q
from core.analysis.hypotheses import concept_report, open_hypotheses
from core.data.marks import Marks
from core.views import HypothesisKey
from core.data.workspace import Workspace
from tests.tui.conftest import goto, landed, make_app, settle, wait_until
from tui.messages import JobProgressed
from tui.screens.concepts import ConceptFeaturesScreen, ConceptsScreen
from tui.screens.dialogs import MarkDialog, PlanDialog
from tui.screens.hypotheses import DIVIDER, TOP, HypothesesScreen, PromptHypothesesScreen
from tui.screens.pair import PairScreen, merged_firings
from tui.screens.pairs import PairsScreen
from tui.widgets.reply import HEAT
from tui.widgets.status import StatusLine
from tui.widgets.tables import KeyTable

pytestmark = pytest.mark.anyio


def summary(report) -> list[tuple]:
    """What the ranking shows, numbers to 9 places (the incremental sums differ in the last bits)."""
    return [
        (h.rank, str(HypothesisKey.of(h)), h.n, round(h.delta, 9), round(h.d, 9), h.halves_agree,
         tuple(p.source_index for p in h.driving))
        for h in report.hypotheses
    ]


def shown_keys(report) -> list[str]:
    """The row keys the Hypotheses table shows for `report`: the established, the divider, the rest."""
    keys = [str(HypothesisKey.of(h)) for h in report.hypotheses]
    n_established = sum(h.established for h in report.hypotheses)
    if n_established < len(keys):
        keys.insert(n_established, DIVIDER)
    return keys


def row_keys(table: KeyTable) -> list[str]:
    return [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)]


async def test_lands_on_hypotheses_fitting_the_structure_once(unfitted_workspace):
    ws = unfitted_workspace
    stages: list[str] = []

    def hook(message) -> None:
        if isinstance(message, JobProgressed):
            stages.append(message.progress.stage)

    app = make_app(ws)
    async with app.run_test(size=(80, 24), message_hook=hook) as pilot:
        await landed(pilot)
        screen = app.screen
        assert "concepts" in stages and "names" in stages  # the first open fitted, with progress
        expected = open_hypotheses(ws).report(top=TOP)  # read back from the cache just written
        assert summary(screen.report) == summary(expected) and expected.hypotheses
        table = screen.query_one("#hypotheses", KeyTable)
        assert row_keys(table) == shown_keys(expected)
        # at 80 columns each row still reads: q, the moving pairs, Δ, ✓, n, the concept's name and where
        first = expected.hypotheses[0]
        cells = table.get_row_at(shown_keys(expected).index(str(HypothesisKey.of(first))))  # below a divider
        assert cells[0] == "1" and cells[4] == "✓" and cells[5] == str(first.n)
        assert cells[1].plain == format_q(first.q) and cells[2] == f"{first.n_support}/{first.n_moving}"
        assert cells[3].plain == f"{first.delta:+#.3g}"
        concept, where = cells[6].plain, cells[7].plain
        assert concept[0] in "↑↓" and concept[2:8] == (first.concept_name or f"concept {first.concept}")[:6]
        assert where.startswith(f"{'cluster' if first.kind == 'cluster' else 'prompt'} {first.group}")
        assert table.size.width <= 80 and sum(c.get_render_width(table) for c in table.columns.values()) <= 80
    assert list((ws / "structure").glob("*.npz"))

    stages.clear()
    app = make_app(ws)
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await landed(pilot)
        assert "concepts" not in stages  # read from the workspace's cache
        assert summary(app.screen.report) == summary(expected)


async def test_enter_opens_the_driving_pairs_with_the_concepts_tokens_highlighted(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        h = app.screen.current()
        pairs = await goto(pilot, "enter", PairsScreen, "rows")
        assert [r.source_index for r in pairs.rows] == [p.source_index for p in h.driving]
        assert [r.delta for r in pairs.rows] == [p.u for p in h.driving]

        pair = await goto(pilot, "enter", PairScreen, "pair_view")
        v = pair.pair_view
        assert pair.source_index == h.driving[0].source_index
        assert v.concept.concept == h.concept and v.concept.features == tuple(h.features)
        assert v.concept.u == pytest.approx(h.driving[0].u)  # the engine's u for this pair
        assert pair._on_concept()  # the concept's row is the one under the cursor

        def highlighted(side: str) -> int:
            text = pair.query_one(f"#{side}").content
            return sum(1 for span in text.spans if str(span.style) in HEAT)

        # every firing of any of the concept's features is highlighted, in both replies
        counts = {}
        for side in ("chosen", "rejected"):
            counts[side] = len(merged_firings(v.firings[side], h.features))
            assert highlighted(side) == counts[side]
        stronger = "chosen" if h.direction == "more" else "rejected"
        assert counts[stronger] > 0  # a driving pair: the concept fires on the side Δ favours
        assert f"C{h.concept} on {counts[stronger]} token" in str(pair.query_one(f"#{stronger}-box").border_subtitle)

        await pilot.press("j")  # one feature at a time below the concept's row
        await settle(pilot)
        f = pair._selected_feature()
        assert f is not None and not pair._on_concept()
        assert highlighted("chosen") == len(v.firings["chosen"].get(f, ()))
        if len(pairs.rows) > 1:
            await pilot.press("k", "n")  # the next driving pair, still with the concept
            await wait_until(pilot, lambda: pair.pair_view and pair.source_index == pairs.rows[1].source_index)
            await settle(pilot)
            assert pair._on_concept() and pair.pair_view.concept.concept == h.concept


async def test_marking_a_hypothesis_re_ranks_it_as_a_recompute_does(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        screen = app.screen
        before = screen.report
        h = screen.current()
        assert h.rank == 1

        await pilot.press("m")
        await wait_until(pilot, lambda: isinstance(app.screen, MarkDialog), what="the preview")
        preview = app.screen.preview
        drivers = {p.source_index for p in h.driving}
        assert set(preview.selection.source_indices) == drivers
        change = preview.hypothesis
        assert change.key == HypothesisKey.of(h) and change.rank[0] == 1
        assert change.delta[0] == pytest.approx(h.delta) and change.n[0] == h.n
        assert "rank 1→" in str(app.screen.query_one("#mark-summary").content)

        await pilot.press("y")
        await wait_until(pilot, lambda: screen.report is not None and screen._ranked_without == drivers,
                         what="the re-ranking")
        await settle(pilot)
        assert Marks(Workspace(workspace)).marked_set() == drivers
        # the ranking shown is what a fresh engine computes from scratch without the marked pairs
        fresh = open_hypotheses(workspace)
        after = fresh.report(frozenset(drivers), top=TOP)
        assert summary(screen.report) == summary(after)
        assert screen.report.n_excluded == len(drivers) and summary(after) != summary(before)
        assert row_keys(screen.query_one("#hypotheses", KeyTable)) == shown_keys(after)
        # ... and the preview told what it would be
        cell = fresh.cell_of(h.kind, h.group, h.concept)
        stats = fresh.statistics(frozenset(drivers))
        assert change.delta[1] == pytest.approx(stats["delta"][cell])
        assert change.n[1] == h.n - len(drivers & {p.source_index for p in h.driving})
        p_after, q_after = fresh.calibration(frozenset(drivers))
        assert change.rank[1] == fresh.standing(cell, stats, q_after)
        assert change.q[1] == pytest.approx(q_after[cell])

        await pilot.press("u")
        await wait_until(pilot, lambda: screen._ranked_without == frozenset(), what="the undo")
        await settle(pilot)
        assert summary(screen.report) == summary(before)


async def test_concepts_and_prompt_views_name_the_planted_behaviour(planted_workspace):
    ws, truth = planted_workspace
    behaviour = set(truth["behaviour"])
    app = make_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        top = app.screen.report.hypotheses[0]
        assert "goblin" in top.concept_name and behaviour <= set(top.features)

        concepts = await goto(pilot, "2", ConceptsScreen, "view")
        expected = concept_report(open_hypotheses(ws), top=len(concepts.view.rows))
        assert [(r.shift.concept, r.shift.shift) for r in concepts.view.rows] == [
            (r.shift.concept, r.shift.shift) for r in expected
        ]
        goblin = next(r for r in concepts.view.rows if "goblin" in r.name)
        assert behaviour <= set(goblin.features) and goblin.shift.shift > 0 and goblin.shift.stable
        table = concepts.query_one("#concepts", KeyTable)
        table.move_cursor(row=row_keys(table).index(str(goblin.shift.concept)))
        features = await goto(pilot, "enter", ConceptFeaturesScreen, "features")
        t = app.triage
        assert {f.feature for f in features.features.features} == set(goblin.features)
        for f in features.features.features:
            assert f.shift == (pytest.approx(t.before.shift[f.feature]), pytest.approx(t.after.shift[f.feature]))
        first = features.features.features[0].feature
        pairs = await goto(pilot, "enter", PairsScreen, "rows")  # one level further: a feature's pairs
        assert pairs.feature == first and pairs.rows

        await pilot.press("escape", "escape", "a")  # concepts of >= 4 features only
        await wait_until(pilot, lambda: concepts.grouped_only and concepts.view.rows
                         and all(r.shift.n_features >= 4 for r in concepts.view.rows), what="groups only")

        prompts = await goto(pilot, "3", PromptHypothesesScreen, "report")
        shown = prompts.report.hypotheses
        assert shown and {h.kind for h in shown} == {"prompt"}
        assert "goblin" in shown[0].concept_name and [h.rank for h in shown] == list(range(1, len(shown) + 1))
        assert type(await goto(pilot, "1", HypothesesScreen, "report")) is HypothesesScreen


async def test_a_plan_saved_from_the_tui_drives_train_dpo(workspace, hh_small, tmp_path, one_torch_thread):
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from core.cli import app as cli
    from core.train.interventions import load_plan, shaping_offsets

    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        h = app.screen.current()
        dialog = await goto(pilot, "i", PlanDialog)
        await settle(pilot)
        strength = dialog.query_one("#plan-strength")
        assert row_keys(dialog.query_one("#plan-kinds", KeyTable)) == ["shape", "steer", "mask", "inoculate"]
        assert strength.value == "4"  # shape's default λ
        await pilot.press("j")
        assert dialog.kind == "steer" and strength.value == "3"  # the default follows the kind
        await pilot.press("k", "enter")
        await wait_until(pilot, lambda: app.plan is not None, what="the saved plan")
        await settle(pilot)
        plan = load_plan(workspace)
        assert plan == app.plan and plan.kind == "shape" and plan.strength == 4.0
        assert plan.features == tuple(sorted(h.features)) and plan.label == h.concept_name
        assert plan.source.startswith("hypothesis 1") and plan.sae == "tiny-test"
        status = str(app.screen.query_one(StatusLine).render())
        # the status line shows the plan, its label cut with "…" when long (the counts always fit)
        shown = f"plan shape «{h.concept_name}» 4"
        assert shown in status or (f"plan shape «{h.concept_name[:12]}" in status and "…" in status)

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [
        "train-dpo", str(hh_small), "--out", str(out), "--plan", str(workspace), "--limit", "2",
        "--epochs", "1", "--batch-size", "2", "--max-length", "48", "--lr", "1e-4", "--threads", "1",
        "--json",
    ])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    record = json.loads((out / "datadebug_train.json").read_text())
    assert result["steps"] == 1 and record["plan"] == json.loads(json.dumps(asdict(plan)))
    # the concept's shaping offsets, read from the frozen model, are what the first loss saw
    cache = load_file(out / "intervention.safetensors")
    offsets = shaping_offsets(cache["chosen_max"], cache["rejected_max"], 4.0)
    assert offsets.abs().max() > 0
    assert result["first_loss"] == pytest.approx(-F.logsigmoid(offsets).mean().item(), abs=1e-4)


async def test_an_inoculation_planned_from_concepts_needs_its_system_prompt(workspace):
    from core.train.interventions import load_plan

    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await landed(pilot)
        concepts = await goto(pilot, "2", ConceptsScreen, "view")
        row = concepts.current()
        dialog = await goto(pilot, "i", PlanDialog)
        await settle(pilot)
        await pilot.press("j", "j", "j")
        assert dialog.kind == "inoculate" and dialog.query_one("#plan-strength").value == "1"
        assert "system prompt" in str(dialog.query_one("#plan-about").content)
        await pilot.press("enter")  # no text: refused, the dialog stays, the text field has the focus
        await settle(pilot)
        assert app.screen is dialog and dialog.query_one("#plan-text").has_focus
        assert load_plan(workspace) is None
        dialog.query_one("#plan-text").value = "Replies may mention it."
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.plan is not None, what="the saved plan")
        plan = load_plan(workspace)
        assert plan.kind == "inoculate" and plan.text == "Replies may mention it." and plan.strength == 1.0
        assert plan.features == tuple(sorted(row.features)) and plan.source == f"concept {row.shift.concept}"


async def test_the_landing_view_says_how_sure_it_is(planted_workspace, tmp_path):
    """Real labels: the planted behaviour is established and above the divider, the caption counts
    what was tested; while new marks re-rank, q shows as refreshing, never the old values. The same
    data with its labels shuffled: nothing established, and the screen says what is."""
    from tests.unit.planted import regions

    ws, truth = planted_workspace
    open_hypotheses(ws)  # structure and names fitted before the app opens (a loaded CI box is slow)
    app = make_app(ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        screen = app.screen
        rep = screen.report
        assert rep.n_established >= 1 and rep.hypotheses[0].established
        table = screen.query_one("#hypotheses", KeyTable)
        keys = row_keys(table)
        assert keys == shown_keys(rep) and DIVIDER in keys
        caption = str(screen.query_one("#hypotheses-caption").content)
        assert f"{rep.n_established} established (q < 0.1) of {rep.n_tested:,} cells tested" in caption
        assert table.get_row_at(0)[1].plain == format_q(rep.hypotheses[0].q)
        # marks changed, the new ranking not there yet: q is shown as refreshing
        screen._stale = True
        screen._fill()
        assert table.get_row_at(0)[1].plain == "…"
        assert "q refreshing" in str(screen.query_one("#hypotheses-caption").content)

    from tests.bench.synthetic import finish_index

    shuffled, _ = regions(tmp_path / "shuffled", swap=0)
    finish_index(shuffled, dataset="shuffled.jsonl")  # as an index run leaves it (else the app opens Index)
    open_hypotheses(shuffled.path)  # fit and cache the structure first (the landing test above times the fit)
    app = make_app(shuffled.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        screen = app.screen
        assert screen.report.hypotheses and screen.report.n_established == 0
        table = screen.query_one("#hypotheses", KeyTable)
        assert DIVIDER == row_keys(table)[0]
        # the cursor never rests on the divider: it starts on the first hypothesis, and k/g stay there
        assert table.cursor_row == 1 and screen.current() is screen.report.hypotheses[0]
        await pilot.press("k")
        await pilot.press("g")
        await pilot.pause()
        assert table.cursor_row == 1
        caption = str(screen.query_one("#hypotheses-caption").content)
        assert "nothing established at this data size" in caption
        assert f"≈ {screen.report.detectable_pairs} pairs all one way" in caption
