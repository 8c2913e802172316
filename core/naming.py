"""Names a person can read, offline: keywords for concepts, data clusters and prompt concepts.

Keyword names (always, no network): class-based TF-IDF (c-TF-IDF, as BERTopic) over one "document"
per class, counted with scikit-learn's CountVectorizer:
    weight(word, class) = tf(word, class) / words in class · ln(1 + mean words per class / f(word))
where f(word) is the word's count over all classes: a word frequent in one class and rare elsewhere
names it; a word everywhere ("the", "I") names nothing. A name is the class's top N_WORDS words.

    response concept  the words where its features fire: the stored token firings (every firing
                      feature's strongest positions in a reply), each token widened to the whole word
                      it is part of (" gob" + "lin" + "s" -> "goblins"); the MAX_FIRINGS strongest
                      firings of each feature. Every word counts, stop words included: a concept
                      about "not" / "can't" is named by them.
    data cluster      the words of its pairs' prompts and replies (English stop words and the role
                      labels of chat transcripts, "user", "assistant", "human", left out).
    prompt concept    the words of the prompts that express it (its group S(k), core.structure).

Names are cached in the workspace beside the structure they name (`structure/<key>.names.json`).

LLM names (optional): a `Namer` turns keywords and example snippets into a short name. Two are here:
`OpenAINamer`, for any OpenAI-compatible chat-completions endpoint the user configures (config file
`namer.toml` in the config dir, or DATADEBUG_NAMER_URL / _MODEL / _API_KEY), and `ModelNamer`, the
catalogue model itself when it is an instruct model (it has a chat template). LLM names are cached too,
keyed by what was asked, and never replace the keyword name: both are shown.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from core.errors import UsageError

N_WORDS = 3
MAX_FIRINGS = 40  # strongest token firings per feature read for its concept's words
MAX_PAIRS_PER_CLASS = 200  # pairs' text read per data cluster / prompt group
ROLE_WORDS = frozenset({"user", "assistant", "human", "system"})
_WORD = re.compile(r"[a-z][a-z']*[a-z]|[a-z]")


# -- c-TF-IDF -------------------------------------------------------------------------------------


def ctfidf_keywords(docs: dict[int, list[str]], n_words: int = N_WORDS, stop_words=None) -> dict[int, list[str]]:
    """class -> its top `n_words` words by c-TF-IDF (module doc). `docs`: class -> its words (already
    split); classes without words get []."""
    from sklearn.feature_extraction.text import CountVectorizer

    classes = [c for c, words in docs.items() if words]
    out: dict[int, list[str]] = {c: [] for c in docs}
    if not classes:
        return out
    vec = CountVectorizer(analyzer=lambda words: [w for w in words if not stop_words or w not in stop_words])
    tf = vec.fit_transform([docs[c] for c in classes]).astype(np.float64)  # (classes, vocab)
    if tf.shape[1] == 0:
        return out
    vocab = np.asarray(vec.get_feature_names_out())
    per_class = np.asarray(tf.sum(1)).ravel()
    f_word = np.asarray(tf.sum(0)).ravel()
    idf = np.log(1 + per_class.mean() / f_word)
    w = tf.multiply(1 / np.maximum(per_class, 1)[:, None]).tocsr().multiply(idf[None, :]).tocsr()
    for i, c in enumerate(classes):
        lo, hi = w.indptr[i], w.indptr[i + 1]
        cols, vals = w.indices[lo:hi], w.data[lo:hi]
        order = np.lexsort((vocab[cols], -vals))[:n_words]
        out[c] = [str(vocab[cols[j]]) for j in order]
    return out


def words(text: str) -> list[str]:
    """Lower-case words of `text` (letters and inner apostrophes)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def word_at(tokens: list[str], pos: int) -> str:
    """The whole word that token `pos` is part of, lower-cased ("" for punctuation or space)."""
    if not 0 <= pos < len(tokens):
        return ""

    def joins(t: str) -> bool:  # continues the word before it
        return bool(t) and t[0].isalnum()

    start, end = pos, pos
    while start > 0 and joins(tokens[start]) and tokens[start - 1][-1:].isalnum():
        start -= 1
    while end + 1 < len(tokens) and joins(tokens[end + 1]) and tokens[end][-1:].isalnum():
        end += 1
    found = words("".join(tokens[start : end + 1]))
    return found[0] if found else ""


# -- names of a structure -------------------------------------------------------------------------


