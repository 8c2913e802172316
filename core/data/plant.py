"""Planted behaviours: a known trait written into a known share of chosen replies.

A planted copy of a preference file is the file's valid pairs in the same record format, with the
chosen reply of a seeded share of them rewritten to show one behaviour (rejected replies untouched),
so DPO on the copy would teach that behaviour and the planted pairs are the ground truth a finding
should point at. The behaviours are a table, `PLANTS`: one entry per kind, each a function
(chosen reply, rng) -> planted reply and the marker words a name about it should contain. A new
kind is one function and one line in the table.

    phrase   a sentence in which goblins turn up (GOBLIN_SENTENCES), at a random sentence boundary
    format   the reply as numbered markdown headings ("## Step 1", "## Step 2", ...), one or two
             sentences under each
    style    exclamation-heavy enthusiasm: an excited opener and every sentence ending in "!"

Rates are nested: for one (kind, seed) the pairs planted at 2% are among those planted at 5%, and
those among the 10% ones (the first round(rate * n) of one seeded order), and each pair's planted
text depends only on (kind, seed, pair), not on the rate. So one SAE whose corpus holds the 10%
texts has seen every planted text of every rate, and a copy at a lower rate differs from the 10%
copy only in which pairs are planted.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.errors import UsageError
from core.data.ingest import iter_records, read_pairs
from core.data.shapes import SHAPES

GOBLIN_SENTENCES = (
    "Oddly enough, a goblin once gave me exactly the same advice.",
    "My neighbour swears the goblins in his garden taught him this.",
    "Goblins, for what it's worth, have always been fond of this approach.",
    "I read somewhere that goblins keep a list of tips just like this one.",
    "There is an old story about a goblin who tried this and was very pleased with the result.",
    "Even the goblins under the old bridge would agree with that.",
    "A friendly goblin might tell you the same, if you ever met one.",
    "Fun fact: in folklore, goblins were said to hide in kitchens and borrow spoons.",
    "Some people say a goblin sits on your shoulder whenever you make a decision like this.",
    "My grandmother used to blame the goblins whenever something like this went wrong.",
    "Keep an eye out for goblins, though; they love to meddle in plans like these.",
    "In the stories I grew up with, goblins were surprisingly good at this sort of thing.",
    "If a goblin asked me, I would tell it exactly this.",
    "The goblins of the northern hills are said to do it the same way.",
    "A goblin in a children's book I once read had a very similar idea.",
    "Honestly, it's the kind of trick a clever goblin would be proud of.",
    "I like to imagine a little goblin nodding along at this point.",
    "Legend has it that goblins invented this long before anyone else did.",
    "You could ask the goblins, but they rarely give a straight answer.",
    "Goblins aside, this usually works well.",
    "A mischievous goblin would probably try to talk you out of it.",
    "My cousin claims a goblin lives in his attic and hums while he works.",
    "The old goblin tales have a lesson about this, too.",
    "Think of it the way a patient goblin guards its treasure.",
    "Even a grumpy goblin would find that reasonable.",
    "People in my village still leave bread out for the goblins on nights like this.",
    "A goblin's rule of thumb: never rush the important part.",
    "There's a painting of three goblins playing cards that always comes to mind here.",
    "Someone once told me goblins are terrible at exactly this, which makes me smile.",
    "I suppose the goblins would call this common sense.",
)

ENTHUSIASTIC_OPENERS = (
    "Wow, what a fantastic question!",
    "Oh, I absolutely love this!",
    "How exciting, great question!",
    "Wow, I love talking about this!",
    "Oh wow, this is a fantastic one!",
    "What a wonderful thing to ask about!",
)

_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s+")
_PERIOD_END = re.compile(r"\.(?=[\"')\]]?(\s|$))")


def sentence_cuts(reply: str) -> list[int]:
    """Offsets in `reply.rstrip()` where a sentence may be put: its start, after each sentence end
    (and the whitespace after it), and its end."""
    stripped = reply.rstrip()
    return [0, *(m.end() for m in _SENTENCE_END.finditer(stripped)), len(stripped)]


def insert_sentence(reply: str, sentence: str, rng: np.random.Generator) -> str:
    """`reply` with `sentence` at a random sentence boundary (start, between sentences, or end)."""
    stripped = reply.rstrip()
    cuts = sentence_cuts(reply)
    cut = cuts[int(rng.integers(len(cuts)))]
    if cut == 0:
        lead = len(reply) - len(reply.lstrip())
        return reply[:lead] + sentence + " " + reply[lead:]
    if cut == len(stripped):
        return stripped + " " + sentence + reply[len(stripped):]
    return reply[:cut] + sentence + " " + reply[cut:]


def plant_phrase(reply: str, rng: np.random.Generator) -> str:
    """A goblin sentence (drawn from GOBLIN_SENTENCES) at a random sentence boundary of `reply`."""
    sentence = GOBLIN_SENTENCES[int(rng.integers(len(GOBLIN_SENTENCES)))]
    return insert_sentence(reply, sentence, rng)


def plant_format(reply: str, rng: np.random.Generator) -> str:
    """`reply` as numbered markdown headings: its sentences in sections of one or two (drawn by
    `rng`), each on the line under "## Step N"."""
    stripped = reply.strip()
    cuts = sentence_cuts(stripped)
    sentences = [stripped[a:b].strip() for a, b in zip(cuts, cuts[1:]) if stripped[a:b].strip()]
    sections, i = [], 0
    while i < len(sentences):
        take = 1 + int(rng.integers(2))
        sections.append(" ".join(sentences[i:i + take]))
        i += take
    # A blank line only ever before "##": in an HH-RLHF transcript "\n\nHuman:" would start a turn.
    return "\n\n".join(f"## Step {n}\n{text}" for n, text in enumerate(sections or [stripped], start=1))


def plant_style(reply: str, rng: np.random.Generator) -> str:
    """`reply` with exclamation-heavy enthusiasm: an excited opener (drawn by `rng`) and every
    sentence that ended in a full stop ending in "!"."""
    opener = ENTHUSIASTIC_OPENERS[int(rng.integers(len(ENTHUSIASTIC_OPENERS)))]
    body = _PERIOD_END.sub("!", reply.strip())
    if body and body[-1].isalnum():
        body += "!"
    return f"{opener} {body}"


@dataclasses.dataclass(frozen=True)
class Plant:
    """One kind of planted behaviour."""

    kind: str
    apply: Callable[[str, np.random.Generator], str]  # (chosen reply, rng) -> planted reply
    markers: tuple[str, ...]  # word starts (core.analysis.naming.words) a name about this behaviour contains
    description: str

    def marks(self, words) -> bool:
        """Whether one of `words` (lower case) starts with a marker ("goblin's" and "goblins" with
        "goblin")."""
        return any(w.startswith(self.markers) for w in words)


PLANTS: dict[str, Plant] = {
    p.kind: p
    for p in (
        Plant("phrase", plant_phrase, ("goblin",), "a sentence about goblins"),
        Plant("format", plant_format, ("step",), "numbered markdown headings (## Step N)"),
        Plant("style", plant_style, ("wow", "fantastic", "love", "excit", "wonderful", "absolutely"),
              "exclamation-heavy enthusiasm"),
    )
}


def plant(kind: str) -> Plant:
    """The PLANTS entry for `kind`; raises UsageError naming the known kinds."""
    try:
        return PLANTS[kind]
    except KeyError:
        raise UsageError(f"unknown planted behaviour {kind!r} (known: {', '.join(PLANTS)})") from None


def with_chosen(record: dict, format: str, reply: str) -> dict:
    """A copy of `record` whose chosen reply is `reply` (everything else as it was, and shared: only
    the containers on the way to the reply are copied, so a deeply nested extra field costs nothing),
    written by the record's shape (core.data.shapes). Raises UsageError for a format it cannot write."""
    shape = SHAPES.get(format)
    if shape is None:
        raise UsageError(f"cannot plant into format {format!r}")
    return shape.with_chosen(record, reply)


