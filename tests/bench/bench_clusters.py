"""Clusters, Compare and the shift report's labels at scale: seconds and peak memory on a synthetic
workspace (tests/bench/synthetic.py; 260k pairs, d_sae 65,536, ~150 features per reply by default).

    nice -n 10 .venv/bin/python -m tests.bench.bench_clusters [--pairs 260000] [--d-sae 65536]
        [--nnz 150] [--tokens 0] [--workspace DIR (kept and reused)] [--only clusters,compare,report]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from core.analysis.clusters import cluster_pairs, compare_clusterings
from core.analysis.shifts import Analysis
from core.data.workspace import Workspace
from tests.bench.synthetic import synthetic_workspace


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(what: str, fn):
    t = time.perf_counter()
    out = fn()
    print(f"{what:<34} {time.perf_counter() - t:8.1f} s   (peak RSS so far {peak_gib():.1f} GiB)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=260_000)
    ap.add_argument("--d-sae", type=int, default=65_536)
    ap.add_argument("--nnz", type=int, default=150)
    ap.add_argument("--tokens", type=int, default=0, help="token strings per reply (0: none; labels then read nothing)")
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--only", default="clusters,compare,report")
    args = ap.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.workspace or Path(tmp) / "ws"
        if (path / "pairs.lance").exists():
            ws = Workspace(path)
        else:
            ws = timed(f"build {args.pairs:,}-pair workspace",
                       lambda: synthetic_workspace(path, args.pairs, args.d_sae, args.nnz, tokens=args.tokens))
        a = timed("Analysis load", lambda: Analysis(ws))
        print(f"{a.n:,} pairs, d_sae {a.d_sae:,}, nnz per side {a.chosen.nnz:,}")
        if "clusters" in only:
            c = timed("clusters --by sae (k by silhouette)", lambda: cluster_pairs(a, "sae"))
            print(f"  k={c.k}, sizes {[cl.size for cl in c.clusters]}")
            e = timed("clusters --by embedding", lambda: cluster_pairs(a, "embedding"))
            print(f"  k={e.k}, sizes {[cl.size for cl in e.clusters]}")
        if "compare" in only:
            truth = set(range(0, a.n, 50))
            out = timed("compare (with a 2% truth set)", lambda: compare_clusterings(a, truth=truth))
            print(f"  k={out['k']} ARI {out['ari']:.3f} NMI {out['nmi']:.3f}")
        if "report" in only:
            r = timed("shift report, top 50 per direction", lambda: a.report(top=50))
            print(f"  {len(r.features)} features labelled")


if __name__ == "__main__":
    main()
