"""Names: c-TF-IDF keywords, words widened from tokens, names of planted concepts, the names cache, and
the OpenAI-compatible namer against a local HTTP server (127.0.0.1, started here; never the internet)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from core.errors import UsageError
from core.hypotheses import open_hypotheses
from core.naming import (
    OpenAINamer, clean_name, ctfidf_keywords, load_names, name_with_llm, namer_from_config, word_at,
)
from core.structure import cache_dir
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
