"""SAE training on the bundled sample: quality against steps, and the recipes side by side (issue 25,
"training that stops when it is done").

The sample's corpus is read once (as `datadebug sae train` reads it). Then, from the same seed:
  --steps N ...   the embedded recipe at each step count (its cosine schedule scaled to that count);
  (default)       the catalogue's recipes of the sample's model side by side, each as its entry says:
                  the embedded one (sae-lens's initialisation, 600 steps) and the opt-in one
                  initialised from the data and stopping at a held-out FVU plateau, plus that one
                  without the stop (what the initialisation alone does).
Each row prints the steps run, training seconds, held-out FVU, L0 and dead fraction.

    .venv/bin/python tests/bench/bench_sae_steps.py [--steps 150 300 450 600 900]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="*", default=None, help="scan the embedded recipe's step count")
    ap.add_argument("--sae", default="smollm2-135m-l15-topk")
    ap.add_argument("--data-recipe", default="smollm2-135m-l15-topk-data")
    args = ap.parse_args(argv)

    from core.model.catalog import load_catalog
    from core.model.lm import ResidualReader
    from core.model.sae import train_topk_sae
    from core.model.sae_train import collect_activations, corpus_pairs

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    cat = load_catalog()
    entry = cat.saes[args.sae]
    start = time.perf_counter()
    reader = ResidualReader.from_entry(cat.models[entry.model], layer=entry.layer, device="cpu")
    acts = collect_activations(reader, corpus_pairs([]), entry.max_tokens_per_text, entry.activation_tokens)
    read_s = time.perf_counter() - start
    del reader
    print(f"corpus: the bundled sample, {len(acts):,} reply tokens read in {read_s:.0f} s "
          f"(load average {os.getloadavg()[0]:.1f})")
    if args.steps:
        rows = [(f"{args.sae}, {s} steps", dataclasses.replace(entry, train_tokens=s * entry.batch_size))
                for s in args.steps]
    else:
        data = cat.saes[args.data_recipe]
        rows = [(args.sae, entry), (f"{args.data_recipe} without the stop", dataclasses.replace(data, stop_patience=0)),
                (args.data_recipe, data)]
    print(f"{'recipe':<52} {'steps':>11} {'train s':>8} {'FVU':>7} {'L0':>6} {'dead':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, e) in enumerate(rows):
            out = Path(tmp) / f"s{i}"
            q = train_topk_sae(acts, out, d_sae=e.d_sae, k=e.k, train_tokens=e.train_tokens,
                               batch_size=e.batch_size, lr=e.lr, init=e.init, patience=e.stop_patience,
                               margin=e.stop_margin)
            t = json.loads((out / "quality.json").read_text())["training"]
            steps = f"{t['steps']}/{t['cap_steps']}"
            print(f"{label:<52} {steps:>11} {q.train_seconds:>8.0f} {q.fvu:>7.3f} {q.l0:>6.1f} {q.dead_fraction:>7.1%}"
                  f"   (load {os.getloadavg()[0]:.1f}; {t['stopped']})", flush=True)


if __name__ == "__main__":
    main()
