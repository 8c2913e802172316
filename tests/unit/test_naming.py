"""Names: c-TF-IDF keywords, words widened from tokens, names of planted concepts, the names cache, and
the OpenAI-compatible namer against a local HTTP server (127.0.0.1, started here; never the internet)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from core.errors import UsageError
from core.analysis.hypotheses import open_hypotheses
from core.analysis.naming import (
    NAMES_VERSION,
    OpenAINamer, clean_name, ctfidf_keywords, load_names, name_with_llm, namer_from_config, word_at,
)
from core.analysis.structure import cache_dir
from core.analysis.tokenwords import FUNCTION_WORDS
from tests.unit.planted import regions


def test_ctfidf_prefers_words_specific_to_a_class():
    docs = {
        0: "the goblin the goblin the goblins said the".split(),
        1: "the recipe the flour the sugar said the".split(),
        2: "the the said".split(),
        3: [],
    }
    kw = ctfidf_keywords(docs, n_words=2)
    assert kw[0] == ["goblin", "goblins"] and set(kw[1]) <= {"flour", "recipe", "sugar"}
    assert kw[3] == [] and "the" not in kw[0] + kw[1]
    assert ctfidf_keywords(docs, n_words=1, stop_words={"goblin"})[0] == ["goblins"]


def test_a_token_is_widened_to_its_word():
    tokens = [" The", " gob", "lin", "s", " hid", ",", " quietly", "."]
    assert [word_at(tokens, i) for i in range(len(tokens))] == [
        "the", "goblins", "goblins", "goblins", "hid", "", "quietly", ""]
    assert word_at(tokens, 99) == "" and word_at(["Gob", "lin"], 1) == "goblin"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return regions(tmp_path_factory.mktemp("names") / "ws")


def test_names_carry_the_planted_words_and_are_cached(planted):
    ws, truth = planted
    engine = open_hypotheses(ws.path)
    m = int(engine.st.response.membership[truth["behaviour"][0]])
    assert "goblin" in engine.names.concept(m)
    assert engine.names.concept(int(engine.st.response.membership[truth["global"][0]])).startswith("please")
    # the data cluster of topic 3 is named by the words of its pairs (prompts "tell me about delta ...")
    cl = int(engine.st.clusters[3 * 50])
    assert "delta" in engine.names.group("cluster", cl)
    assert any("delta" in n for n in engine.names.prompts.values())
    path = cache_dir(ws) / f"{engine.st.key}.names.json"
    assert path.is_file()
    original = path.read_text()
    raw = json.loads(original)
    raw["concepts"][str(m)] = "edited by hand"
    path.write_text(json.dumps(raw))
    assert load_names(engine.analysis, engine.st).concept(m) == "edited by hand"  # read back, not recomputed
    path.write_text(original)


class _Chat(BaseHTTPRequestHandler):
    seen: list = []
    reply = "Name: Goblin folklore asides\nThat is all."

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Chat.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": _Chat.reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture()
def chat_server():
    server = HTTPServer(("127.0.0.1", 0), _Chat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Chat.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_namer_request_and_answer(chat_server):
    namer = OpenAINamer(chat_server, "tiny-chat", api_key="k-123")
    assert namer.name(["goblin", "goblins"], ["A goblin once gave me advice.", "Goblins aside, this works."]) \
        == "Goblin folklore asides"
    req = _Chat.seen[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k-123"
    body = req["body"]
    assert body["model"] == "tiny-chat" and body["temperature"] == 0 and body["max_tokens"] > 0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "goblin, goblins" in body["messages"][1]["content"] and "A goblin once" in body["messages"][1]["content"]


def test_llm_names_are_cached_beside_the_keywords(chat_server, planted):
    ws, truth = planted
    engine = open_hypotheses(ws.path)
    rep = engine.report(top=2)
    names = name_with_llm(engine.analysis, engine.st, engine.names, rep, OpenAINamer(chat_server, "m"))
    asked = len(_Chat.seen)
    assert asked >= 2
    top = rep.hypotheses[0]
    assert names.concept(top.concept).startswith("Goblin folklore asides (") and "goblin" in names.concept(top.concept)
    # a second run asks nothing: the answers are in the workspace
    again = load_names(engine.analysis, engine.st)
    name_with_llm(engine.analysis, engine.st, again, rep, OpenAINamer(chat_server, "m"))
    assert len(_Chat.seen) == asked and again.llm == names.llm


def test_cli_llm_names_the_hypotheses_it_shows(chat_server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from core.cli import app

    ws, truth = regions(tmp_path / "ws")  # its own workspace: no names cached by another test
    without = CliRunner().invoke(app, ["hypotheses", "-w", str(ws.path), "--top", "2", "--json"])
    assert not any(h["concept_name"].startswith("Goblin") for h in json.loads(without.stdout)["hypotheses"])
    monkeypatch.setenv("DATADEBUG_NAMER_URL", chat_server)
    monkeypatch.setenv("DATADEBUG_NAMER_MODEL", "m")
    r = CliRunner().invoke(app, ["hypotheses", "-w", str(ws.path), "--top", "2", "--llm", "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)["hypotheses"]
    assert shown and all(h["concept_name"].startswith("Goblin folklore asides (") for h in shown)


def test_unreachable_endpoint_and_bad_answers_are_usage_errors(chat_server):
    with pytest.raises(UsageError, match="naming endpoint"):
        OpenAINamer("http://127.0.0.1:9/v1", "m", timeout_s=2).name(["x"], [])
    _Chat.reply = ""
    try:
        assert OpenAINamer(chat_server, "m").name(["x"], []) == ""
    finally:
        _Chat.reply = "Name: Goblin folklore asides\nThat is all."
    assert clean_name('  "Refusals of unsafe requests."  ') == "Refusals of unsafe requests"


def test_namer_from_config(config_dir):
    assert namer_from_config({}) is None
    n = namer_from_config({"DATADEBUG_NAMER_URL": "http://127.0.0.1:1/v1", "DATADEBUG_NAMER_MODEL": "m",
                           "DATADEBUG_NAMER_API_KEY": "k"})
    assert n == OpenAINamer("http://127.0.0.1:1/v1", "m", "k")
    (config_dir / "namer.toml").write_text('[namer]\nurl = "http://127.0.0.1:2/v1"\nmodel = "x"\napi_key_env = "MY_KEY"\n')
    try:
        assert namer_from_config({"MY_KEY": "s"}) == OpenAINamer("http://127.0.0.1:2/v1", "x", "s")
        with pytest.raises(UsageError, match="model"):
            _no_model(config_dir)
    finally:
        (config_dir / "namer.toml").unlink()


def _no_model(config_dir):
    (config_dir / "namer.toml").write_text('[namer]\nurl = "http://127.0.0.1:2/v1"\n')
    namer_from_config({})


# -- names from the firing itself (issue 23) --------------------------------------------------------

SMOL = ["I", "'m", " sorry", ",", " I", " don", "'t", " know", " (", "Human", " is", " a", " robot", ").", "\n",
        "-", " item", " one", "\n", "|", " a", " |", " b", " |", "\n", "##", " He", "ading", "\n", "1", ".",
        " First", " gob", "lins", " to", " help"]  # SmolLM2's own tokens of a reply


def test_a_firing_reads_as_a_whole_word_a_phrase_or_a_format_mark():
    from core.analysis.tokenwords import firing_term, word_span

    assert word_span(SMOL, 1) == (0, 2) and word_span(SMOL, 6) == (5, 7) and word_span(SMOL, 33) == (32, 34)
    phrase = {i: firing_term(SMOL, i)[1] for i in range(len(SMOL))}
    assert phrase[1] == phrase[0] == "i'm sorry"  # a contraction's tail is the word, a function word a phrase
    assert phrase[6] == "don't know" and phrase[2] == "sorry" and phrase[33] == "goblins"
    assert phrase[8] == '"(" opening an aside' and phrase[13] == '")." closing an aside'
    assert phrase[15] == '"-" list marker' and phrase[19] == '"|" table pipe' and phrase[21] == '"|" table pipe'
    assert firing_term(SMOL, 25) == ('"##" heading', '"## Heading" heading') and phrase[29] == '"1." numbered list marker'
    assert phrase[34] == "to help" and firing_term(SMOL, 34)[0] == "to"  # grouped by the word, read as a phrase
    assert phrase[27] == "heading" and firing_term(SMOL, 99) == ("", "")
    for i, (key, text) in enumerate(firing_term(SMOL, i) for i in range(len(SMOL))):
        assert text not in {"m", "t", "s", "ading", "gob", "lins", "a", "to", "i", "(", "|"}, (i, text)


def test_a_concept_name_is_what_it_fires_on_most():
    from collections import Counter

    from core.analysis.naming import concept_name

    paren = Counter({('"(" opening an aside', '"(" opening an aside'): 30, ("confused", "confused"): 2,
                     ("natural", "natural"): 2})
    assert concept_name(paren) == '"(" opening an aside'  # the rare co-occurring words stay out
    to = Counter({("to", "to help"): 5, ("to", "to be"): 4, ("to", "to do"): 3, ("goblins", "goblins"): 4})
    assert concept_name(to) == "to help / to be, goblins"
    assert concept_name(Counter()) == ""


def test_numbers_and_headings_read_in_the_context_their_firings_share():
    from collections import Counter

    from core.analysis.naming import concept_name
    from core.analysis.tokenwords import firing_term, word_span

    # SmolLM2's tokens: a space before a digit is a token of its own, and a firing there is the number's
    steps = ["##", " Step", " ", "1", "\n", "Mix", " ", "2", " cups", ".", "\n\n", "##", " Step", " ", "2", "\n", "I",
             " have", " ", "3", " kids", " on", " page", " ", "1", "2", "\n", "4", " eggs"]
    term = {i: firing_term(steps, i) for i in range(len(steps))}
    assert term[0] == term[11] == ('"##" heading', '"## Step" heading')
    assert term[2] == term[3] == term[13] == ("numbers", "step N") and term[23] == term[25] == ("numbers", "page N")
    # after a function word or at a line's start a number is just a number
    assert term[18] == term[27] == ("numbers", "numbers") and term[6] == ("numbers", "mix N")
    assert word_span(steps, 23) == (23, 26) and word_span(steps, 4) == (4, 5)
    fired = Counter({term[2]: 5, term[23]: 1, term[18]: 2, term[0]: 4, ("mix", "mix"): 3})
    assert concept_name(fired) == 'step N, "## Step" heading, mix'
    mixed = Counter({term[2]: 2, term[23]: 2, term[18]: 2})  # no context holds half: the key
    assert concept_name(mixed) == "numbers"
    assert concept_name(Counter({term[2]: 2, ("body", "body"): 1})) == "numbers, body"  # 2 firings: too few for a context
    two_headings = Counter({('"##" heading', '"## Step" heading'): 2, ('"##" heading', '"## Notes" heading'): 3})
    assert concept_name(two_headings) == '"## Notes" heading'


def test_group_names_are_their_prompts_distinctive_phrases():
    from core.analysis.naming import distinct_phrases, prompt_phrases

    stop = {"tell", "me", "about", "and", "the"}
    assert prompt_phrases("Human: tell me about the red dragon and 2 dragons", stop | {"human"}) == {
        "red", "dragon", "dragons", "red dragon"}
    assert distinct_phrases(["dragon", "red dragon", "red", "castle", "moat"], 3) == ["red dragon", "castle", "moat"]


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """The planted workspace with the behaviour's features firing on "(" and the global ones on list
    markers at the start of a line."""
    return regions(tmp_path_factory.mktemp("formats") / "ws",
                   words_over={**{f: "(" for f in range(40, 45)}, **{f: "\n-" for f in range(45, 50)}})


def test_a_concept_firing_on_punctuation_is_named_for_it(formats):
    ws, truth = formats
    engine = open_hypotheses(ws.path)
    names = engine.names
    # the behaviour's concept holds topic 3's features too (they fire in the same replies): "(" first
    assert names.concept(int(engine.st.response.membership[truth["behaviour"][0]])).startswith('"(" opening an aside')
    assert names.concept(int(engine.st.response.membership[truth["global"][0]])).startswith('"-" list marker')
    raw = json.loads((cache_dir(ws) / f"{engine.st.key}.names.json").read_text())
    assert raw["version"] == NAMES_VERSION
    # no name is a lone function word, a single letter or a bare symbol
    for name in names.concepts.values():
        for term in name.split(", "):
            assert term not in FUNCTION_WORDS and len(term) > 1 and any(c.isalpha() for c in term), name
