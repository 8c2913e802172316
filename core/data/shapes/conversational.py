"""TRL "conversational": chosen and rejected are message lists ending in the assistant's reply; the
conversation before it sits in "prompt" (a list, or a string in HuggingFaceH4-style rows) or ahead
of the reply in both."""

from __future__ import annotations

from core.data.records import Invalid, Message
from core.data.shapes.base import Shape, assistant_reply, check_text, field, messages, type_name


def detect(record: dict) -> bool:
    return any(isinstance(record.get(k), list) for k in ("chosen", "rejected", "prompt"))


def parse(record: dict) -> tuple[list[Message], str, str]:
    chosen = messages(field(record, "chosen", list), "chosen")
    rejected = messages(field(record, "rejected", list), "rejected")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns:
            raise Invalid(name, "empty reply")
    chosen_reply = assistant_reply(chosen[-1], f"chosen[{len(chosen) - 1}]")
    rejected_reply = assistant_reply(rejected[-1], f"rejected[{len(rejected) - 1}]")
    # The conversation may sit in "prompt" (explicit) or ahead of the reply in both
    # chosen and rejected (implicit); either way both replies must answer the same one.
    context = chosen[:-1]
    if rejected[:-1] != context:
        raise Invalid("rejected", "conversation before the reply differs from chosen's")
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        prompt = messages(prompt, "prompt")
        if context and context != prompt:
            raise Invalid("chosen", "conversation before the reply differs from 'prompt'")
    elif isinstance(prompt, str) and not context:
        # HuggingFaceH4-style rows give the prompt as a string and the reply alone.
        prompt = [{"role": "user", "content": check_text(prompt, "prompt")}]
    elif isinstance(prompt, str):
        # Rows that give both repeat a user turn of the conversation in "prompt".
        if not any(m["role"] == "user" and m["content"] == prompt for m in context):
            raise Invalid("prompt", "differs from every user turn in chosen")
        prompt = context
    elif prompt is None:
        prompt = context
    else:
        raise Invalid("prompt", f"expected list or string, got {type_name(prompt)}")
    return prompt, chosen_reply, rejected_reply


def with_chosen(record: dict, reply: str) -> dict:
    return {**record, "chosen": [*record["chosen"][:-1], {**record["chosen"][-1], "content": reply}]}


SHAPE = Shape("conversational", detect, parse, with_chosen, precedence=1, expects="prompt/chosen/rejected")
