"""SAE training on the bundled sample: quality against the number of steps (issue 25, "training that
stops when it is done": is the recipe's 600 steps past the plateau?).

The sample's corpus is read once (as `datadebug sae train` reads it), then the embedded recipe trains
from the same seed for each step count (its cosine schedule scaled to that count), and the held-out
FVU, L0 and dead fraction print side by side with the training time.

    .venv/bin/python tests/bench/bench_sae_steps.py [--steps 150 300 450 600 900]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 300, 450, 600, 900])
    ap.add_argument("--sae", default="smollm2-135m-l15-topk")
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
    print(f"{'steps':>6} {'train s':>8} {'FVU':>7} {'L0':>6} {'dead':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for steps in args.steps:
            q = train_topk_sae(acts, Path(tmp) / f"s{steps}", d_sae=entry.d_sae, k=entry.k,
                               train_tokens=steps * entry.batch_size, batch_size=entry.batch_size, lr=entry.lr)
            print(f"{steps:>6} {q.train_seconds:>8.0f} {q.fvu:>7.3f} {q.l0:>6.1f} {q.dead_fraction:>7.1%}"
                  f"   (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
