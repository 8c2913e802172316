"""What a record shape is (`Shape`), and the field checks the shapes share: each failure is an
`Invalid` naming the field, which read_pairs reports as the record's one-line issue."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from core.data.records import ROLE_LABELS, Invalid, Message


@dataclass(frozen=True)
class Shape:
    """One shape a preference record can have.

    `detect(record)` says, from keys and types only, whether a record (a dict) looks like this
    shape; shapes are tried by `precedence`, lowest first, so a broad test may follow a narrow one.
    `parse(record)` returns (prompt messages, chosen reply, rejected reply) or raises Invalid.
    `prompt_field` names where a prompt without a user turn is reported ("chosen" when the record
    has no such field). `expects` describes the shape in the message for an unrecognised record.
    `with_chosen(record, reply)` is a copy of the record whose chosen reply is `reply` (planted
    behaviours, core.data.plant), sharing everything not on the way to the reply.
    """

    name: str
    detect: Callable[[dict], bool]
    parse: Callable[[dict], tuple[list[Message], str, str]]
    with_chosen: Callable[[dict, str], dict]
    precedence: int
    expects: str
    prompt_field: str = "prompt"


TYPE_NAMES = {
    str: "string", list: "list", dict: "object", bool: "boolean", type(None): "null", bytes: "bytes",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that show nothing: whitespace, controls, format characters (zero-width space and joiners,
# bidi marks, the BOM, soft hyphen) and separators.
_INVISIBLE = frozenset(("Cc", "Cf", "Zs", "Zl", "Zp"))


def type_name(value: object) -> str:
    return TYPE_NAMES.get(type(value), "number" if isinstance(value, int | float) else "value")


def clip(value: object, width: int = 40) -> str:
    """A value from a record, cut short for a message (front ends escape its control characters)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace, zero-width or other invisible characters."""
    return all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text)


def check_text(value: str, where: str) -> str:
    """`value`, or Invalid when it holds a lone surrogate: JSON can escape one ("\\ud800"), but it
    is no character, so no tokenizer or UTF-8 file can take it."""
    bad = _SURROGATE.search(value)
    if bad:
        raise Invalid(where, f"lone surrogate U+{ord(bad.group(0)):04X} at character {bad.start()}: not text")
    return value


def get(obj: dict, key: str, expected: type | tuple[type, ...], where: str) -> object:
    """Return obj[key] if present and of the expected type; ``where`` names it in issues."""
    if key not in obj:
        raise Invalid(where, "missing field")
    value = obj[key]
    if not isinstance(value, expected):
        types = expected if isinstance(expected, tuple) else (expected,)
        wanted = " or ".join(TYPE_NAMES[t] for t in types)
        raise Invalid(where, f"expected {wanted}, got {type_name(value)}")
    if isinstance(value, str):
        check_text(value, where)
    return value


def field(record: dict, name: str, expected: type | tuple[type, ...]) -> object:
    return get(record, name, expected, name)


def message(value: object, where: str) -> Message:
    """Check one {role, content} message and return it with only those two keys."""
    if not isinstance(value, dict):
        raise Invalid(where, f"expected object, got {type_name(value)}")
    role = get(value, "role", str, f"{where}.role")
    if role not in ROLE_LABELS:
        raise Invalid(f"{where}.role", f"unknown role '{clip(role)}'")
    return {"role": role, "content": get(value, "content", str, f"{where}.content")}


def messages(value: object, name: str) -> list[Message]:
    if not isinstance(value, list):
        raise Invalid(name, f"expected list, got {type_name(value)}")
    return [message(m, f"{name}[{i}]") for i, m in enumerate(value)]


def assistant_reply(msg: Message, where: str) -> str:
    if msg["role"] != "assistant":
        raise Invalid(where, f"reply is not from the assistant (role '{msg['role']}')")
    return msg["content"]
