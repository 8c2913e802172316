"""Speed of concepts + hypotheses at the paper's scale: 260k pairs, a 65,536-feature SAE.

The synthetic workspace is held in memory as the matrices `core.analysis.shifts.Analysis` serves (per-reply
and per-prompt firing frequencies, (n, d_sae) CSR), so the timings are of the analysis, not of LanceDB
(reading the columns of a real 260k-pair workspace is a separate, one-off cost).

Sparsity (justified in README.md here, "Before calibration"): each reply fires FIRING features, of which
ABOVE_TAU share on more than 1% of its tokens. Features come in latent concepts of 4-40 features with
Zipf-distributed popularity (a few concepts in most replies, most concepts rare); a reply draws its
concepts, fires ~70% of each one's features, and fills the rest with single features. Prompts are
drawn the same way from their own concepts. Chosen and rejected replies share most of their
concepts (same prompt) and differ in a few.

    .venv/bin/python tests/bench/bench_hypotheses.py [--pairs 260000] [--d-sae 65536] [--firing 160]

Prints each stage's seconds, then the what-if: a from-scratch recompute with 10% of the pairs marked,
and the keypress path (marking the next hypothesis' driving pairs on top of those 10%, then undoing;
then one random pair, and 300, each marked and undone).
"""

from __future__ import annotations

import argparse
import os
import time
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def concept_bank(d: int, rng, n_concepts: int) -> list[np.ndarray]:
    sizes = rng.integers(4, 41, size=n_concepts)
    perm = rng.permutation(d)
    out, at = [], 0
    for s in sizes:
        if at + s > d:
            break
        out.append(perm[at : at + s])
        at += s
    return out


def replies(n: int, d: int, bank: list[np.ndarray], firing: int, above: float, rng, shared=None):
    """(n, d) CSR firing frequencies: concepts by Zipf popularity, singles to fill (module doc)."""
    pop = 1.0 / np.arange(1, len(bank) + 1) ** 1.1
    pop /= pop.sum()
    per_reply = max(1, int(firing * 0.6 / 15))  # ~60% of a reply's firings come from concepts
    rows, cols = [], []
    picks = rng.choice(len(bank), size=(n, per_reply), p=pop) if shared is None else shared
    for j in range(picks.shape[1]):
        feats = [bank[c] for c in picks[:, j]]
        lens = np.array([len(f) for f in feats])
        flat = np.concatenate(feats)
        keep = rng.random(len(flat)) < 0.7
        rows.append(np.repeat(np.arange(n), lens)[keep])
        cols.append(flat[keep])
    n_single = max(0, firing - int(firing * 0.6))
    rows.append(np.repeat(np.arange(n), n_single))
    cols.append(rng.integers(0, d, size=n * n_single))
    r, c = np.concatenate(rows), np.concatenate(cols)
    vals = np.where(rng.random(len(r)) < above, rng.uniform(0.011, 0.3, len(r)), rng.uniform(0.002, 0.01, len(r)))
    m = sp.csr_matrix((vals.astype(np.float32), (r, c)), shape=(n, d))
    m.sum_duplicates()
    m.data = np.minimum(m.data, 1.0)
    return m, picks