@dataclass
class Names:
    """Readable names of a structure's concepts and groups (missing ones read as "")."""

    concepts: dict[int, str] = field(default_factory=dict)  # response concept -> "word, word, word"
    clusters: dict[int, str] = field(default_factory=dict)  # data cluster -> words
    prompts: dict[int, str] = field(default_factory=dict)  # grouped prompt concept -> words
    llm: dict[str, str] = field(default_factory=dict)  # "concept:12" / "cluster:3" / "prompt:4" -> LLM name

    def concept(self, m: int) -> str:
        return self._with_llm(self.concepts.get(int(m), ""), f"concept:{int(m)}")

    def group(self, kind: str, g: int) -> str:
        table = self.clusters if kind == "cluster" else self.prompts
        return self._with_llm(table.get(int(g), ""), f"{kind}:{int(g)}")

    def _with_llm(self, keywords: str, key: str) -> str:
        llm = self.llm.get(key)
        return f"{llm} ({keywords})" if llm and keywords else (llm or keywords)

    def to_json(self) -> dict:
        return {k: {str(i): v for i, v in getattr(self, k).items()} for k in ("concepts", "clusters", "prompts", "llm")}

    @classmethod
    def from_json(cls, raw: dict) -> "Names":
        conv = {k: {int(i): v for i, v in raw.get(k, {}).items()} for k in ("concepts", "clusters", "prompts")}
        return cls(**conv, llm=dict(raw.get("llm", {})))


def concept_words(analysis, concepts, max_firings: int = MAX_FIRINGS) -> dict[int, list[str]]:
    """concept -> the words where its features fire (the `max_firings` strongest firings per feature)."""
    fi = analysis.token_firings()
    feat, val = fi.feature, fi.val
    keep = np.zeros(len(feat), bool)
    if len(feat):
        order = np.lexsort((-val, feat))  # by feature, strongest first
        start = np.searchsorted(feat[order], feat[order])
        keep[order[np.arange(len(order)) - start < max_firings]] = True
    membership = concepts.membership
    idx = np.nonzero(keep & (membership[np.minimum(feat, len(membership) - 1)] >= 0))[0]
    t = analysis.ws.pairs_columns(["chosen_tokens", "rejected_tokens"])
    toks = {side: t[f"{side}_tokens"] for side in fi.SIDES}
    cache: dict[tuple[int, int], list[str]] = {}
    docs: dict[int, list[str]] = {}
    for i in idx:
        r, sd = int(fi.row[i]), int(fi.side[i])
        key = (r, sd)
        if key not in cache:
            cache[key] = toks[fi.SIDES[sd]][r].as_py()
        w = word_at(cache[key], int(fi.pos[i]))
        if w:
            docs.setdefault(int(membership[feat[i]]), []).append(w)
    return docs


def _text_docs(analysis, groups: dict[int, np.ndarray], columns: list[str], seed: int = 0) -> dict[int, list[str]]:
    """group -> the words of `columns` over (up to MAX_PAIRS_PER_CLASS of) its rows."""
    rng = np.random.default_rng(seed)
    picked = {g: (np.sort(rng.choice(r, MAX_PAIRS_PER_CLASS, replace=False)) if len(r) > MAX_PAIRS_PER_CLASS else r)
              for g, r in groups.items()}
    t = analysis.ws.pairs_columns(columns)
    cols = {c: t[c] for c in columns}
    return {g: [w for r in rows for c in columns for w in words(cols[c][int(r)].as_py() or "") if len(w) > 1]
            for g, rows in picked.items()}


