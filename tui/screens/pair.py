"""Pair: the prompt, then chosen and rejected side by side (stacked when narrow), with a feature's (or a
concept's) firing tokens highlighted in both replies, and the pair's largest feature deltas."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, VerticalScroll
from textual.widgets import DataTable, Label, Static
from textual.worker import get_current_worker

from core.views import PairView, TriageState
from tui.format import line, number, safe, signed
from tui.messages import Open, PairReady
from tui.screens.base import DataScreen
from tui.widgets.reply import highlight
from tui.widgets.tables import KeyTable


CONCEPT_ROW = "concept"  # the key of the concept's row in the deltas table


def merged_firings(firings, features) -> tuple[tuple[int, float], ...]:
    """(token position, activation) where any of `features` fires, the strongest per position."""
    best: dict[int, float] = {}
    for f in features:
        for pos, val in firings.get(f, ()):
            if val > best.get(pos, float("-inf")):
                best[pos] = val
    return tuple(sorted(best.items()))


class PairScreen(DataScreen):
    """One pair. j/k in the deltas table picks the feature whose firing is highlighted; opened for a
    concept, its first row is the concept: all its features' firings highlighted at once."""

    SCREEN_TITLE = "Pair"
    LEGEND = (
        ("feature", "SAE feature id; the one under the cursor is highlighted above"),
        ("C n", "the concept the pair was opened for: every firing of its features highlighted; its"
                " label says the share of its features firing strongly in each reply and u, their"
                " difference, as the ranking reads them (a share, not an activation: no number columns)"),
        ("delta", "a feature's mean activation, chosen minus rejected reply"),
        ("chosen", "its mean activation over the chosen reply's tokens"),
        ("rejected", "its mean activation over the rejected reply's tokens"),
        ("label", "published label, else tokens it fires on → tokens it promotes"),
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back", id="pair.back"),
        Binding("m", "mark", "Mark pair", id="pair.mark"),
        Binding("M", "mark_reason", "Mark pair with reason", show=False, id="pair.mark_reason"),
        Binding("n,right_square_bracket", "step(1)", "Next", id="pair.next"),
        Binding("p,left_square_bracket", "step(-1)", "Prev", id="pair.prev"),
    ]

    def __init__(
        self,
        source_index: int,
        feature: int | None = None,
        pair_list: tuple[int, ...] = (),
        concept: int | None = None,
    ) -> None:
        super().__init__()
        self.source_index = source_index
        self.feature = feature
        self.concept = concept  # a response concept whose features are highlighted together
        self.pair_list = pair_list or (source_index,)
        self.pair_view: PairView | None = None

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="prompt-box", classes="text-box"):
            yield Static("", id="prompt")
        with Container(id="replies"):
            with VerticalScroll(id="chosen-box", classes="text-box"):
                yield Static("", id="chosen")
            with VerticalScroll(id="rejected-box", classes="text-box"):
                yield Static("", id="rejected")
        yield Label("", id="deltas-caption")
        yield KeyTable("feature", "delta", "chosen", "rejected", "label", id="deltas")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#prompt-box").border_title = "PROMPT"
        self.query_one("#chosen-box").border_title = "CHOSEN"
        self.query_one("#rejected-box").border_title = "REJECTED"
        self._open(self.source_index)

    def _open(self, source_index: int) -> None:
        self.source_index = source_index
        self.pair_view = None
        self._title()
        self.query_one("#deltas", KeyTable).loading = True
        self._load(source_index, self.feature, self.concept)

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="pair",
        description="reading the pair",
    )
    def _load(self, source_index: int, feature: int | None, concept: int | None) -> None:
        view = self.app.session.pair(source_index, feature, concept=concept)
        if not get_current_worker().is_cancelled:
            self.post_message(PairReady(view))

    @on(PairReady)
    def _ready(self, event: PairReady) -> None:
        self.pair_view = v = event.pair
        self.query_one("#prompt", Static).update(safe(v.prompt))
        table = self.query_one("#deltas", KeyTable)
        table.loading = False
        rows = []
        if v.concept is not None:
            c = v.concept
            rows.append((
                CONCEPT_ROW,
                (
                    Text(f"C{c.concept}", style="bold"),
                    "", "", "",  # the number columns are activations; a concept's numbers are shares
                    line(f"u {signed(c.u)} (share firing {number(c.chosen)} vs {number(c.rejected)})"
                         f" · {c.name or len(c.features)}", 60, style="bold"),
                ),
            ))
        rows += [
            (
                str(d.feature),
                (
                    f"#{d.feature}",
                    signed(d.delta),
                    number(d.chosen),
                    number(d.rejected),
                    line(d.label, 40),
                ),
            )
            for d in v.top_deltas
        ]
        table.refill(rows)
        if self.feature is not None:
            keys = [key for key, _ in rows]
            if str(self.feature) in keys:
                table.move_cursor(row=keys.index(str(self.feature)), animate=False)
        table.focus()
        self._highlight()

    def _title(self) -> None:
        pos = (
            self.pair_list.index(self.source_index) + 1
            if self.source_index in self.pair_list
            else 0
        )
        where = f" · {pos} of {len(self.pair_list)}" if len(self.pair_list) > 1 else ""
        t = self.triage
        mark = ""
        if t is not None and self.source_index in t.marked:
            reason = t.reason(self.source_index)
            mark = " · MARKED" + (f" ({reason})" if reason else "")
        self.set_title(line(f"Pair #{self.source_index}{where}{mark}"))

    def _on_concept(self) -> bool:
        """Whether the cursor is on the concept's row."""
        return self.query_one("#deltas", KeyTable).current_key() == CONCEPT_ROW

    def _selected_feature(self) -> int | None:
        key = self.query_one("#deltas", KeyTable).current_key()
        if key == CONCEPT_ROW:
            return None
        return int(key) if key is not None else self.feature

    def _highlight(self) -> None:
        v = self.pair_view
        if v is None:
            return
        concept = v.concept if self._on_concept() else None
        f = self._selected_feature()
        features = concept.features if concept is not None else ((f,) if f is not None else ())
        sides = ("chosen", "rejected")
        # a concept shows where its features count (what its share and u read); one feature, every firing
        shown = {side: [g for g in features if g in v.counted.get(side, ())] if concept is not None else features
                 for side in sides}
        firing = {side: merged_firings(v.firings[side], shown[side]) for side in sides}
        what = f"C{concept.concept}" if concept is not None else f"#{f}"
        peak = max((val for side in firing.values() for _, val in side), default=0.0)
        for side, tokens, text in (
            ("chosen", v.chosen_tokens, v.chosen),
            ("rejected", v.rejected_tokens, v.rejected),
        ):
            self.query_one(f"#{side}", Static).update(highlight(tokens, text, firing[side], peak))
            n = len(firing[side])
            weak = not n and concept is not None and any(g in v.firings[side] for g in features)
            box = self.query_one(f"#{side}-box")
            box.border_subtitle = Text(
                f"{what} on {n} token{'s' * (n != 1)}" if n
                else f"{what}: weak firings only, not counted" if weak
                else (f"{what} not firing here" if features else "")
            )
        delta = next((d for d in v.top_deltas if d.feature == f), None)
        caption = line("deltas: j/k picks the feature highlighted above")
        if concept is not None:
            n = len(concept.features)
            caption = line(
                f"C{concept.concept} «{concept.name}» ({n} feature{'s' * (n != 1)}): share firing strongly in"
                f" chosen {number(concept.chosen)}, in rejected {number(concept.rejected)}, u {signed(concept.u)}"
            )
        elif delta is not None:
            caption = line(
                f"#{f}: chosen {number(delta.chosen)} - rejected {number(delta.rejected)} = "
                f"{signed(delta.delta)} · {delta.label}"
            )
        self.query_one("#deltas-caption", Label).update(caption)

    @on(DataTable.RowHighlighted, "#deltas")
    def _feature_picked(self) -> None:
        self._highlight()

    @on(DataTable.RowSelected, "#deltas")
    def _open_feature(self) -> None:
        """Enter on a feature: the pairs that drive it."""
        v = self.pair_view
        if v is not None and v.concept is not None and self._on_concept():
            self.post_message(Open("concept.features", v.concept.concept, v.concept.name))
            return
        f = self._selected_feature()
        delta = next((d for d in v.top_deltas if d.feature == f), None) if v else None
        if delta is not None:
            self.post_message(Open("pairs.feature", f, delta.label))
    def triage_changed(self, triage: TriageState | None) -> None:
        self._title()

    # -- actions --------------------------------------------------------------------------------

    def _flagging(self) -> tuple[int, ...]:
        """The features a mark here is for: the concept's, or the one under the cursor."""
        v = self.pair_view
        if v is not None and v.concept is not None and self._on_concept():
            return v.concept.features
        f = self._selected_feature()
        return (f,) if f is not None else ()

    def action_mark(self) -> None:
        self.toggle_mark(self.source_index, self._flagging())

    def action_mark_reason(self) -> None:
        self.propose_pairs([self.source_index], "pair", self._flagging(), ask_reason=True)

    def action_step(self, step: int) -> None:
        if self.source_index not in self.pair_list or len(self.pair_list) < 2:
            return
        i = (self.pair_list.index(self.source_index) + step) % len(self.pair_list)
        self._open(self.pair_list[i])
