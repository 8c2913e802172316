"""Dataset text on a terminal: control characters made visible, never executed.

Prompts, replies, token strings, labels, mark reasons and error excerpts come from datasets or from
people. Printed raw, an ESC sequence can clear the screen or set the window title, a BEL rings, a
right-to-left override reorders what a person reads. Everything a front end prints that may hold
such text goes through `visible` (text) or `json_safe` (JSON).
"""

from __future__ import annotations

import json
import re

# C0 controls (but tab and newline), DEL, C1 controls, and the Unicode bidi controls and
# line/paragraph separators that reorder or break displayed text.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]"
)
_UNSAFE_WITH_NEWLINE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]"
)
# Lone surrogates cannot be encoded for a terminal at all.
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAMES = {"\x1b": "ESC", "\x07": "BEL", "\x08": "BS", "\x0d": "CR", "\x00": "NUL", "\x7f": "DEL", "\n": "\\n"}


def _show(m: re.Match) -> str:
    c = m.group(0)
    name = _NAMES.get(c)
    if name == "\\n":
        return name
    return f"<{name}>" if name else f"<U+{ord(c):04X}>"


def visible(text: str, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as a tag (`<ESC>`, `<U+202E>`, `\\n`), so printing
    it cannot drive the terminal. Tabs are kept; newlines too when `keep_newlines`."""
    if not isinstance(text, str):
        text = str(text)
    text = _SURROGATE.sub(lambda m: f"<U+{ord(m.group(0)):04X}>", text)
    return (_UNSAFE if keep_newlines else _UNSAFE_WITH_NEWLINE).sub(_show, text)


def one_line(text: str, width: int | None = None) -> str:
    """`visible(text)` on one line (newlines as spaces), cut to `width` characters with an ellipsis."""
    flat = visible(" ".join(str(text).split("\n")))
    if width is not None and len(flat) > width:
        return flat[: max(0, width - 1)] + "…"
    return flat


_JSON_UNSAFE = re.compile(
    "[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


def json_safe(obj, indent: int | None = 2) -> str:
    """JSON text of `obj` that keeps readable non-ASCII text but escapes (as \\uXXXX) every character
    that could drive a terminal: json already escapes C0 controls; this adds DEL, C1, bidi controls,
    line separators and lone surrogates. The result parses back to the same value."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=_default)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def _default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "__fspath__"):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# -- dataset text on a page (core.report): HTML, and Markdown that GitHub renders ------------------

_HTML_SPECIAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"}
# Every ASCII punctuation character may be backslash-escaped in CommonMark, and escaped it is only a
# character: no emphasis, link, image, table cell, heading, list, autolink (":" "/" "@" "." of a URL)
# or raw HTML can start from it. The three HTML specials become entities instead (GitHub would print
# "\<" as is inside some HTML contexts).
_MD_ESCAPE = {c: "\\" + c for c in "!\"#$%'()*+,-./:;=?@[\\]^_`{|}~"} | {
    "&": "&amp;", "<": "&lt;", ">": "&gt;"}


def html_text(text: str, width: int | None = None) -> str:
    """`one_line(text, width)` escaped for HTML text or an attribute value: tags, entities and quotes
    in it are shown, never interpreted."""
    return "".join(_HTML_SPECIAL.get(c, c) for c in one_line(text, width))


def markdown_text(text: str, width: int | None = None) -> str:
    """`one_line(text, width)` as Markdown (GitHub flavoured) that renders exactly as that text: every
    punctuation character escaped (see _MD_ESCAPE), so `<script>`, `[a](http://x)`, `![i](x)`, `|`,
    `*` or a bare URL in a record are shown as written. Safe inside a table cell."""
    return "".join(_MD_ESCAPE.get(c, c) for c in one_line(text, width).strip())
