"""How the TUI writes numbers and dataset text: one formatter for each, so every screen agrees.

Numbers: three significant digits, trailing zeros kept (+1.00 next to +1.44, never +1), plain
notation from 0.001 to 100, whole numbers above. Text from a dataset or a person (prompts, replies,
tokens, labels, reasons, paths, error causes) becomes a `rich.text.Text` with its control characters
made visible (core.data.textsafe), never a markup string: `[red]` in a reply shows as `[red]`.
"""

from __future__ import annotations

import math
import re

from rich.text import Text

from core.data.textsafe import one_line, visible

_SPACES = re.compile(r"[ \t\r\n]+")


def number(x: float | None, sign: bool = False) -> str:
    """`x` with three significant digits: 0.687, 1.00, 12.3, 1,234, 3.4e-04 (sign: +0.687); — for None
    (undefined, as Cohen's d where u has no spread)."""
    if x is None:
        return "—"
    x = float(x)
    plus = "+" if sign else ""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a >= 100:
        return f"{x:{plus},.0f}"
    if a < 0.001:
        return f"{x:{plus}.1e}"
    return f"{x:{plus}#.3g}"


def signed(x: float) -> str:
    """`number(x)` with its sign: +0.687, -1.00."""
    return number(x, sign=True)


def count(n: float) -> str:
    """A whole number: 1,234."""
    return f"{int(n):,}"


def before_after(before: float, after: float, fmt=signed) -> str:
    """'before' when unchanged, else 'before→after'."""
    a, b = fmt(before), fmt(after)
    return a if a == b else f"{a}→{b}"


def safe(text: object, style: str = "") -> Text:
    """Dataset text as a Text, newlines kept, every other control character shown as a tag."""
    return Text(visible(str(text), keep_newlines=True), style=style)


def line(text: object, width: int | None = None, style: str = "") -> Text:
    """Dataset text on one line (runs of spaces and newlines as one space), cut to `width` (or to
    where it is shown) with an ellipsis."""
    flat = one_line(_SPACES.sub(" ", str(text)).strip(), width)
    return Text(flat, style=style, no_wrap=True, overflow="ellipsis")


def text_widths(total: int, fixed: int, shares: tuple[float, ...], most: int = 60, least: int = 8
                ) -> tuple[int, ...]:
    """Characters for text columns sharing, in `shares`, what `fixed` characters of other columns
    leave of a `total`-wide table (each between `least` and `most`): so that every column stays in
    view and text is cut with "…" where it is cut."""
    room = max(total - fixed, least * len(shares))
    return tuple(max(least, min(most, int(room * s))) for s in shares)


def around(before: str, span: str, after: str, width: int) -> tuple[str, str, str]:
    """(before, span, after) on one line of at most `width` characters, escaped: the span whole (cut
    only when it alone is too long), the context either side cut to what fits, with "…"."""
    b, m, a = (one_line(_SPACES.sub(" ", x)) for x in (before, span, after))
    if len(m) >= width:
        return "", one_line(m, max(width, 1)), ""
    room = width - len(m)
    keep_a = min(len(a), max(room // 2, room - len(b)))
    keep_b = min(len(b), room - keep_a)
    if keep_b < len(b):
        b = "…" + b[len(b) - keep_b + 1 :] if keep_b > 0 else ""
    if keep_a < len(a):
        a = a[: keep_a - 1] + "…" if keep_a > 0 else ""
    return b, m, a


def concept_text(h, width: int) -> Text:
    """↑/↓ and the concept's name (its number when it has none) of a hypothesis
    (core.analysis.hypotheses.Hypothesis): ↑ chosen replies have more of it."""
    up = h.direction == "more"
    out = Text("↑ " if up else "↓ ", style="bold green" if up else "bold red")
    out.append_text(line(h.concept_name or f"concept {h.concept}", width - 2))
    return out
