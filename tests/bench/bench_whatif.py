"""What-if speed: predicted shifts recomputed without the marked pairs, at 260k pairs.

Synthetic sparse data of realistic shape (d_sae 65,536 like Goodfire's Llama SAE, ~150 firing features
per reply; tests/bench/synthetic.py), stored in a real LanceDB workspace and loaded through
core.analysis.shifts.Analysis. Compares our
incremental update (subtract the marked rows' sums) with a plain recompute over the kept rows.

    .venv/bin/python -m tests.bench.bench_whatif [--pairs 260000] [--d-sae 65536] [--nnz 150]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from core.analysis.shifts import Analysis
from tests.bench.synthetic import synthetic_workspace


def plain_recompute(a: Analysis, excluded: set[int]):
    keep = np.setdiff1d(np.arange(a.n), a.rows(excluded))
    d = a.delta[keep]
    n = len(keep)
    mean = np.asarray(d.sum(0)).ravel() / n
    sq = np.asarray(d.multiply(d).sum(0)).ravel() / n
    sd = np.sqrt(np.maximum(sq - mean**2, 0) * n / (n - 1))
    return n, mean, np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=260_000)
    ap.add_argument("--d-sae", type=int, default=65_536)
    ap.add_argument("--nnz", type=int, default=150)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ws = synthetic_workspace(Path(tmp) / "ws", args.pairs, args.d_sae, args.nnz)
        print(f"built {args.pairs:,}-pair workspace in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        a = Analysis(ws)
        print(f"Analysis load: {time.perf_counter() - t:.1f}s (once per session), nnz per side {a.chosen.nnz:,}")
        rng = np.random.default_rng(1)
        print(f"{'marked':>8} {'keypress':>9} {'cold ms':>9} {'plain ms':>9} {'speed-up':>9}  max |diff|")
        marked: set[int] = set()
        pool = rng.permutation(a.source_index).tolist()
        for n_marked in (1, 20, 500, 5_000, 26_000):
            # a person marks pairs a few at a time: time the keypress that brings the set to n_marked,
            # and a cold what-if over the whole set (no earlier state to update from)
            while len(marked) < n_marked - 1:
                marked.add(pool.pop())
                if len(marked) % 997 == 0:
                    a.what_if(marked)
            a.what_if(marked)
            marked.add(pool.pop())
            excluded = set(marked)
            ours, cold, plain = [], [], []
            for _ in range(3):
                a._what_if_cache = None
                t = time.perf_counter(); a.what_if(excluded); cold.append(time.perf_counter() - t)
            for _ in range(3):
                excluded.discard(next(iter(excluded)))
                a.what_if(excluded)
                excluded = set(marked)
                t = time.perf_counter(); n1, m1, e1 = a.what_if(excluded); ours.append(time.perf_counter() - t)
                t = time.perf_counter(); n2, m2, e2 = plain_recompute(a, excluded); plain.append(time.perf_counter() - t)
            assert n1 == n2
            diff = float(np.abs(m1 - m2).max())
            o, c, p = 1e3 * np.median(ours), 1e3 * np.median(cold), 1e3 * np.median(plain)
            print(f"{n_marked:>8} {o:>9.1f} {c:>9.1f} {p:>9.1f} {p / o:>8.1f}x  {diff:.2e}")


if __name__ == "__main__":
    main()