def synthetic_analysis(n: int, d: int, firing: int, above: float, seed: int = 0, strong: float = 1.0):
    rng = np.random.default_rng(seed)
    bank = concept_bank(d, rng, 4000)
    chosen, picks = replies(n, d, bank, firing, above, rng)
    # the rejected reply shares its concepts but one, redrawn
    redo = picks.copy()
    redo[:, 0] = rng.choice(len(bank), size=n)
    rejected, _ = replies(n, d, bank, firing, above, rng, shared=redo)
    prompt, _ = replies(n, d, concept_bank(d, rng, 2000), firing // 2, above, rng)

    def maxima(freq):  # each firing's max activation: 1 (strong) or 0.3 (< REL_MAX of the feature's 1)
        m = freq.copy()
        m.data = np.where(rng.random(m.nnz) < strong, 1.0, 0.3).astype(np.float32)
        return m

    mx = (maxima(chosen), maxima(rejected))
    a = types.SimpleNamespace(
        n=n, d_sae=d, source_index=np.arange(n, dtype=np.int64), meta={"schema_version": 2, "d_sae": d},
        ws=types.SimpleNamespace(path=Path("/nonexistent")),
        frequencies=lambda: (chosen, rejected), prompt_frequencies=lambda: prompt, maxima=lambda: mx,
    )
    a.row_of = {i: i for i in range(n)}
    a.rows = lambda src: np.fromiter((int(s) for s in src if 0 <= int(s) < n), dtype=np.int64)
    return a


def main() -> None:
    from core.analysis import concepts as C
    from core.analysis import dataclusters as D
    from core.analysis.hypotheses import Hypotheses
    from core.analysis.structure import Params, Structure, prompt_groups, reply_frequencies, structure_key

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=260_000)
    ap.add_argument("--d-sae", type=int, default=65_536)
    ap.add_argument("--firing", type=int, default=160, help="features firing per reply (freq > 0)")
    ap.add_argument("--above", type=float, default=0.6, help="share of those above τ = 0.01")
    ap.add_argument("--marked", type=float, default=0.10)
    ap.add_argument("--strong", type=float, default=1.0,
                    help="share of reply firings that are strong (max >= REL_MAX of the feature's max); "
                         "1.0: all, the density of the frequency rule alone (on the goblin data ~0.1)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    a = synthetic_analysis(args.pairs, args.d_sae, args.firing, args.above, strong=args.strong)
    chosen, rejected = a.frequencies()
    print(f"synthetic: {args.pairs:,} pairs, d_sae {args.d_sae:,}; per reply {chosen.nnz / args.pairs:.0f} firing "
          f"features, {(chosen.data > 0.01).sum() / args.pairs:.0f} above τ; per prompt "
          f"{a.prompt_frequencies().nnz / args.pairs:.0f} ({time.perf_counter() - t0:.0f} s to build)", flush=True)

    times, cpu = {}, {}

    def clock(name, fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
        print(f"  {name:<40} {times[name]:6.1f} s wall {cpu[name]:6.1f} s CPU", flush=True)
        return out

    params = Params()
    chosen, rejected = clock("strong firing (max >= REL_MAX of the feature's)", lambda: reply_frequencies(a, params))
    resp = clock("response concepts (graph + Leiden)",
                 lambda: C.fit_concepts(sp.vstack([chosen, rejected]).tocsr(), "response"))
    prom = clock("prompt concepts (graph + Leiden)", lambda: C.fit_concepts(a.prompt_frequencies(), "prompt"))
    s = clock("symmetric activity s", lambda: C.activity(resp, chosen, rejected))
    labels = clock("data clusters (spherical k-means)", lambda: D.cluster_pairs(s))
    groups = clock("prompt groups S(k)", lambda: prompt_groups(prom, a.prompt_frequencies(), params))
    st = Structure(structure_key(a.meta, params, a.source_index), params, a.source_index, resp, prom, labels,
                   int(labels.max()) + 1, groups)
    engine = clock("hypotheses engine (u, cells, sums)", lambda: Hypotheses(a, structure=st))
    # the ranking alone (the path before calibration), then p of every cell and BH q, then the
    # calibrated report as the TUI asks for it (the calibration cached by then)
    clock("ranking alone, no p/q (baseline)", lambda: engine._ranked(engine._state(frozenset()), None, 20))
    clock("calibration (p of every cell, BH q)", lambda: engine.calibration())
    rep = clock("report, top 20 (established first)", lambda: engine.report(top=20))
    baseline = times["ranking alone, no p/q (baseline)"]
    total = sum(times.values()) - baseline
    print(f"concepts: {resp.n_grouped} groups of >= 4 features, {resp.n_concepts} in all; prompt concepts "
          f"{prom.n_grouped}; k = {st.k} (median cluster {int(np.median(np.bincount(labels[labels >= 0])))} pairs); "
          f"{len(engine.keys):,} cells; {len(rep.hypotheses)} hypotheses, {rep.n_established:,} established")
    print(f"calibration costs {times['calibration (p of every cell, BH q)'] / max(baseline, 1e-9):.1f}x the ranking "
          f"alone; TOTAL without it {total - times['calibration (p of every cell, BH q)']:.1f} s")
    print(f"TOTAL concepts + hypotheses: {total:.1f} s wall, {sum(cpu.values()):.1f} s CPU "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")

    rng = np.random.default_rng(1)
    marked = frozenset(int(x) for x in rng.choice(args.pairs, int(args.marked * args.pairs), replace=False))
    t, c = time.perf_counter(), time.process_time()
    rep = engine.report(marked, top=20)
    print(f"what-if from scratch, {len(marked):,} pairs marked: {1000 * (time.perf_counter() - t):.0f} ms wall, "
          f"{1000 * (time.process_time() - c):.0f} ms CPU")
    driving = [marked | {p.source_index for p in h.driving} for h in rep.hypotheses[:10]]
    keypresses(engine, marked, driving, 20, "a hypothesis' driving pairs")
    for what, size in (("one pair", 1), ("300 pairs", 300)):  # the TUI ranks its top 50 (tui/screens/hypotheses)
        more = [marked | {int(x) for x in rng.choice(args.pairs, size, replace=False)} for _ in range(10)]
        keypresses(engine, marked, more, 50, what)


def keypresses(engine, marked: frozenset, marks: list[frozenset], top: int, what: str) -> None:
    """Time the what-if of each set of `marks` and of its undo (back to `marked`), and print them."""
    keys, keys_cpu = [], []
    for more in marks:
        for excluded in (more, marked):  # mark, then undo
            t, c = time.perf_counter(), time.process_time()
            engine.report(excluded, top=top)
            keys.append(1000 * (time.perf_counter() - t))
            keys_cpu.append(1000 * (time.process_time() - c))
    print(f"what-if per keypress (mark / undo {what} on top of {len(marked):,}, top {top}): median "
          f"{np.median(keys):.0f} ms wall ({np.median(keys_cpu):.0f} ms CPU), max {max(keys):.0f} ms over "
          f"{len(keys)} keypresses; load average {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