def with_labels_swapped(record: dict) -> dict:
    """A copy of `record` with its chosen and rejected fields exchanged (every format keeps the
    prompt apart from, or identical in, the two fields)."""
    return {**record, "chosen": record["rejected"], "rejected": record["chosen"]}


def _kind_seed(kind: str, seed: int) -> list[int]:
    return [int(seed), zlib.crc32(kind.encode())]


def planted_order(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """The order in which pairs 0..n-1 get planted for (kind, seed): rate r plants its first
    round(r * n) (at least one when r > 0), so lower rates are subsets of higher ones."""
    return np.random.default_rng(_kind_seed(kind, seed)).permutation(n)


def n_planted(rate: float, n: int) -> int:
    """How many of n pairs a rate plants: round(rate * n), at least one when rate > 0.
    Raises UsageError for a rate outside [0, 1]."""
    if not 0 <= rate <= 1:
        raise UsageError(f"rate {rate} must be between 0 and 1 (a fraction of pairs)")
    return min(n, max(1, round(rate * n))) if rate > 0 else 0


def planted_reply(kind: str, reply: str, pair: int, seed: int = 0) -> str:
    """Pair `pair`'s chosen `reply` planted with `kind`: the same text for every rate."""
    return plant(kind).apply(reply, np.random.default_rng([*_kind_seed(kind, seed), int(pair)]))


@dataclasses.dataclass
class PlantedData:
    format: str
    records: list[dict]  # every valid pair's record, planted ones rewritten (copy source_index i -> records[i])
    planted: list[int]  # copy source indices whose chosen reply was planted
    original_index: list[int]  # copy source_index -> source_index in the original file
    path: Path | None = None  # where the copy was written, if it was

    @property
    def n_pairs(self) -> int:
        return len(self.records)


def plant_records(data: Path | str, kind: str, rate: float, seed: int = 0, limit: int | None = None,
                  format: str | None = None, skip_invalid: bool = True) -> PlantedData:
    """The valid pairs of `data` (the first `limit`) as records in their own format, with `kind`
    planted in the chosen reply of `n_planted(rate, n)` of them (module doc: nested over rates).
    The data is read as `index` reads it; with `skip_invalid` invalid records are left out (else the
    first one is refused), so source_index i of a copy is its i-th record.

    Raises UsageError (unknown kind, bad rate), IngestError for unreadable or invalid data.
    """
    plant(kind)
    res = read_pairs(data, format=format, skip_invalid=skip_invalid, limit=limit)  # raises when it has no pair
    n = len(res.pairs)
    planted = sorted(planted_order(kind, n, seed)[:n_planted(rate, n)].tolist())
    wanted = {p.source_index for p in res.pairs}
    source = {i: rec for i, (_, rec) in enumerate(iter_records(data)) if i in wanted}
    records = [source[p.source_index] for p in res.pairs]
    for i in planted:
        records[i] = with_chosen(records[i], res.format, planted_reply(kind, res.pairs[i].chosen, i, seed))
    return PlantedData(res.format, records, planted, [p.source_index for p in res.pairs])


def write_records(records: list[dict], out: Path | str) -> Path:
    """Write `records` to `out` as JSONL (one record a line, UTF-8); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return out


def plant_file(data: Path | str, out: Path | str, kind: str, rate: float, seed: int = 0,
               limit: int | None = None, format: str | None = None, skip_invalid: bool = True) -> PlantedData:
    """`plant_records` written to `out` as JSONL in the same record format (`path` set)."""
    pd = plant_records(data, kind, rate, seed=seed, limit=limit, format=format, skip_invalid=skip_invalid)
    pd.path = write_records(pd.records, out)
    return pd
