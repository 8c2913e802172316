"""Names a person can read, offline: keywords for concepts, data clusters and prompt concepts.

    response concept  what its features fire on, read at the firing itself: the MAX_FIRINGS strongest
                      token firings of each of its features, each turned into a term by
                      core.analysis.tokenwords.firing_term: the whole word the token is part of (" gob" + "lin"
                      + "s" -> "goblins", " I" + "'m" -> "i'm"), a function word with the word after
                      it ("to help", never "to" alone), or a punctuation or format token with its job
                      («"(" opening an aside», «"-" list marker», «"|" table pipe»). The name is the
                      most frequent terms, up to N_WORDS, each at least NAME_SHARE as frequent as the
                      first: a concept that fires on "(" almost always is named by that alone.
    data cluster      the distinctive phrases of its pairs' prompts: words and two-word phrases (no
    prompt concept    stop words, no chat role labels "user", "assistant", "human"), counted once per
                      prompt, ranked by class-based TF-IDF (c-TF-IDF, as BERTopic) against the other
                      groups of the same kind, with scikit-learn's CountVectorizer:
                          weight(term, class) = tf(term, class) / terms in class · ln(1 + mean terms
                                                per class / f(term))
                      f(term) its count over all classes: a phrase frequent in one group and rare
                      elsewhere names it; a phrase everywhere names nothing (and one under GROUP_SHARE
                      of the first phrase's weight is left out). A word inside a phrase
                      already picked is not picked again.

Names are cached in the workspace beside the structure they name (`structure/<key>.names.json`,
with NAMES_VERSION: names of an older rule are computed again, their LLM names kept).

LLM names (optional): a `Namer` turns keywords and example snippets into a short name; a concept's
examples are its strongest exemplars in the hypothesis' driving pairs with the firing word marked
<<like this>> (core.analysis.evidence), a group's its prompts. Two are here:
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
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from core.errors import UsageError
from core.analysis.tokenwords import FUNCTION_WORDS, firing_term, word_at, words

__all__ = ["word_at", "words"]  # re-exported: where a firing lands, as a word

N_WORDS = 3
NAME_SHARE = 0.25  # a term joins a concept's name when it is at least this share as frequent as the first
GROUP_SHARE = 0.5  # a phrase joins a group's name when its c-TF-IDF is at least this share of the first's
MIN_CONTEXT = 3  # firings a number's or heading's shared context needs to name it ("step N", not "mind N" from 2)
MAX_FIRINGS = 40  # strongest token firings per feature read for its concept's words
MAX_PAIRS_PER_CLASS = 200  # prompts read per data cluster / prompt group
NAMES_VERSION = 3  # 2: concepts named at the firing itself, groups by their prompts' phrases; 3: numbers
# and heading marks read in the context their firings share ("step N", '"## Step" heading')
ROLE_WORDS = frozenset({"user", "assistant", "human", "system"})


# -- c-TF-IDF -------------------------------------------------------------------------------------


def ctfidf_weights(docs: dict[int, list[str]], n_words: int = N_WORDS, stop_words=None
                   ) -> dict[int, list[tuple[str, float]]]:
    """class -> its top `n_words` (term, c-TF-IDF weight) (module doc), best first. `docs`: class ->
    its terms (words or phrases, already split); classes without terms get []."""
    from sklearn.feature_extraction.text import CountVectorizer

    classes = [c for c, terms in docs.items() if terms]
    out: dict[int, list[tuple[str, float]]] = {c: [] for c in docs}
    if not classes:
        return out
    vec = CountVectorizer(analyzer=lambda terms: [w for w in terms if not stop_words or w not in stop_words])
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
        out[c] = [(str(vocab[cols[j]]), float(vals[j])) for j in order]
    return out


def ctfidf_keywords(docs: dict[int, list[str]], n_words: int = N_WORDS, stop_words=None) -> dict[int, list[str]]:
    """class -> its top `n_words` terms by c-TF-IDF (ctfidf_weights without the weights)."""
    return {c: [t for t, _ in tw] for c, tw in ctfidf_weights(docs, n_words, stop_words).items()}


def distinct_phrases(ranked: list[str], n: int = N_WORDS) -> list[str]:
    """The first `n` of `ranked` terms, leaving out a term whose words all belong to a term kept
    before it ("delta" after "delta things") and dropping a kept word once a phrase holding it comes."""
    kept: list[str] = []
    for term in ranked:
        mine = set(term.split())
        if any(mine <= set(k.split()) for k in kept):
            continue
        kept = [k for k in kept if not set(k.split()) < mine]
        kept.append(term)
        if len(kept) == n:
            break
    return kept


def prompt_phrases(text: str, stop) -> set[str]:
    """The words and two-word phrases of `text` that may name a group of prompts (no stop words, no
    single letters or bare numbers)."""
    ws = [w for w in words(text)]
    ok = [len(w) > 1 and not w.isdigit() and w not in stop for w in ws]
    out = {w for w, good in zip(ws, ok) if good}
    out |= {f"{a} {b}" for a, b, ga, gb in zip(ws, ws[1:], ok, ok[1:]) if ga and gb and a != b}
    return out


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
        return {"version": NAMES_VERSION,
                **{k: {str(i): v for i, v in getattr(self, k).items()} for k in ("concepts", "clusters", "prompts", "llm")}}

    @classmethod
    def from_json(cls, raw: dict) -> "Names":
        conv = {k: {int(i): v for i, v in raw.get(k, {}).items()} for k in ("concepts", "clusters", "prompts")}
        return cls(**conv, llm=dict(raw.get("llm", {})))


def concept_terms(analysis, concepts, max_firings: int = MAX_FIRINGS) -> dict[int, Counter]:
    """concept -> Counter of (term key, phrase) over the `max_firings` strongest token firings of each
    of its features (core.analysis.tokenwords.firing_term)."""
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
    columns = [t[f"{side}_tokens"] for side in fi.SIDES]
    tokens: dict[tuple[int, int], list[str]] = {}
    out: dict[int, Counter] = {}
    for i in idx.tolist():
        key = (int(fi.row[i]), int(fi.side[i]))
        if key not in tokens:
            tokens[key] = columns[key[1]][key[0]].as_py()
        term = firing_term(tokens[key], int(fi.pos[i]))
        if term[0]:
            out.setdefault(int(membership[feat[i]]), Counter())[term] += 1
    return out


def concept_name(terms: Counter, n_words: int = N_WORDS, share: float = NAME_SHARE) -> str:
    """A concept's name from its firings' terms (module doc): the most frequent term keys, up to
    `n_words`, each at least `share` as frequent as the first. A function word reads as its commonest
    phrase ("to help"), or its two commonest ("to help / to be") when none holds half its firings; a
    number or heading mark reads as its commonest phrase («step N», «"## Step" heading») when that holds
    half its firings and at least MIN_CONTEXT, else as the key («numbers», «"##" heading»)."""
    keys: Counter = Counter()
    phrases: dict[str, Counter] = {}
    for (key, phrase), n in terms.items():
        keys[key] += n
        phrases.setdefault(key, Counter())[phrase] += n
    ranked = sorted(keys.items(), key=lambda kv: (-kv[1], kv[0]))
    if not ranked:
        return ""
    top = ranked[0][1]
    shown = []
    for key, n in ranked[:n_words]:
        if n < share * top:
            break
        common = sorted(phrases[key].items(), key=lambda kv: (-kv[1], kv[0]))
        first, m = common[0]
        if key in FUNCTION_WORDS:
            key = first if 2 * m >= n or len(common) == 1 else f"{first} / {common[1][0]}"
        elif 2 * m >= n and m >= MIN_CONTEXT:  # a number or heading mark in the context most firings share
            key = first
        shown.append(key)
    return ", ".join(shown)


def _prompt_docs(analysis, groups: dict[int, np.ndarray], stop, seed: int = 0) -> dict[int, list[str]]:
    """group -> the phrases (prompt_phrases) of (up to MAX_PAIRS_PER_CLASS of) its prompts, each
    prompt's once."""
    rng = np.random.default_rng(seed)
    picked = {g: (np.sort(rng.choice(r, MAX_PAIRS_PER_CLASS, replace=False)) if len(r) > MAX_PAIRS_PER_CLASS else r)
              for g, r in groups.items()}
    prompts = analysis.ws.pairs_columns(["prompt_text"])["prompt_text"]
    return {g: [p for r in rows for p in sorted(prompt_phrases(prompts[int(r)].as_py() or "", stop))]
            for g, rows in picked.items()}


