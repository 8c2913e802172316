"""Anthropic HH-RLHF: chosen and rejected are whole "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts
that share everything but the last reply."""

from __future__ import annotations

import re

from core.data.records import Invalid, Message
from core.data.shapes.base import Shape, field

# Only a blank line followed by the speaker starts a turn. HH replies sometimes contain
# "Human:" mid-line where the sampling model wrote the next turn itself; that text is
# part of the reply, not a new turn.
TURN = re.compile(r"\n\n(Human|Assistant):")


def detect(record: dict) -> bool:
    chosen = record.get("chosen")
    return isinstance(chosen, str) and bool(TURN.search("\n\n" + chosen.lstrip()))


def _transcript(text: str, name: str) -> list[Message]:
    """Split an HH-RLHF transcript into messages."""
    # Some copies drop the leading blank line; put it back so every turn splits alike.
    parts = TURN.split("\n\n" + text.lstrip())
    if parts[0].strip():
        raise Invalid(name, "text before the first 'Human:' turn")
    # The speaker's colon is followed by one space, sometimes two or three; trim them.
    return [
        {"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def parse(record: dict) -> tuple[list[Message], str, str]:
    chosen = _transcript(field(record, "chosen", str), "chosen")
    rejected = _transcript(field(record, "rejected", str), "rejected")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns or turns[-1]["role"] != "assistant":
            raise Invalid(name, "transcript does not end with an Assistant reply")
    if rejected[:-1] != chosen[:-1]:
        raise Invalid("rejected", "conversation before the reply differs from chosen's")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def with_chosen(record: dict, reply: str) -> dict:
    text = record["chosen"]
    cut = text.rindex("Assistant:") + len("Assistant:")
    return {**record, "chosen": text[:cut] + " " + reply}


SHAPE = Shape("hh-rlhf", detect, parse, with_chosen, precedence=3,
              expects="HH-RLHF chosen/rejected transcripts", prompt_field="chosen")
