"""Planted behaviours (core.data.plant): the table of kinds, nested rates, only chosen replies touched."""

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import UsageError
from core.data.ingest import read_pairs
from core.analysis.naming import words
from core.data.plant import PLANTS, plant_file, plant_format, plant_records, plant_style, with_labels_swapped

DATA = Path(__file__).resolve().parents[1] / "data" / "hh-short-16.jsonl"  # 16 short HH-RLHF pairs


def test_every_kind_marks_its_replies_and_is_seeded():
    reply = "You could try a warm bath. It helps many people relax. Sleep well."
    for kind, p in PLANTS.items():
        a = p.apply(reply, np.random.default_rng(1))
        assert a == p.apply(reply, np.random.default_rng(1)), kind
        assert a != reply and p.marks(words(a)) and not p.marks(words(reply)), kind
        # the reply's own words survive every kind
        assert set(words(reply)) <= set(words(a)), kind
    many = {plant_format(reply, np.random.default_rng(s)) for s in range(20)}
    assert len(many) > 1  # rng decides how sentences are grouped under the headings
    assert plant_format(reply, np.random.default_rng(0)).startswith("## Step 1\n")
    styled = plant_style(reply, np.random.default_rng(0))
    assert styled.count("!") >= 4 and "." not in styled.split("!", 1)[1]


@pytest.mark.parametrize("kind", list(PLANTS))
def test_rates_are_nested_and_only_chosen_replies_change(kind, tmp_path):
    src = read_pairs(DATA).pairs
    copies = {rate: plant_file(DATA, tmp_path / f"{rate}.jsonl", kind, rate, seed=5) for rate in (0.1, 0.25, 0.5)}
    assert [len(c.planted) for c in copies.values()] == [2, 4, 8]
    assert set(copies[0.1].planted) < set(copies[0.25].planted) < set(copies[0.5].planted)
    assert plant_records(DATA, kind, 0.5, seed=6).planted != copies[0.5].planted
    for c in copies.values():
        out = read_pairs(c.path).pairs  # still valid HH-RLHF transcripts (a format reply adds no turn)
        assert len(out) == 16
        for i, (s, o) in enumerate(zip(src, out)):
            assert (o.prompt, o.rejected) == (s.prompt, s.rejected)
            assert (o.chosen != s.chosen) == (i in c.planted)
            assert PLANTS[kind].marks(words(o.chosen)) or i not in c.planted
    # a pair's planted text does not depend on the rate
    low, high = (read_pairs(copies[r].path).pairs for r in (0.1, 0.5))
    assert all(low[i].chosen == high[i].chosen for i in copies[0.1].planted)


def test_unknown_kind_and_bad_rate_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown planted behaviour 'sarcasm'"):
        plant_records(DATA, "sarcasm", 0.1)
    with pytest.raises(UsageError, match="rate"):
        plant_records(DATA, "phrase", 1.5)


def test_swapping_labels_exchanges_the_replies_of_every_format():
    hh = json.loads(DATA.read_text().splitlines()[0])
    for record in (hh, {"prompt": "q", "chosen": "a", "rejected": "b"},
                   {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}):
        s = with_labels_swapped(record)
        assert (s["chosen"], s["rejected"]) == (record["rejected"], record["chosen"])
        assert with_labels_swapped(s) == record
