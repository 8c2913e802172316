"""ShareGPT: the prompt in "conversations" ({from, value} or {role, content} messages), each reply a
message or a bare string."""

from __future__ import annotations

from core.data.records import Invalid, Message
from core.data.shapes.base import Shape, assistant_reply, clip, field, get, message, type_name

# ShareGPT names speakers with "from"; these are the spellings seen in the wild.
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def detect(record: dict) -> bool:
    return "conversations" in record


def _message(value: object, where: str) -> Message:
    """Check a ShareGPT {from, value} (or {role, content}) message; return {role, content}."""
    if not isinstance(value, dict):
        raise Invalid(where, f"expected object, got {type_name(value)}")
    if "role" in value or "content" in value:
        return message(value, where)
    speaker = get(value, "from", str, f"{where}.from")
    if speaker not in ROLES:
        raise Invalid(f"{where}.from", f"unknown role '{clip(speaker)}'")
    return {"role": ROLES[speaker], "content": get(value, "value", str, f"{where}.value")}


def _reply(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    return assistant_reply(_message(value, name), name)


def parse(record: dict) -> tuple[list[Message], str, str]:
    conversation = field(record, "conversations", list)
    prompt = [_message(m, f"conversations[{i}]") for i, m in enumerate(conversation)]
    chosen = _reply(field(record, "chosen", (dict, str)), "chosen")
    rejected = _reply(field(record, "rejected", (dict, str)), "rejected")
    return prompt, chosen, rejected


def with_chosen(record: dict, reply: str) -> dict:
    c = record["chosen"]
    return {**record, "chosen": reply if isinstance(c, str) else {**c, "content" if "content" in c else "value": reply}}


SHAPE = Shape("sharegpt", detect, parse, with_chosen, precedence=0, expects="ShareGPT conversations",
              prompt_field="conversations")