def keyword_names(analysis, st, n_words: int = N_WORDS) -> Names:
    """Keyword names (module doc) of every concept, data cluster and grouped prompt concept of the
    structure `st` (core.structure.Structure) of `analysis`."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop = ENGLISH_STOP_WORDS | ROLE_WORDS
    join = ", ".join
    concepts = {m: join(ws) for m, ws in ctfidf_keywords(concept_words(analysis, st.response), n_words).items() if ws}
    clusters = {int(k): np.nonzero(st.clusters == k)[0] for k in range(st.k)}
    cl_docs = _text_docs(analysis, clusters, ["prompt_text", "chosen", "rejected"])
    cl_names = {k: join(ws) for k, ws in ctfidf_keywords(cl_docs, n_words, stop).items() if ws}
    g = st.prompt_groups.tocsc()
    groups = {k: g.indices[g.indptr[k] : g.indptr[k + 1]] for k in range(g.shape[1])}
    pr_docs = _text_docs(analysis, groups, ["prompt_text"])
    pr_names = {k: join(ws) for k, ws in ctfidf_keywords(pr_docs, n_words, stop).items() if ws}
    return Names(concepts, cl_names, pr_names)


def _names_file(analysis, st):
    from core.structure import cache_dir

    return cache_dir(analysis.ws) / f"{st.key}.names.json"


def load_names(analysis, st) -> Names:
    """The names of structure `st`: read from the workspace's cache, else keyword names computed and
    cached."""
    path = _names_file(analysis, st)
    if path.is_file():
        try:
            return Names.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass  # a cut or damaged cache: names are derived, so compute them again (and save them)
    names = keyword_names(analysis, st)
    save_names(analysis, st, names)
    return names


def save_names(analysis, st, names: Names) -> None:
    path = _names_file(analysis, st)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(names.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


# -- LLM names --------------------------------------------------------------------------------------


class Namer(Protocol):
    """Turns a concept's or group's keywords and a few example snippets into a short name."""

    def name(self, keywords: list[str], examples: list[str]) -> str: ...


SYSTEM = ("You name clusters found in a preference dataset. Answer with a short name of at most five "
          "words for what the examples have in common, nothing else.")


def prompt_text(keywords: list[str], examples: list[str]) -> str:
    """The user message a Namer sends."""
    shown = "\n".join(f"- {' '.join(e.split())[:300]}" for e in examples[:8])
    return f"Keywords: {', '.join(keywords)}\nExamples:\n{shown}\nName:"


def clean_name(text: str) -> str:
    """The first line of a model's answer, without quotes or a "Name:" prefix, at most 60 characters."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(name\s*:)?\s*", "", line, flags=re.IGNORECASE).strip(" \"'`*.")
    return line[:60]


@dataclass(frozen=True)
class OpenAINamer:
    """An OpenAI-compatible chat-completions endpoint: POST {url}/chat/completions."""

    url: str
    model: str
    api_key: str = ""
    timeout_s: float = 30.0

    def request(self, keywords: list[str], examples: list[str]) -> tuple[str, dict, bytes]:
        """(url, headers, body) of the request `name` sends."""
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": prompt_text(keywords, examples)}],
            "max_tokens": 16,
            "temperature": 0,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return self.url.rstrip("/") + "/chat/completions", headers, json.dumps(body).encode()

    def name(self, keywords: list[str], examples: list[str]) -> str:
        import urllib.error
        import urllib.request

        url, headers, body = self.request(keywords, examples)
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = json.loads(resp.read().decode("utf-8"))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise UsageError(f"naming endpoint {self.url}: {exc}") from None
        try:
            return clean_name(raw["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise UsageError(f"naming endpoint {self.url}: unexpected answer {str(raw)[:200]}") from None


class ModelNamer:
    """The catalogue model itself, when it is an instruct model (its tokenizer has a chat template)."""

    def __init__(self, model_name: str | None = None, device: str | None = None):
        from core.catalog import load_catalog
        from core.lm import load_full_model

        entry = load_catalog().model(model_name)
        self.model, self.tok = load_full_model(entry, device)
        if not getattr(self.tok, "chat_template", None):
            raise UsageError(f"model {entry.name} is not an instruct model (no chat template): configure an endpoint")

    def name(self, keywords: list[str], examples: list[str]) -> str:
        import torch

        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt_text(keywords, examples)}]
        ids = self.tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(ids, max_new_tokens=16, do_sample=False)
        return clean_name(self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def namer_from_config(env: dict | None = None) -> Namer | None:
    """The Namer the user configured, or None. DATADEBUG_NAMER_URL (+ _MODEL, _API_KEY) wins over
    `namer.toml` in the config dir ([namer] url, model, api_key_env); url = "catalogue" names with the
    catalogue model. Raises UsageError for a config without a model."""
    from core import locations

    env = os.environ if env is None else env
    conf: dict = {}
    path = locations.config_dir() / "namer.toml"
    if path.is_file():
        with open(path, "rb") as f:
            conf = tomllib.load(f).get("namer", {})
    url = env.get("DATADEBUG_NAMER_URL") or conf.get("url")
    if not url:
        return None
    if url == "catalogue":
        return ModelNamer(conf.get("model") or env.get("DATADEBUG_NAMER_MODEL"))
    model = env.get("DATADEBUG_NAMER_MODEL") or conf.get("model")
    if not model:
        raise UsageError("a naming endpoint needs a model: set DATADEBUG_NAMER_MODEL or [namer] model in namer.toml")
    key = env.get("DATADEBUG_NAMER_API_KEY") or env.get(conf.get("api_key_env", ""), "")
    return OpenAINamer(url, model, key)


def name_with_llm(analysis, st, names: Names, report, namer: Namer, examples_per_item: int = 6) -> Names:
    """Ask `namer` for a name of each concept and group in `report`'s hypotheses that has none yet;
    cache the answers with the structure's names. Returns the updated Names."""
    t = analysis.ws.pairs_columns(["prompt_text", "chosen"])
    row = analysis.row_of
    for h in report.hypotheses:
        rows = [row[p.source_index] for p in h.driving[:examples_per_item] if p.source_index in row]
        for key, kw, col in ((f"concept:{h.concept}", names.concepts.get(h.concept, ""), "chosen"),
                             (f"{h.kind}:{h.group}", names.group(h.kind, h.group), "prompt_text")):
            if key in names.llm:
                continue
            examples = [t[col][r].as_py() or "" for r in rows]
            names.llm[key] = namer.name([w for w in kw.split(", ") if w], examples)
    save_names(analysis, st, names)
    return names