def group_names(analysis, groups: dict[int, np.ndarray], n_words: int = N_WORDS) -> dict[int, str]:
    """group -> its name from its prompts' distinctive phrases (module doc); `groups`: group -> its
    rows. Groups whose prompts have no phrase get none."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    docs = _prompt_docs(analysis, groups, ENGLISH_STOP_WORDS | ROLE_WORDS)
    out = {}
    for g, ranked in ctfidf_weights(docs, 4 * n_words).items():
        if ranked:  # a phrase far weaker than the best one is in every group's prompts: it names none
            terms = [t for t, w in ranked if w >= GROUP_SHARE * ranked[0][1]]
            out[g] = ", ".join(distinct_phrases(terms, n_words))
    return out


def keyword_names(analysis, st, n_words: int = N_WORDS) -> Names:
    """Keyword names (module doc) of every concept, data cluster and grouped prompt concept of the
    structure `st` (core.analysis.structure.Structure) of `analysis`."""
    concepts = {m: name for m, terms in concept_terms(analysis, st.response).items()
                if (name := concept_name(terms, n_words))}
    clusters = {int(k): np.nonzero(st.clusters == k)[0] for k in range(st.k)}
    g = st.prompt_groups.tocsc()
    groups = {k: g.indices[g.indptr[k] : g.indptr[k + 1]] for k in range(g.shape[1])}
    return Names(concepts, group_names(analysis, clusters, n_words), group_names(analysis, groups, n_words))


def _names_file(analysis, st):
    from core.analysis.structure import cache_dir

    return cache_dir(analysis.ws) / f"{st.key}.names.json"


def load_names(analysis, st) -> Names:
    """The names of structure `st`: read from the workspace's cache, else keyword names computed and
    cached."""
    path = _names_file(analysis, st)
    llm = {}
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("version") == NAMES_VERSION:
                return Names.from_json(raw)
            llm = dict(raw.get("llm", {}))  # asked of a person's endpoint: kept across keyword rules
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass  # a cut or damaged cache: names are derived, so compute them again (and save them)
    names = keyword_names(analysis, st)
    names.llm.update(llm)
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


SYSTEM = ("You name clusters found in a preference dataset. Where the examples mark words <<like this>>, "
          "name what the marked words have in common in their context (a word, a phrase, or a punctuation "
          "or format mark and what it does there); otherwise what the examples have in common. Answer "
          "with a short name of at most five words, nothing else.")


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
        from core.model.catalog import load_catalog
        from core.model.lm import load_full_model

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
    cache the answers with the structure's names. A concept's examples are its strongest exemplars in
    the hypothesis' driving pairs with the firing word marked <<like this>> (core.analysis.evidence); a group's
    are its driving pairs' prompts. Returns the updated Names."""
    from core.analysis.evidence import exemplars, marked

    t = analysis.ws.pairs_columns(["prompt_text"])
    row = analysis.row_of
    for h in report.hypotheses:
        driving = [p.source_index for p in h.driving]
        key = f"concept:{h.concept}"
        if key not in names.llm:
            shots = exemplars(analysis, h.features, driving, n=examples_per_item)
            examples = [marked(s, "<<", ">>") for s in shots]
            names.llm[key] = namer.name([w for w in names.concepts.get(h.concept, "").split(", ") if w], examples)
        key = f"{h.kind}:{h.group}"
        if h.kind != "concept" and key not in names.llm:
            rows = [row[s] for s in driving[:examples_per_item] if s in row]
            examples = [t["prompt_text"][r].as_py() or "" for r in rows]
            names.llm[key] = namer.name([w for w in names.group(h.kind, h.group).split(", ") if w], examples)
    save_names(analysis, st, names)
    return names
