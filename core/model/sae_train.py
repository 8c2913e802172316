"""Training the SAE of a catalogue entry that has none published (a "train" recipe).

Each dataset gets its own SAE trained with the recipe (core.model.dataset_sae decides which and names it).

Corpus (documented in README): the replies of the dataset being analysed plus the replies of the
bundled sample (core/data/sample.jsonl), read at the SAE's layer exactly as indexing reads them
(chat-templated prompt in context, activations of the reply tokens only), so the SAE learns the
distribution it will encode.

Reply tokens only, not prompt tokens, on measurement: prompts are most of a chat dataset's tokens
(57% of the goblin benchmark's corpus, HH-RLHF's multi-turn prompts), the shift statistics never
encode them, and they crowd out rare reply-level concepts. With prompts in the corpus, the embedded
recipe had no feature for goblin sentences planted in 1% of chosen replies (best average precision
0.24, precision/recall 0.40; see core.checks.goblin); trained on the same pairs' reply tokens only it has
one (AP 1.00 for each of three SAE seeds, precision/recall 1.00, 0.80, 1.00). Frequent-token
subsampling did worse. `include_prompts=True` restores the old corpus.
"""

from __future__ import annotations

import random
import threading
import time

import torch

from core import locations
from core.model.catalog import Catalog, SAEEntry
from core.data.ingest import Pair, read_pairs
from core.progress import Progress, ProgressFn, check_cancel, reporter
from core.model.residuals import Keep
from core.model.sae import SAEQuality, train_topk_sae
from core.model.store import sae_dir


