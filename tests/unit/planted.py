"""Constructed workspaces for the concept and hypothesis tests: real LanceDB, firing frequencies and
token firings planted by hand, so the expected concepts, clusters and names are known."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from core.data.workspace import EMBED_DIM, PAIRS_SCHEMA, SCHEMA_VERSION, Workspace

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
         "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]


def build(path, chosen: np.ndarray, rejected: np.ndarray, prompt: np.ndarray, feature_words: dict[int, str],
          d_sae: int, prompt_text: list[str] | None = None, activations: tuple | None = None) -> Workspace:
    """A schema-2 workspace whose pair i has firing frequencies chosen[i], rejected[i], prompt[i]
    ((n, d_sae) dense arrays). A reply's tokens are one word per firing feature (feature_words[f],
    else "w{f}"), and each feature's token firing points at its word, so names can be read back.
    `activations` (chosen, rejected), same shapes, are the mean and max activations (default: the
    frequencies)."""
    act = {"chosen": chosen, "rejected": rejected} if activations is None else dict(zip(("chosen", "rejected"), activations))
    ws = Workspace(path, create=True)
    ws.write_meta({"model": "m", "sae": "s", "sae_sha256": "0" * 64, "layer": 1, "d_sae": d_sae,
                   "schema_version": SCHEMA_VERSION})
    n = len(chosen)
    cols = {name: [] for name in PAIRS_SCHEMA.names}
    for i in range(n):
        cols["source_index"].append(i * 2)  # gaps, as after skipped invalid records
        cols["line"].append(i * 2 + 1)
        cols["prompt"].append("[]")
        cols["prompt_text"].append(prompt_text[i] if prompt_text else f"question {i}")
        cols["n_prompt_tokens"].append(1)
        pf = np.nonzero(prompt[i])[0]
        cols["prompt_feat"].append(pf.tolist())
        cols["prompt_max"].append([1.0] * len(pf))
        cols["prompt_freq"].append(prompt[i, pf].tolist())
        cols["emb_prompt"].append(np.zeros(EMBED_DIM, np.float32))
        for side, m in (("chosen", chosen), ("rejected", rejected)):
            feats = np.nonzero(m[i] + act[side][i])[0]
            tokens = [" " + feature_words.get(int(f), f"w{f}") for f in feats]
            cols[side].append("".join(tokens).strip())
            cols[f"{side}_tokens"].append(tokens)
            cols[f"{side}_feat"].append(feats.tolist())
            cols[f"{side}_mean"].append(act[side][i, feats].tolist())
            cols[f"{side}_max"].append(act[side][i, feats].tolist())
            cols[f"{side}_freq"].append(m[i, feats].tolist())
            cols[f"{side}_tok_feat"].append(feats.tolist())
            cols[f"{side}_tok_pos"].append(list(range(len(feats))))
            cols[f"{side}_tok_val"].append([1.0] * len(feats))
            cols[f"emb_{side}"].append(np.zeros(EMBED_DIM, np.float32))
    ws.add_pairs(pa.table(cols, schema=PAIRS_SCHEMA))
    return ws


def regions(path, n: int = 400, seed: int = 0, rare: int = 0, weak: int = 0, swap: int | None = None,
            words_over: dict[int, str] | None = None
            ) -> tuple[Workspace, dict]:
    """8 topics of n/8 pairs, each with a topic concept (5 features) in both replies and a prompt
    concept (5 prompt features); a behaviour (features 40-44, words "goblin"...) in the chosen replies
    of topic 3 only; a global concept (45-49) more often in chosen everywhere (0.6 vs 0.4), so its
    global shift is larger than the behaviour's; features 50-99 fire at random (noise). With `rare`,
    a second behaviour (features 150-153, word "dragon") in the chosen replies of `rare` random pairs,
    whatever their topic (a goblin test: rare, spread over the data). With `weak`, the dragon features
    also fire in `weak` other pairs, on one reply at random, as often (freq 0.2) but weakly (max 0.3,
    where every other firing has max 1): a broad SAE feature's tail, as the goblin feature has.
    With `swap` (a seed), chosen and rejected are exchanged in a random half of the pairs: a
    label-shuffled copy, whose labels carry no preference at all.
    `words_over`: feature -> the token it fires on, over the defaults (names of punctuation concepts)."""
    rng = np.random.default_rng(seed)
    d = 200
    topic = np.repeat(np.arange(8), n // 8)

    def block(on, feats, p=0.9):
        m = np.zeros((n, d))
        for f in feats:
            m[:, f] = on & (rng.random(n) < p)
        return m

    chosen, rejected, prompt = np.zeros((n, d)), np.zeros((n, d)), np.zeros((n, d))
    for t in range(8):
        chosen += block(topic == t, range(t * 5, t * 5 + 5))
        rejected += block(topic == t, range(t * 5, t * 5 + 5))
        prompt += block(topic == t, range(100 + t * 5, 105 + t * 5))
    chosen += block(topic == 3, range(40, 45))
    chosen += block(rng.random(n) < 0.6, range(45, 50))
    rejected += block(rng.random(n) < 0.4, range(45, 50))
    for f in range(50, 100):
        chosen[:, f] = rng.random(n) < 0.1
        rejected[:, f] = rng.random(n) < 0.1
    rare_rows = np.sort(rng.choice(n, size=rare, replace=False)) if rare else np.zeros(0, np.int64)
    chosen[np.ix_(rare_rows, np.arange(150, 154))] = 1
    chosen, rejected, prompt = (np.minimum(m, 1) * 0.2 for m in (chosen, rejected, prompt))
    words = {f: WORDS[f // 5] for f in range(40)}
    words.update({f: ["goblin", "goblins", "goblin", "goblins", "goblin"][f - 40] for f in range(40, 45)})
    words.update({f: "please" for f in range(45, 50)})
    words.update({f: "dragon" for f in range(150, 154)})
    words.update(words_over or {})
    texts = [f"tell me about {WORDS[t]} and {WORDS[t]} things" for t in topic]
    activations = None
    if weak:
        wr = np.random.default_rng(seed + 1)  # the draws above stay those of weak=0
        others = wr.choice(np.setdiff1d(np.arange(n), rare_rows), size=weak, replace=False)
        on_chosen = wr.random(weak) < 0.5
        activations = tuple((m > 0).astype(float) for m in (chosen, rejected))
        for m, act, rows in zip((chosen, rejected), activations, (others[on_chosen], others[~on_chosen])):
            m[np.ix_(rows, np.arange(150, 154))] = 0.2
            act[np.ix_(rows, np.arange(150, 154))] = 0.3
    if swap is not None:
        flip = np.random.default_rng(1000 + swap).permutation(n)[: n // 2]
        chosen[flip], rejected[flip] = rejected[flip].copy(), chosen[flip].copy()
        if activations is not None:
            activations = tuple(a.copy() for a in activations)
            activations[0][flip], activations[1][flip] = activations[1][flip].copy(), activations[0][flip].copy()
    ws = build(path, chosen, rejected, prompt, words, d, texts, activations=activations)
    return ws, {"topic": topic, "behaviour": list(range(40, 45)), "global": list(range(45, 50)),
                "rare": list(range(150, 154)), "rare_rows": rare_rows.tolist()}
