"""Does an SAE recipe learn a feature for each planted behaviour? Recipes and seeds side by side on
one planted corpus (issue 25: a recipe may change only if "the goblin and planted-suite results" hold).

The planted suite (bench_calibration.py) needs a full index per SAE (~30 min at 600 pairs here). This
bench asks the question under it, per feature, in minutes: the SAE's corpus is read once, exactly as
`datadebug sae train --data FILE --data PLANTED...` reads it (the files' pairs shuffled together, the
bundled sample after them, up to the recipe's token budget), and every recipe x seed trains on those
activations. For each planted kind, the corpus's replies are scored against the planted chosen
replies (for the phrase plant, those whose read text still holds "goblin"; a sentence past the read
window is not there to find) and the bench prints, for the best feature:
  AP     the best average precision of any feature's per-reply maximum (1.0: one feature's firing
         ranks the planted replies first; core.checks.goblin.reply_detection_scores);
  F1     the best F1 of any feature's strong firings (per-reply max >= REL_MAX of its largest), the
         firings concepts and hypotheses count (core.analysis.concepts.strong), with its precision P
         and recall R: a feature that also fires strongly on folklore or lists is grouped with them,
         and the plant hides in a broader concept;
and each SAE's held-out FVU and dead fraction. The read corpus is cached (float16) under --cache.

    .venv/bin/python tests/bench/bench_sae_plants.py --data uf600.jsonl \
        --plant phrase=uf600.only-phrase.jsonl --plant format=uf600.only-format.jsonl \
        --plant style=uf600.only-style.jsonl --cache /tmp/uf600.corpus.pt --seeds 0 1 2 \
        [--recipe NAME ...] [--set d_sae=4096]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

_GOBLIN = re.compile("goblin", re.IGNORECASE)


def read_corpus(entry, catalog, data: Path, plants: dict[str, Path]):
    """(acts (tokens, d_model) float16, replies [(start, end, kind or "")]) of the recipe's corpus, read
    by collect_activations as `sae train` reads it, with each reply's rows and plant."""
    from core.data.ingest import read_pairs
    from core.model.lm import ResidualReader
    from core.model.sae_train import collect_activations, corpus_pairs

    pairs = list(read_pairs(data, skip_invalid=True).pairs)
    originals = {(p.prompt_text, p.rejected): p.chosen for p in pairs}
    planted = {}  # planted chosen text -> kind
    for kind, path in plants.items():
        got = read_pairs(path, skip_invalid=True).pairs
        pairs += got
        for p in got:
            if originals.get((p.prompt_text, p.rejected)) != p.chosen:
                planted[p.chosen] = kind
    reader = ResidualReader.from_entry(catalog.models[entry.model], layer=entry.layer, device="cpu")
    corpus, stats = corpus_pairs(pairs), {}
    acts = collect_activations(reader, corpus, entry.max_tokens_per_text, entry.activation_tokens, stats=stats)
    replies = []
    for i, side, a, b in stats["replies"]:
        if a >= len(acts):
            continue
        kind = planted.get(corpus[i].chosen, "") if side == "chosen" else ""
        if kind == "phrase":
            ids = reader.tokenize(corpus[i], entry.max_tokens_per_text).chosen_ids[: b - a]
            if not _GOBLIN.search(reader.tokenizer.decode(ids)):
                kind = "phrase-cut"  # the goblin sentence lies past the read window
        replies.append((a, min(b, len(acts)), kind))
    return acts.to(torch.float16), replies


def reply_maxima(sae, acts: torch.Tensor, replies) -> "scipy.sparse.csr_matrix":  # noqa: F821
    """(replies, d_sae) per-reply maximum of each feature."""
    import scipy.sparse as sp

    rows = []
    for a, b, _ in replies:
        z = sae.encode(acts[a:b].float())  # (T, d_sae)
        rows.append(sp.csr_matrix(z.max(0).values.clamp_min(0).numpy()[None]))
    return sp.vstack(rows).tocsr()