def collect_activations(
    reader,
    pairs: list[Pair],
    max_tokens: int,
    token_budget: int,
    batch_tokens: int = 4096,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    include_prompts: bool = False,
    keep: Keep | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """Residual activations (tokens, d_model) of the pairs' replies, up to `token_budget` tokens.

    Each reply is read after its prompt (as indexing reads it), but only the reply tokens are kept;
    `include_prompts` keeps the prompt tokens too (bar the chat template's fixed opening).
    Pairs are taken in the order given until their tokens reach the budget, and only then sorted by
    length into batches: sorting first and stopping at the budget would keep only the shortest pairs.

    `keep` (core.model.residuals) keeps the residuals of the dataset pairs it names, up to its byte
    cap, for the index that follows: those pairs are read as the index reads them (its reply cap,
    the prompt's residuals stored too), and the corpus takes each reply's first `max_tokens` tokens,
    what reading the reply cut there gives (the model is causal); the budget counts those. So the
    corpus holds what it holds without `keep` (to float noise), a pair is kept only when the index
    reads the same prompt tokens as the corpus (whose read keeps a prompt's last 2 x `max_tokens`),
    and nothing is when the index's cap is below `max_tokens` or with `include_prompts`. The other
    pairs are read as without `keep`.

    `stats`, when given, receives "pairs_read": how many of `pairs` (the first ones) the budget took,
    and "replies": (pair's index in `pairs`, "chosen" | "rejected", start, end) of each reply's rows in
    the corpus (rows past the budget are cut off the result).
    """
    from core.model.lm import plan_batches

    progress = reporter(progress)
    # The template's shared opening (a fixed system prompt) would be the same few vectors thousands
    # of times over, and the first positions carry outsized norms; skip them.
    skip = reader.template_prefix_len()
    if keep is not None and (include_prompts or (keep.max_tokens is not None and keep.max_tokens < max_tokens)):
        keep = None  # the corpus would not hold what it holds without keeping
    if keep is not None:
        keep.store.start()
    kept: set[int] = set()  # id() of the TokenizedPairs whose residuals are kept
    tokenized, planned = [], 0
    for p in pairs:
        if planned >= token_budget:
            break
        t = reader.tokenize(p, max_tokens)
        if keep is not None and keep.wants(p):
            whole = reader.tokenize(p, keep.max_tokens)
            # Only when its replies follow the same prompt tokens as here (`max_tokens` also cuts the
            # prompt, to its last 2 x max_tokens): their first tokens are then what the corpus reads.
            if whole.prompt_ids == t.prompt_ids and keep.store.reserve(whole, reader.d_model):
                t = whole
                kept.add(id(t))
        tokenized.append(t)
        planned += min(len(t.chosen_ids), max_tokens) + min(len(t.rejected_ids), max_tokens)
        if include_prompts:
            planned += max(0, len(t.prompt_ids) - skip)
    if stats is not None:
        stats["pairs_read"] = len(tokenized)
        stats["replies"] = spans = []
        position = {id(t): i for i, t in enumerate(tokenized)}
    chunks, n = [], 0
    total = min(planned, token_budget)  # what the corpus holds, not the budget (the sample: 23k of 150k)
    # Kept pairs first: the budget can stop the read before the last batches (whose pairs the index
    # would then read again); length-sorted, they would come last.
    batches = (plan_batches([t for t in tokenized if id(t) in kept], batch_tokens)
               + plan_batches([t for t in tokenized if id(t) not in kept], batch_tokens))
    for b_i, batch in enumerate(batches):
        check_cancel(cancel, "activation collection")
        stored = []
        read = reader.read(batch, with_prompt=include_prompts or any(id(t) in kept for t in batch))
        for t, (c, r, *p) in zip(batch, read):
            if id(t) in kept:
                stored.append((t, p[0], c, r))  # (Tp, d), (Tc, d), (Tr, d)
                c, r, p = c[:max_tokens], r[:max_tokens], []
            elif not include_prompts:
                p = []  # read for a kept pair of the same batch
            chunks += [c.cpu(), r.cpu(), *(x[skip:].cpu() for x in p)]
            if stats is not None:
                spans += [(position[id(t)], "chosen", n, n + len(c)), (position[id(t)], "rejected", n + len(c), n + len(c) + len(r))]
            n += len(c) + len(r) + sum(max(0, len(x) - skip) for x in p)
        if stored:
            keep.store.put(stored)
        progress(Progress("sae", "reading activations", done=min(n, total), total=total, unit="tokens"))
        if n >= token_budget:
            break
    if keep is not None:
        keep.store.finish(progress)
    return torch.cat(chunks)[:token_budget]


def corpus_pairs(dataset_pairs) -> list[Pair]:
    """The pairs an SAE's corpus is read from, in order: `dataset_pairs` in a seeded random order (a file
    may be sorted by topic or length), so the token budget goes to the distribution the SAE will
    encode, then the bundled sample's to fill the rest; each distinct pair once (the analysed dataset
    may be the sample itself: the demo)."""
    dataset = list(dataset_pairs)
    random.Random(0).shuffle(dataset)
    seen, pairs = set(), []
    for p in [*dataset, *read_pairs(locations.sample_data_file(), skip_invalid=True).pairs]:
        key = (p.prompt_text, p.chosen, p.rejected)
        if key not in seen:
            seen.add(key)
            pairs.append(p)
    return pairs


def train_catalog_sae(
    entry: SAEEntry,
    catalog: Catalog,
    *,
    extra_pairs: list[Pair] = (),
    activation_tokens: int | None = None,
    device: str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    out_dir=None,
    corpus: list[dict] | None = None,
    keep: Keep | None = None,
) -> SAEQuality:
    """Train `entry` (source = "train") on the default corpus and save it in the store.

    Activations are collected once (up to `activation_tokens`) and the SAE trains several epochs over
    them for `entry.train_tokens` samples. `corpus` describes the datasets `extra_pairs` came from
    ({"path", "sha256", "pairs"} each), recorded in quality.json with the timings that
    `core.model.dataset_sae.estimate_training` reuses. `keep` keeps the residuals of the dataset's
    pairs for the index that follows (`collect_activations`, core.model.residuals). Returns held-out
    quality; raises Cancelled.
    """
    from core.model.lm import ResidualReader

    progress = reporter(progress)
    model = catalog.models[entry.model]
    sample_file = locations.sample_data_file()
    pairs = corpus_pairs(extra_pairs)
    progress(Progress("sae", f"training SAE {entry.name}: reading {len(pairs)} pairs of {model.name} at layer {entry.layer}"))
    start = time.perf_counter()
    reader = ResidualReader.from_entry(model, layer=entry.layer, device=device)
    loaded = time.perf_counter()
    stats: dict = {}
    acts = collect_activations(
        reader, pairs, entry.max_tokens_per_text, activation_tokens or entry.activation_tokens, progress=progress, cancel=cancel,
        keep=keep, stats=stats,
    )
    # corpus_pairs puts the datasets' distinct pairs first: the budget reached the sample past them
    n_data = len({(p.prompt_text, p.chosen, p.rejected) for p in extra_pairs})
    collected = time.perf_counter()
    device_type = reader.device.type
    del reader

    return train_topk_sae(
        acts,
        out_dir or sae_dir(entry),
        d_sae=entry.d_sae,
        k=entry.k,
        train_tokens=entry.train_tokens,
        batch_size=entry.batch_size,
        lr=entry.lr,
        init=entry.init,
        patience=entry.stop_patience,
        margin=entry.stop_margin,
        seed=entry.seed,
        device=device or device_type,  # where the model ran (activations are collected on the host)
        metadata={
            "name": entry.name, "recipe": entry.recipe, "model": model.name, "layer": entry.layer,
            "corpus": {
                "tokens": "replies only, each read after its prompt",
                "order": "the datasets' pairs (seeded shuffle), then the bundled sample's, up to the budget",
                "datasets": list(corpus or []),
                "sample": str(sample_file),
                "sample_pairs_read": max(0, stats["pairs_read"] - n_data),
            },
            "corpus_pairs": len(pairs), "activation_tokens": len(acts),
            "timing": {
                "device_type": device_type, "d_sae": entry.d_sae, "k": entry.k, "batch_size": entry.batch_size,
                "load_seconds": loaded - start, "collect_seconds": collected - loaded, "activation_tokens": len(acts),
            },
        },
        progress=progress,
        cancel=cancel,
    )
