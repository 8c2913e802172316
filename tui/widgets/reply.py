"""Highlighting the tokens of a reply where one SAE feature fires (in 256 colours, and underlined for mono)."""

from __future__ import annotations

from rich.text import Text

from core.data.textsafe import visible

# Three heat levels from the 256-colour palette, underlined so they also show without colour.
HEAT = (
    "underline white on color(94)",
    "bold underline black on color(172)",
    "bold underline black on color(220)",
)


def highlight(
    tokens: tuple[str, ...], text: str, firing: tuple[tuple[int, float], ...], peak: float
) -> Text:
    """`tokens` joined, each firing token styled by its activation relative to `peak`.

    The part of `text` past the tokens read (indexing keeps the first max_tokens) follows, dimmed.
    Control characters in tokens and text are shown as tags, never sent to the terminal.
    """
    value = dict(firing)
    out = Text()
    for pos, tok in enumerate(tokens):
        v = value.get(pos)
        if v is None or peak <= 0:
            out.append(visible(tok, keep_newlines=True))
        else:
            level = min(len(HEAT) - 1, int(len(HEAT) * v / peak - 1e-9))
            out.append(visible(tok, keep_newlines=True), style=HEAT[max(level, 0)])
    joined = "".join(tokens)
    if not tokens:
        out.append(visible(text, keep_newlines=True))
    elif text.startswith(joined) and len(text) > len(joined):
        out.append(visible(text[len(joined) :], keep_newlines=True), style="dim")
    return out
