"""Record shapes: how one record is a preference pair, one module per shape. `SHAPES` is the table
that ingest (detect, parse) and plant (rewrite a chosen reply) consult; `FORMATS` are its names. A
new shape is one module defining a `Shape` and one line here."""

from __future__ import annotations

from core.data.shapes import conversational, hh_rlhf, sharegpt, standard
from core.data.shapes.base import Shape

SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        standard.SHAPE,
        conversational.SHAPE,
        hh_rlhf.SHAPE,
        sharegpt.SHAPE,
    )
}


def formats() -> tuple[str, ...]:
    """The shapes' names, in the table's order: ("standard", "conversational", "hh-rlhf", "sharegpt")."""
    return tuple(SHAPES)


def by_precedence() -> list[Shape]:
    """The shapes in the order detection tries them."""
    return sorted(SHAPES.values(), key=lambda s: s.precedence)
