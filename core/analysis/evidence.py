"""Evidence: a concept's strongest exemplars in a set of pairs, as short snippets a person can read.

A concept is a set of SAE features; each reply stores, per firing feature, its strongest token
positions (core.analysis.shifts.FiringIndex). For the pairs that drive a hypothesis, the strongest firing of
any of the concept's features in each reply is that reply's exemplar; the snippet is the whole word
it fires on (core.analysis.tokenwords.word_span) with about CONTEXT_WORDS words either side. The snippets
shown are the strongest chosen one and the strongest rejected one where both exist (so the
preference is visible without opening a pair), filled up to `n` by strength, one per reply.

Snippets hold dataset text raw: a front end escapes it (core.data.textsafe; `Snippet.text` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.textsafe import one_line
from core.analysis.tokenwords import word_span

CONTEXT_WORDS = 10
N_SNIPPETS = 3
NEWLINE = " ⏎ "  # a line break inside a one-line snippet (format concepts fire around them)


@dataclass(frozen=True)
class Snippet:
    """A concept's firing in one reply as a person reads it: the whole word it fires on
    (`span`) with a few words either side. Text is raw dataset text (escape it to show it)."""

    source_index: int
    side: str  # "chosen" | "rejected"
    before: str
    span: str
    after: str
    activation: float  # the firing's SAE activation
    u: float | None  # the pair's u on the concept (core.analysis.hypotheses.Hypotheses.concept_in_pairs)


def _flat(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", NEWLINE)


def _clip(text: str, n_words: int, tail: bool) -> str:
    """The last (`tail`) or first `n_words` words of `text`, "…" where cut, keeping the spacing that
    touches the span."""
    parts = text.split()
    if len(parts) <= n_words:
        return text
    if tail:
        return "…" + " ".join(parts[-n_words:]) + (" " if text[-1:].isspace() else "")
    return (" " if text[:1].isspace() else "") + " ".join(parts[:n_words]) + "…"


def snippet_of(tokens: list[str], pos: int, context_words: int = CONTEXT_WORDS) -> tuple[str, str, str]:
    """(before, span, after) around token `pos` of a reply's `tokens`: the whole word there and about
    `context_words` words either side, line breaks shown as ⏎."""
    start, end = word_span(tokens, pos)
    before = _flat("".join(tokens[:start]))
    span = _flat("".join(tokens[start:end]))
    after = _flat("".join(tokens[end:]))
    lead = span[: len(span) - len(span.lstrip())]  # a token's leading space belongs to the context
    before = before + lead if before.strip() else ""  # nothing before the span: no space either
    return _clip(before, context_words, tail=True), span.strip(), _clip(after.rstrip(), context_words, tail=False)


def exemplars(analysis, features, source_indices, u: dict[int, float] | None = None, n: int = N_SNIPPETS,
              context_words: int = CONTEXT_WORDS, counted=None) -> tuple[Snippet, ...]:
    """The `n` strongest exemplar snippets (module doc) of the concept made of `features` in the pairs
    `source_indices` of `analysis` (core.analysis.shifts.Analysis): the strongest in a chosen reply and in a
    rejected one first where both exist, then by strength, one per reply; strongest first. `u`: each
    pair's u on the concept, carried into the snippets. `counted`: (chosen, rejected) (len(pairs), d_sae)
    CSR, rows in the order of `source_indices`, nonzero where a feature counts in that reply
    (core.analysis.hypotheses.Hypotheses.counted); firings of a feature that does not count there are
    left out, so a reply whose u says the concept is absent shows no snippet. () when none fires there."""
    fi = analysis.token_firings()
    rows = analysis.rows(source_indices)
    feats = [int(f) for f in features if 0 <= int(f) < len(fi.start) - 1]
    if not len(rows) or not feats:
        return ()
    idx = np.concatenate([np.arange(fi.start[f], fi.start[f + 1]) for f in feats])
    idx = idx[np.isin(fi.row[idx], rows)]
    if counted is not None:
        keep = set()
        for side, m in enumerate(counted):
            m = m.tocoo()
            keep.update(zip(np.asarray(rows)[m.row].tolist(), [side] * m.nnz, m.col.tolist()))
        idx = idx[[(int(fi.row[i]), int(fi.side[i]), int(fi.feature[i])) in keep for i in idx.tolist()]] if len(idx) else idx
    if not len(idx):
        return ()
    idx = idx[np.lexsort((fi.pos[idx], fi.side[idx], fi.row[idx], -fi.val[idx]))]  # strongest first
    best: dict[tuple[int, int], int] = {}
    for i in idx.tolist():
        best.setdefault((int(fi.row[i]), int(fi.side[i])), i)
    ranked = list(best.values())  # one per reply, strongest first
    picked = [next(i for i in ranked if fi.side[i] == side) for side in (0, 1) if any(fi.side[i] == side for i in ranked)]
    for i in ranked:
        if len(picked) >= n:
            break
        if i not in picked:
            picked.append(i)
    picked = sorted(picked[:n], key=ranked.index)
    tokens = analysis.reply_tokens(sorted({int(fi.row[i]) for i in picked}))
    out = []
    for i in picked:
        row, side = int(fi.row[i]), fi.SIDES[int(fi.side[i])]
        before, span, after = snippet_of(tokens[(row, side)], int(fi.pos[i]), context_words)
        s = int(analysis.source_index[row])
        out.append(Snippet(s, side, before, span, after, float(fi.val[i]), (u or {}).get(s)))
    return tuple(out)


def marked(snippet: Snippet, left: str = "«", right: str = "»") -> str:
    """The snippet on one line, escaped for a terminal, its firing span between `left` and `right`."""
    return one_line(f"{snippet.before}{left}{snippet.span}{right}{snippet.after}")
