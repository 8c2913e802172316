"""The kinds of hypothesis: where in the data a concept is claimed to be selected. One table; the
engine, the sentences, the report, the CLI and the TUI all read it, so a new kind is one entry here
plus the engine's group columns for it.

    kind      its groups                                   tested against
    cluster   data clusters of pairs (core.analysis.dataclusters)   labels swapped, and membership drawn at random
    prompt    pairs whose prompt holds a prompt concept    labels swapped, and membership drawn at random
    concept   wherever replies hold the concept at all     labels swapped (a claim about the labels alone)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from core.errors import UsageError


class Kind(StrEnum):
    """A hypothesis kind; its value is the name the CLI (`--kind`), JSON and the TUI use. The engine
    stores `code` per cell, in this order (its group columns: clusters, prompt concepts, concepts)."""

    CLUSTER = "cluster"
    PROMPT = "prompt"
    CONCEPT = "concept"

    @property
    def code(self) -> int:
        return _ORDER.index(self)

    @property
    def local(self) -> bool:
        """Whether the claim is about a group of pairs (so also tested against random membership)."""
        return _TEXT[self].local

    def where(self, group: int, name: str = "") -> str:
        """Where the claim holds, as a sentence says it: "in data cluster 3 «travel»"."""
        return _TEXT[self].sentence.format(group=group, name=f" «{name}»" if name else "")

    def short(self, group: int, name: str = "") -> str:
        """Where, in a table cell: "cluster 3 · travel"."""
        return _TEXT[self].short.format(group=group, name=f" · {name}" if name else "")

    @classmethod
    def parse(cls, name: str | None) -> "Kind | None":
        """The kind named `name` (None: every kind). Raises UsageError for another name."""
        if name is None:
            return None
        try:
            return cls(name)
        except ValueError:
            raise UsageError(f"unknown hypothesis kind {name!r}: expected one of {', '.join(KINDS)}") from None


@dataclass(frozen=True)
class _Text:
    local: bool
    sentence: str
    short: str


_TEXT = {
    Kind.CLUSTER: _Text(True, "in data cluster {group}{name}", "cluster {group}{name}"),
    Kind.PROMPT: _Text(True, "when the prompt is about prompt concept {group}{name}", "prompt concept {group}{name}"),
    Kind.CONCEPT: _Text(False, "where replies have it at all", "wherever it appears"),
}
_ORDER = list(Kind)
KINDS = tuple(k.value for k in Kind)
