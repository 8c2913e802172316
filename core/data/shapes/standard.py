"""TRL "standard": {"prompt": str, "chosen": str, "rejected": str}."""

from __future__ import annotations

from core.data.records import Invalid, Message
from core.data.shapes.base import Shape, field, is_blank


def detect(record: dict) -> bool:
    return "prompt" in record


def parse(record: dict) -> tuple[list[Message], str, str]:
    prompt = field(record, "prompt", str)
    chosen = field(record, "chosen", str)
    rejected = field(record, "rejected", str)
    if is_blank(prompt):
        raise Invalid("prompt", "empty prompt")
    return [{"role": "user", "content": prompt}], chosen, rejected


def with_chosen(record: dict, reply: str) -> dict:
    return {**record, "chosen": reply}


SHAPE = Shape("standard", detect, parse, with_chosen, precedence=2, expects="prompt/chosen/rejected")
