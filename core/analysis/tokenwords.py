"""Whole words from subword tokens: where a firing lands in a reply, as a person reads it.

An SAE feature fires on one token, and a token is often a piece of a word (" gob" + "lin" + "s") or a
contraction's tail (" I" + "'m"). Names and evidence speak of whole words: `word_span` widens a token
to the word it belongs to, `firing_term` turns one firing into what a name may say:

    a content word        the whole word, lower-cased ("goblins"); a number reads "numbers", or
                          "step N" right after a content word on its line ("## Step 3", "page 12")
    a function word       a short phrase with the word after it (or before it): «i'm sorry»,
                          «to help»; never "to" alone
    punctuation / format  the symbol and what it does there: «"(" opening an aside»,
                          «"-" list marker», «"|" table pipe», «"#" heading»; a heading mark reads
                          with the heading's first word («"## Step" heading»)

Nothing here imports numpy or torch: the tokens are the strings a workspace stores.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9][a-z0-9']*[a-z0-9]|[a-z0-9]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})
_CONTRACTION = re.compile(r"^['\u2019][a-z]{1,3}$", re.IGNORECASE)  # 'm 't 's 're 've 'll 'd

# Words that say nothing alone (articles, pronouns, auxiliaries, prepositions, conjunctions and their
# contractions). A short list on purpose: scikit-learn's 318 English stop words hold "please", "thank",
# "fire" and "system", which a concept may well be about.
FUNCTION_WORDS = frozenset("""
a an the this that these those there here it its it's itself i i'm i've i'd i'll me my mine myself
you you're you've you'd you'll your yours yourself we we're we've we'd we'll us our ours he he's him
his himself she she's her hers herself they they're they've they'd they'll them their theirs
is am are was were be been being do does did doing don't doesn't didn't have has had having haven't
hasn't hadn't will would shall should can could may might must won't wouldn't can't cannot couldn't
shouldn't isn't aren't wasn't weren't that's what's there's let's
and or but nor so yet if then than as of at by for with about against between into through during
before after above below to from up down in out on off over under again further once also too very
just not no yes all any both each few more most other some such only own same s t
what which who whom whose when where why how
""".split())

# What a punctuation or format token does: anywhere, and at the start of a line.
_PUNCT = {
    "(": "opening an aside", ")": "closing an aside", "[": "opening a bracket", "]": "closing a bracket",
    "|": "table pipe", ":": "introducing what follows", ";": "between clauses", ",": "between clauses",
    ".": "ending a sentence", "?": "ending a question", "!": "exclamation", '"': "quotation",
    "'": "quotation", "*": "emphasis", "**": "bold markup", "_": "emphasis", "`": "code",
    "```": "code block", "...": "trailing off", "-": "dash", "--": "dash", "—": "dash", "–": "dash",
    "/": "slash", "#": "heading", "\u2019": "quotation", "\u2018": "quotation", "\u201c": "quotation",
    "\u201d": "quotation", "\n": "line break", "&": "ampersand", "%": "percent", "$": "dollar",
}
_LINE_START = {"-": "list marker", "*": "list marker", "•": "list marker", "+": "list marker",
               "|": "table pipe", ">": "quote marker"}
_NUMBERED = re.compile(r"^\d+[.)]$")


def words(text: str) -> list[str]:
    """Lower-case words of `text` (letters, digits and inner apostrophes)."""
    return _WORD.findall(text.lower().translate(_APOSTROPHES))


def _joins(prev: str, tok: str) -> bool:
    """Whether token `tok` continues the word that token `prev` ends."""
    if not tok or not prev[-1:].isalnum():
        return False
    return tok[0].isalnum() or bool(_CONTRACTION.match(tok))


def _apostrophe_at(tokens: list[str], i: int) -> bool:
    """Whether token `i` is a lone apostrophe inside a contraction ("I" "’" "m"): a word before it, a
    short suffix of letters right after it."""
    return (0 < i < len(tokens) - 1 and tokens[i] in ("'", "\u2019") and tokens[i - 1][-1:].isalnum()
            and tokens[i + 1].isalpha() and len(tokens[i + 1]) <= 3)


def word_span(tokens: list[str], pos: int) -> tuple[int, int]:
    """[start, end) of the tokens that make up the whole word token `pos` is part of (just `pos` for
    punctuation, or when `pos` is out of range: (pos, pos)). A token of spaces right before a word
    belongs to that word: SmolLM2 writes " 12" as " ", "1", "2", and a feature firing on the " " is
    about the number."""
    if not 0 <= pos < len(tokens):
        return pos, pos
    tok = tokens[pos]
    if tok and not tok.strip(" \t") and pos + 1 < len(tokens) and tokens[pos + 1][:1].isalnum():
        return pos, word_span(tokens, pos + 1)[1]
    if not any(ch.isalnum() for ch in tokens[pos]) and not _apostrophe_at(tokens, pos):
        return pos, pos + 1
    start, end = pos, pos
    while True:
        if start > 0 and _joins(tokens[start - 1], tokens[start]):
            start -= 1
        elif _apostrophe_at(tokens, start - 1) and start - 1 > 0:
            start -= 2
        elif _apostrophe_at(tokens, start):
            start -= 1
        else:
            break
    while True:
        if end + 1 < len(tokens) and _joins(tokens[end], tokens[end + 1]):
            end += 1
        elif _apostrophe_at(tokens, end + 1):
            end += 2
        elif _apostrophe_at(tokens, end):
            end += 1
        else:
            break
    return start, end + 1


def word_at(tokens: list[str], pos: int) -> str:
    """The whole word that token `pos` is part of, lower-cased ("" for punctuation or space)."""
    start, end = word_span(tokens, pos)
    found = words("".join(tokens[start:end]))
    return found[0] if found else ""


def _at_line_start(tokens: list[str], pos: int) -> bool:
    before = "".join(tokens[max(0, pos - 3) : pos])
    return pos == 0 or before.endswith("\n") or not before.strip() and pos < 3


def _quoted(sym: str) -> str:
    return f"'{sym}'" if '"' in sym else f'"{sym}"'


def punctuation_term(tokens: list[str], pos: int) -> str:
    """What the punctuation or format token `pos` does, e.g. '"(" opening an aside' ("" for a token of
    spaces)."""
    tok = tokens[pos]
    sym = tok.strip(" \t")
    if not sym:
        return ""
    if "\n" in sym and not sym.strip():
        return '"\\n" line break'
    sym = sym.strip()
    if _at_line_start(tokens, pos) or tok.lstrip(" \t").startswith("\n"):
        if sym in _LINE_START:
            return f"{_quoted(sym)} {_LINE_START[sym]}"
        if set(sym) == {"#"}:
            return f"{_quoted(sym)} heading"
        if _NUMBERED.match(sym) or (sym.isdigit() and pos + 1 < len(tokens) and tokens[pos + 1] in (".", ")")):
            return '"1." numbered list marker'
    if sym in _PUNCT:
        return f"{_quoted(sym)} {_PUNCT[sym]}"
    head = sym[:1]
    if head in _PUNCT and len(sym) <= 3:  # ")." and the like: the first symbol's job
        return f"{_quoted(sym)} {_PUNCT[head]}"
    return _quoted(sym[:4])


def _word_before_on_line(tokens: list[str], start: int) -> str:
    """The word (lower case) right before token `start` when only spaces stand between them on one
    line, else ""."""
    i = start - 1
    if i > 0 and tokens[i] and not tokens[i].strip(" \t"):  # " ", "1": the space is a token of its own
        i -= 1
    if i < 0 or "\n" in tokens[i] or not tokens[i].strip():
        return ""
    a, b = word_span(tokens, i)
    found = words("".join(tokens[a:b]))
    return found[-1] if found and b == i + 1 else ""


def _heading_phrase(tokens: list[str], pos: int, term: str) -> str:
    """For a heading mark («"##" heading») followed on its line by a word: the mark with that word as
    written («"## Step" heading»), so that headings which all start alike name what they say; else ""."""
    if not term.endswith(" heading") or pos + 1 >= len(tokens) or "\n" in tokens[pos + 1]:
        return ""
    a, b = word_span(tokens, pos + 1)
    text = "".join(tokens[a:b]).strip()
    if not words(text):
        return ""
    return f"{_quoted(tokens[pos].strip() + ' ' + text)} heading"


def firing_term(tokens: list[str], pos: int, max_words: int = 3) -> tuple[str, str]:
    """(key, phrase) for a firing at token `pos` (module doc): `key` groups firings that are the same
    thing (a content word, a function word, a punctuation's job), `phrase` is how this one reads
    ("to help" for the key "to"). ("", "") for a token of spaces or out of range."""
    if not 0 <= pos < len(tokens):
        return "", ""
    start, end = word_span(tokens, pos)
    found = words("".join(tokens[start:end]))
    if not found:
        term = punctuation_term(tokens, pos)
        return term, _heading_phrase(tokens, pos, term) or term
    word = found[0]
    if word.isdigit():
        nxt = tokens[end] if end < len(tokens) else ""
        if nxt.strip() in (".", ")") and _at_line_start(tokens, start):
            return '"1." numbered list marker', '"1." numbered list marker'
        before = _word_before_on_line(tokens, start)
        return "numbers", f"{before} N" if before and before not in FUNCTION_WORDS and before.isalpha() else "numbers"
    if word not in FUNCTION_WORDS and len(word) > 1:
        return word, word
    # a function word: read on until a content word (or max_words), else take the word before it
    after = words("".join(tokens[end : end + 4 * max_words]))[: max_words - 1]
    phrase = [word]
    for w in after:
        phrase.append(w)
        if w not in FUNCTION_WORDS:
            break
    if phrase[-1] in FUNCTION_WORDS:
        before = words("".join(tokens[max(0, start - 4 * max_words) : start]))
        if before and (before[-1] not in FUNCTION_WORDS or len(phrase) == 1):
            phrase = [*before[-(max_words - 1):], word] if before[-1] in FUNCTION_WORDS else [before[-1], word]
    return word, " ".join(phrase) if len(phrase) > 1 else _quoted(word)
