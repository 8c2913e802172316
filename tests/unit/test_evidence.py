"""Evidence and one truth for u (issue 23): names read at the firing, exemplar snippets of a
hypothesis' concept in its driving pairs, and a pair's u on a concept read the same way by the
ranking, its driving pairs and the pair view. On the small real workspace (tiny real SAE) and on the
planted one."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from core.analysis.evidence import marked, snippet_of
from core.session import Session
from core.analysis.tokenwords import FUNCTION_WORDS, words
from core.views import HypothesisKey
from tests.unit.planted import regions


@pytest.fixture(scope="module")
def session(small_workspace, tmp_path_factory):
    dest = tmp_path_factory.mktemp("evidence") / "hh"
    shutil.copytree(small_workspace, dest)
    s = Session(dest)
    s.hypotheses_engine()
    return s


def test_names_of_a_real_workspace_are_whole_words_phrases_or_format_marks(session):
    engine = session.hypotheses_engine()
    t = session.ws.pairs_columns(["chosen", "rejected"])
    reply_words = {w for side in ("chosen", "rejected") for text in t[side].to_pylist() for w in words(text)}
    names = [n for n in engine.names.concepts.values() if n]
    assert len(names) >= 10
    for name in names:
        for term in name.split(", "):
            for part in term.split(" / "):
                if part.startswith('"'):  # a punctuation or format mark, with what it does
                    assert re.fullmatch(r'"[^"]{1,4}"( [a-z][a-z ]+)?', part), name
                    continue
                ws = part.split()
                assert not (len(ws) == 1 and ws[0] in FUNCTION_WORDS), name  # never a lone "to", "i"
                # whole words of the replies, never subword pieces (" m", "t", "ading")
                assert all(w in reply_words or w == "numbers" for w in ws), (name, part)


def test_a_snippet_is_the_whole_word_with_ten_words_either_side():
    tokens = [" one", " two", " three", " four", " five", " six", " seven", " eight", " nine", " ten", " eleven",
              " twelve", " gob", "lins", " said", ",", " line", "\n", "-", " item"]
    before, span, after = snippet_of(tokens, 13)
    assert span == "goblins" and before == "…three four five six seven eight nine ten eleven twelve "
    assert after == " said, line ⏎ - item"
    assert snippet_of(tokens, 18, context_words=2) == ("…line ⏎ ", "-", " item")
    # a firing on the space token SmolLM2 writes before a digit shows the number, never an empty «»
    steps = ["##", " Step", " ", "1", "\n", "Mix", " ", "2", " cups", "."]
    assert snippet_of(steps, 2) == ("## Step ", "1", " ⏎ Mix 2 cups.") and snippet_of(steps, 6)[1] == "2"


def test_evidence_shows_the_strongest_firings_in_a_chosen_and_a_rejected_reply(session):
    rep = session.hypotheses(top=20)
    assert rep.hypotheses
    for h in rep.hypotheses:
        snips = session.evidence(h)
        feats = set(h.features)
        # every firing of the concept's features that count in the reply (as u reads them), pair by pair
        fired = {}
        for p in h.driving:
            view = session.pair(p.source_index, concept=h.concept)
            for side in ("chosen", "rejected"):
                vals = [v for f, pv in view.firings[side].items() if f in feats & view.counted[side] for _, v in pv]
                if vals:
                    fired[(p.source_index, side)] = max(vals)
        assert len(snips) == min(3, len(fired))
        if not fired:
            continue
        assert snips[0].activation == pytest.approx(max(fired.values()))
        assert {s.side for s in snips} == {side for _, side in fired} or len(snips) == 3
        for side in ("chosen", "rejected"):  # one of each where both exist
            assert any(s.side == side for s in snips) == any(sd == side for _, sd in fired)
        u = dict(zip([p.source_index for p in h.driving], session.pair_u(h.concept, [p.source_index for p in h.driving])))
        for s in snips:
            assert fired[(s.source_index, s.side)] == pytest.approx(s.activation)
            assert s.u == u[s.source_index]
            assert len(s.before.replace("…", "").split()) <= 10 and len(s.after.replace("…", "").split()) <= 10
            reply = getattr(session.pair(s.source_index), s.side)
            assert s.span and s.span in " ".join(reply.split()).replace("\n", " ") or s.span in reply
    key = HypothesisKey.of(rep.hypotheses[0])
    assert session.evidence(key) == session.evidence(rep.hypotheses[0])  # the key's drivers are the same


def test_one_truth_for_u_across_list_detail_and_pair_view(session):
    rep = session.hypotheses(top=20)
    seen = 0
    for h in rep.hypotheses:
        listed = session.hypothesis_pairs(h)
        for p, row in zip(h.driving, listed.rows):
            view = session.pair(p.source_index, concept=h.concept).concept
            assert row.source_index == p.source_index and row.delta == pytest.approx(p.u)
            assert view.u == pytest.approx(p.u) and view.chosen - view.rejected == pytest.approx(p.u, abs=1e-6)
            seen += 1
    assert seen >= 5


def test_evidence_and_the_pair_view_show_only_what_u_counts(session):
    """A snippet or highlight in a reply whose share of the concept is 0 would contradict the pair's u
    (a feature firing weakly there does not count): each comes only from a reply where the concept's
    share is above 0, and the pair view's counted features are exactly those that make its share."""
    rep = session.hypotheses(top=30)
    engine = session.hypotheses_engine()
    snippets = weak = 0
    for h in rep.hypotheses:
        for s in session.evidence(h, n=6):
            view = session.pair(s.source_index, concept=h.concept)
            share = view.concept.chosen if s.side == "chosen" else view.concept.rejected
            assert share > 0, (h.sentence, s)
            snippets += 1
        for p in h.driving:
            view = session.pair(p.source_index, concept=h.concept)
            for side, share in (("chosen", view.concept.chosen), ("rejected", view.concept.rejected)):
                counted = view.counted[side]
                assert share == pytest.approx(len(counted) / len(view.concept.features))
                weak += any(f in view.firings[side] and f not in counted for f in view.concept.features)
    assert snippets >= 10
    assert weak >= 1, "no driving pair has a weak, uncounted firing: the test does not exercise the filter"
    assert engine.counted([0])[0].shape == (1, session.analysis.d_sae)


def test_cli_hypotheses_shows_escaped_evidence(tmp_path):
    from typer.testing import CliRunner

    from core.cli import app

    ws, truth = regions(tmp_path / "ws", words_over={f: "gob\x1b[2Jlin" for f in range(40, 45)})
    r = CliRunner().invoke(app, ["hypotheses", "-w", str(ws.path), "--top", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stdout
    top = json.loads(r.stdout)["hypotheses"][0]
    ev = top["evidence"]
    # the behaviour's concept holds topic 3's "delta" features, which fire in rejected replies too
    assert len(ev) == 3 and {e["side"] for e in ev} == {"chosen", "rejected"}
    assert ev[0]["span"] in ("delta", "gob\x1b[2Jlin") and any("gob\x1b[2Jlin" in e["after"] + e["span"] for e in ev)
    assert all(set(e) >= {"source_index", "side", "before", "span", "after", "activation", "u"} for e in ev)
    text = CliRunner().invoke(app, ["hypotheses", "-w", str(ws.path), "--top", "3"]).stdout
    assert "\x1b" not in text and "gob<ESC>[2Jlin" in text and f"chosen #{ev[0]['source_index']}" in text
    assert marked(type("S", (), {"before": "a ", "span": "\x07b", "after": ""})()) == "a «<BEL>b»"