def probe(maxima, replies, kind: str, rel_max: float) -> dict:
    """The best feature for `kind`'s planted replies: its AP (ranked by per-reply max) and the F1 of
    its strong firings (max >= `rel_max` x the feature's largest), what concepts count."""
    from core.analysis.concepts import reference_max, strong
    from core.checks.goblin import reply_detection_scores

    mentions = np.array([k == kind for _, _, k in replies])
    scores = reply_detection_scores(maxima, mentions)
    fires = strong(maxima, maxima, reference_max(maxima), rel_max).tocsc()  # (replies, d_sae)
    tp = np.asarray(fires[mentions].astype(bool).sum(0)).ravel()
    n_fire = np.asarray(fires.astype(bool).sum(0)).ravel()
    f1 = 2 * tp / np.maximum(n_fire + mentions.sum(), 1)
    f = int(np.argmax(f1))
    return {"n": int(mentions.sum()), "ap": max((d.ap for d in scores.values()), default=0.0),
            "f1": float(f1[f]), "precision": float(tp[f] / max(n_fire[f], 1)), "recall": float(tp[f] / max(mentions.sum(), 1)),
            "feature": f}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--plant", action="append", default=[], help="KIND=FILE (a planted-only copy of --data)")
    ap.add_argument("--cache", type=Path, required=True, help="the read corpus (made when missing)")
    ap.add_argument("--recipe", action="append", default=None)
    ap.add_argument("--set", action="append", default=[], help="FIELD=VALUE on every recipe (d_sae=4096, k=...)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from core.analysis.concepts import REL_MAX
    from core.model.catalog import load_catalog
    from core.model.sae import load_sae, train_topk_sae

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    plants = dict(s.split("=", 1) for s in args.plant)
    cat = load_catalog()
    recipes = args.recipe or list(dict.fromkeys(  # the one before 2026-12-05, the opt-in one, the default
        ["smollm2-135m-l15-topk", "smollm2-135m-l15-topk-data", cat.sae(None, cat.model(None)).name]))
    first = cat.saes[recipes[0]]
    if args.cache.exists():
        acts, replies = (lambda d: (d["acts"], d["replies"]))(torch.load(args.cache))
    else:
        start = time.perf_counter()
        acts, replies = read_corpus(first, cat, args.data, {k: Path(v) for k, v in plants.items()})
        torch.save({"acts": acts, "replies": replies}, args.cache)
        print(f"corpus read in {time.perf_counter() - start:.0f} s", flush=True)
    counts = {k: sum(r[2] == k for r in replies) for k in [*plants, "phrase-cut"]}
    print(f"corpus: {len(acts):,} tokens, {len(replies):,} replies; planted replies {counts}")
    sets = {}
    for s in args.set:
        field, value = s.split("=", 1)
        sets[field] = type(getattr(first, field))(value) if getattr(first, field) is not None else value
    head = f"{'recipe':<36} {'seed':>4} {'steps':>7} {'s':>5} {'FVU':>6} {'dead':>6}"
    print(head + "".join(f"  {k + ' AP/F1 (P R)':>26}" for k in plants), flush=True)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in recipes:
            e = dataclasses.replace(cat.saes[name], **sets)
            label = " ".join([name, *(f"{k}={v}" for k, v in sets.items())])
            for seed in args.seeds:
                d = Path(tmp) / f"{name}-{seed}"
                q = train_topk_sae(acts.float(), d, d_sae=e.d_sae, k=e.k, train_tokens=e.train_tokens,
                                   batch_size=e.batch_size, lr=e.lr, seed=seed, init=e.init,
                                   patience=e.stop_patience, margin=e.stop_margin)
                t = json.loads((d / "quality.json").read_text())["training"]
                m = reply_maxima(load_sae(d), acts, replies)
                row = {"recipe": name, "set": sets, "seed": seed, "steps": t["steps"], "seconds": q.train_seconds,
                       "fvu": q.fvu, "dead": q.dead_fraction, "plants": {k: probe(m, replies, k, REL_MAX) for k in plants}}
                out.append(row)
                print(f"{label:<36} {seed:>4} {t['steps']:>7} {q.train_seconds:>5.0f} {q.fvu:>6.3f} {q.dead_fraction:>6.1%}"
                      + "".join(f"  {p['ap']:>6.3f} {p['f1']:>5.2f} ({p['precision']:.2f} {p['recall']:.2f})"
                                for p in row["plants"].values()),
                      flush=True)
    print(f"(load average {os.getloadavg()[0]:.1f})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
