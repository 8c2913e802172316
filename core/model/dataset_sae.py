"""Which SAE reads a dataset: for a trained SAE, one that has seen that dataset.

A catalogue SAE entry with source "train" is a recipe, not one SAE. Indexing a dataset D with it uses
the SAE "RECIPE@KEY", KEY the first 8 hex digits of D's sha256, trained with the recipe on a corpus
that starts with D's replies and is filled up with the bundled sample's (core.model.sae_train). An SAE
trained on other data may have no feature for what is special about D: on the goblin benchmark an SAE
that had never seen goblins recovered the planted pairs at precision/recall 0.40, one trained on the
audited data at 1.00 (tests/bench/README.md, the goblin test).

So a dataset seen before reuses its SAE, the bundled sample's ships with the package
(core.model.shipped: `demo` trains nothing), and a new one gets its own, trained first; `estimate_training`
says how long that takes before it starts (the CLI prints it, the TUI can ask). `train=False`
(`--no-train-sae`) reads a new dataset with the newest SAE of the recipe already in the store instead.
Any other SAE (sae-lens releases, local folders) is used as named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import locations
from core.model.catalog import VARIANT_SEP, Catalog, SAEEntry
from core.errors import StoreError
from core.progress import Progress, ProgressFn, format_seconds, reporter
from core.model.shipped import install as install_shipped
from core.model.store import sae_dir, sae_ready, trained_variants

if TYPE_CHECKING:
    from core.model.residuals import Keep

KEY_HEX = 8  # hex digits of the corpus hash in an SAE's name


@dataclass(frozen=True)
class SAEChoice:
    """The SAE a dataset will be indexed with."""

    entry: SAEEntry  # what to index with ("RECIPE@KEY" for a trained SAE)
    train: bool  # it must be trained first (for this dataset)
    reason: str  # one line for a person: which SAE and why


@dataclass(frozen=True)
class TrainingEstimate:
    """How long training an SAE with a recipe will take on this machine."""

    seconds: float  # load + read activations + train + held-out quality
    read_tokens_per_s: float  # corpus tokens read through the model (prompt in context), per second
    train_steps_per_s: float
    activation_tokens: int  # tokens the corpus yields, up to the recipe's budget
    steps: int
    basis: str  # how the rates were measured, for a person
    at_most: bool = False  # the recipe stops at a held-out FVU plateau: `steps` (and `seconds`) is its cap

    def line(self) -> str:
        return (
            f"{'at most' if self.at_most else 'about'} {format_seconds(self.seconds)} ({self.activation_tokens:,} tokens at "
            f"{self.read_tokens_per_s:,.0f} tok/s, {'at most ' if self.at_most else ''}{self.steps:,} steps at "
            f"{self.train_steps_per_s:.1f}/s; {self.basis})"
        )


def corpus_key(dataset_sha256s: list[str]) -> str:
    """KEY of the SAE trained on these datasets (in this order): the one dataset's sha256, or for
    several the sha256 of their sha256s, cut to KEY_HEX hex digits."""
    if not dataset_sha256s:
        raise ValueError("a corpus names at least one dataset")
    if len(dataset_sha256s) == 1:
        return dataset_sha256s[0][:KEY_HEX]
    return hashlib.sha256("+".join(dataset_sha256s).encode()).hexdigest()[:KEY_HEX]


def variant(recipe: SAEEntry, key: str) -> SAEEntry:
    """The SAE "RECIPE@KEY" trained with `recipe` for corpus `key`."""
    return dataclasses.replace(recipe, name=f"{recipe.recipe}{VARIANT_SEP}{key}")


def choose_sae(catalog: Catalog, dataset_sha256: str, model: str | None = None, sae: str | None = None,
               train: bool = True) -> SAEChoice:
    """The SAE to index the dataset with hash `dataset_sha256` with (module doc).

    `sae` None means the model's default SAE; a "train" recipe gives the dataset's own variant (to be
    trained when absent, unless `train` is False: then the newest trained variant in the store);
    "RECIPE@KEY" or any other entry is used as named.
    Raises CatalogError for unknown names, StoreError when `train` is False and no SAE of the recipe
    is in the store, or a named variant is absent and was trained for another corpus.
    """
    s = catalog.sae(sae, catalog.model(model))
    if s.source != "train":
        return SAEChoice(s, False, f"SAE {s.name} ({s.source})")
    own = variant(s, corpus_key([dataset_sha256]))
    if s.corpus_key:  # a variant named explicitly
        if sae_ready(s) or install_shipped(s):
            return SAEChoice(s, False, f"SAE {s.name}, {_trained_on(s)}")
        if s.name == own.name:
            return SAEChoice(s, True, f"SAE {s.name} has not been trained yet: training it on this dataset first")
        raise StoreError(f"SAE {s.name} is not in the store (it is trained for the dataset whose sha256 "
                         f"starts {s.corpus_key}: index that dataset, or `datadebug sae train --data` it)")
    if sae_ready(own):
        return SAEChoice(own, False, f"SAE {own.name}, {_trained_on(own)}")
    if install_shipped(own):
        return SAEChoice(own, False, f"SAE {own.name}, shipped with datadebug ({_trained_on(own)})")
    if train:
        return SAEChoice(own, True, f"SAE recipe {s.name} has not seen this dataset: training {own.name} "
                                    "on it first (--no-train-sae or --sae NAME uses an existing SAE)")
    existing = trained_variants(s) + ([s] if sae_ready(s) else [])
    if not existing:
        raise StoreError(f"--no-train-sae: no SAE trained with {s.name} is in the store; "
                         "drop the flag to train one for this dataset")
    return SAEChoice(existing[0], False, f"SAE {existing[0].name}, {_trained_on(existing[0])} "
                                        "(--no-train-sae: it has not seen this dataset)")


def _trained_on(entry: SAEEntry) -> str:
    corpus = (_quality(entry) or {}).get("corpus", {})
    datasets = corpus.get("datasets") or []
    if not datasets:
        return "trained earlier"
    names = " + ".join(Path(d["path"]).name for d in datasets)
    from core.data.workspace import file_sha256

    sample = [file_sha256(locations.sample_data_file())]
    # older SAEs do not record whether the token budget reached the sample's pairs
    filled = [d["sha256"] for d in datasets] != sample and corpus.get("sample_pairs_read", 1) > 0
    return f"trained on {names}" + (" (+ the bundled sample)" if filled else "")


def _quality(entry: SAEEntry) -> dict | None:
    q = sae_dir(entry) / "quality.json"
    try:
        return json.loads(q.read_text())
    except (OSError, ValueError):
        return None


# -- how long training takes -----------------------------------------------------------------------


def estimate_training(recipe: SAEEntry, catalog: Catalog, pairs=None, device: str | None = None,
                      progress: ProgressFn | None = None) -> TrainingEstimate:
    """How long training an SAE with `recipe` on a corpus of `pairs` (+ the bundled sample) takes here.

    Rates come from the newest earlier training run of the same recipe shape on the same kind of
    device (recorded in its quality.json), else from a short measurement now: the model reads ~1k
    reply tokens of the sample, and a few training steps of the recipe's shape run in plain torch
    (scaled by TRAINER_OVERHEAD, sae-lens's trainer against that proxy, measured). The corpus's token
    count is the recipe's budget, or fewer when the corpus is smaller (tokenised to find out).
    """
    from core.model.lm import pick_device

    device = pick_device(device)
    model = catalog.models[recipe.model]
    tokens = _corpus_tokens(recipe, model, pairs)
    steps = max(1, recipe.train_tokens // recipe.batch_size)
    past = _past_rates(recipe, device)
    if past is None:
        reporter(progress)(Progress("sae", f"measuring how fast {model.name} and SAE training run here"))
        past = _measure_rates(recipe, catalog, device)
    load_s, read_rate, step_rate, basis = past
    seconds = load_s + tokens / read_rate + steps / step_rate
    return TrainingEstimate(seconds, read_rate, step_rate, tokens, steps, basis, at_most=recipe.stop_patience > 0)


# sae-lens's SAETrainer step against the plain-torch proxy step of `_measure_rates` (same shapes): the
# TopK auxiliary loss, norm estimation, decoder-norm bookkeeping. Measured on this project's CPU
# machine with the embedded recipe's shape (2048 x 576, batch 1024, 1 thread): 1.09-1.29 over 4 runs.
TRAINER_OVERHEAD = 1.15
MEASURE_TOKENS = 1024  # reply tokens read to measure the model's rate


def _past_rates(recipe: SAEEntry, device: str):
    shape = {"d_sae": recipe.d_sae, "k": recipe.k, "batch_size": recipe.batch_size}
    base = dataclasses.replace(recipe, name=recipe.recipe)
    for v in trained_variants(base):
        q = _quality(v) or {}
        t = q.get("timing") or {}
        if not t or t.get("device_type") != device.split(":")[0] or any(t.get(k) != x for k, x in shape.items()):
            continue
        if t.get("collect_seconds", 0) > 0 and q.get("train_seconds", 0) > 0:
            steps = q["train_tokens"] / recipe.batch_size
            return (t.get("load_seconds", 0.0), t["activation_tokens"] / t["collect_seconds"],
                    steps / q["train_seconds"], f"rates of the training of {v.name}")
    return None


def _measure_rates(recipe: SAEEntry, catalog: Catalog, device: str):
    import torch

    from core.data.ingest import read_pairs
    from core.model.lm import ResidualReader
    from core.model.sae_train import collect_activations

    start = time.perf_counter()
    reader = ResidualReader.from_entry(catalog.models[recipe.model], layer=recipe.layer, device=device)
    load_s = time.perf_counter() - start
    pairs = read_pairs(locations.sample_data_file(), skip_invalid=True).pairs
    # Warm up first: the first forward pass allocates and dispatches (on a 2-core CPU the cold rate was
    # 0.7x the warm one), and an estimate from it said 56 min for a training that took 23 (HH-1,000).
    collect_activations(reader, pairs[:1], recipe.max_tokens_per_text, token_budget=MEASURE_TOKENS)
    sample, n = [], 0  # the next sample pairs holding MEASURE_TOKENS reply tokens, all of them read
    for p in pairs[1:]:
        t = reader.tokenize(p, recipe.max_tokens_per_text)
        sample.append(p)
        n += len(t.chosen_ids) + len(t.rejected_ids)
        if n >= MEASURE_TOKENS:
            break
    start = time.perf_counter()
    acts = collect_activations(reader, sample, recipe.max_tokens_per_text, token_budget=n)
    read_rate = len(acts) / (time.perf_counter() - start)
    d_in = acts.shape[1]
    del reader

    # One TopK SAE step of the recipe's shape: encode, top-k, decode, MSE, backward, Adam.
    g = torch.Generator().manual_seed(0)
    W_enc = (torch.randn(d_in, recipe.d_sae, generator=g) / d_in**0.5).to(device).requires_grad_()
    W_dec = W_enc.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(recipe.d_sae, device=device, requires_grad=True)
    b_dec = torch.zeros(d_in, device=device, requires_grad=True)
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=recipe.lr)
    x = acts[torch.randint(len(acts), (recipe.batch_size,), generator=g)].to(device)

    def step():
        pre = (x - b_dec) @ W_enc + b_enc  # (batch, d_sae)
        top = pre.topk(recipe.k, dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        loss = ((f @ W_dec + b_dec - x) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n, start = 3, time.perf_counter()
    for _ in range(n):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    step_rate = n / (time.perf_counter() - start) / TRAINER_OVERHEAD
    return load_s, read_rate, step_rate, "measured just now"


def _corpus_tokens(recipe: SAEEntry, model, pairs) -> int:
    """Reply tokens (capped per reply as training caps them) the corpus yields, up to the budget."""
    from transformers import AutoTokenizer

    from core.model.sae_train import corpus_pairs
    from core.model.store import pull_model

    tok = AutoTokenizer.from_pretrained(model.tokenizer or pull_model(model))
    n = 0
    for p in corpus_pairs(pairs or []):
        for text in (p.chosen, p.rejected):
            n += min(recipe.max_tokens_per_text, len(tok(text, add_special_tokens=False)["input_ids"]))
        if n >= recipe.activation_tokens:
            return recipe.activation_tokens
    return n


# -- training it ------------------------------------------------------------------------------------


def train_dataset_sae(
    recipe: SAEEntry,
    catalog: Catalog,
    datasets: list[Path | str],
    *,
    device: str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    why: str = "",
    keep: Keep | None = None,
):
    """Train the SAE "RECIPE@KEY" whose corpus starts with the replies of `datasets` (every valid pair
    of each, shuffled together), filled up with the bundled sample's; KEY from their sha256s in order.

    With no datasets the corpus is the sample alone (the demo's SAE). First reports how long it will
    take (`estimate_training`), after `why` when given. `keep` (a core.model.residuals.Keep) keeps
    the residuals of the dataset's pairs for the index that follows. Returns (entry, SAEQuality).
    Raises IngestError for an unreadable file, Cancelled.
    """
    from core.data.hfdata import HFSource, dataset_sha256
    from core.data.ingest import read_pairs
    from core.model.sae_train import train_catalog_sae

    paths = [d if isinstance(d, HFSource) else Path(d) for d in datasets] or [locations.sample_data_file()]
    corpus, pairs = [], []
    for path in paths:
        got = read_pairs(path, skip_invalid=True).pairs
        name = path.location if isinstance(path, HFSource) else str(path.resolve())
        corpus.append({"path": name, "sha256": dataset_sha256(path), "pairs": len(got)})
        pairs += got
    entry = variant(catalog.saes[recipe.recipe], corpus_key([c["sha256"] for c in corpus]))
    est = estimate_training(entry, catalog, pairs, device=device, progress=progress)
    reporter(progress)(Progress("sae", f"{why or 'training SAE ' + entry.name}: {est.line()}", eta_s=est.seconds))
    q = train_catalog_sae(entry, catalog, extra_pairs=pairs, device=device, progress=progress, cancel=cancel,
                          corpus=corpus, keep=keep)
    return entry, q


def prepare(choice: SAEChoice, catalog: Catalog, data: Path | str, *, device: str | None = None,
            progress: ProgressFn | None = None, cancel: threading.Event | None = None, keep: Keep | None = None) -> SAEEntry:
    """Make `choice.entry` ready in the store: train it on `data` when `choice.train` (after reporting
    how long that will take; `keep`, a core.model.residuals.Keep, keeps the residuals of `data`'s
    pairs read for its corpus), pull it when it is a release not yet downloaded. Returns the entry.
    Raises StoreError, IngestError, Cancelled."""
    progress = reporter(progress)
    entry = choice.entry
    if choice.train:
        trained, _ = train_dataset_sae(catalog.saes[entry.recipe], catalog, [data], device=device,
                                       progress=progress, cancel=cancel, why=choice.reason, keep=keep)
        assert trained.name == entry.name, (trained.name, entry.name)
        return entry
    if not sae_ready(entry):
        from core.model.store import pull_sae

        pull_sae(entry, progress)
    return entry
