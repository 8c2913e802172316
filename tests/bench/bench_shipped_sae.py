"""The shipped SAE of the bundled sample against a fresh retraining (issue 25).

    python tests/bench/bench_shipped_sae.py [--keep DIR]

Trains the embedded default's SAE recipe on the bundled sample with the code of this commit, exactly
as `datadebug sae train` does (core.session.train_sae), into an empty store, then compares it with
core/model/shipped/<name>: whether the weights are bit-identical, else the largest absolute weight
difference, and both SAEs' FVU / L0 / dead fraction, with the training time and the load average.
Bitwise equality is expected on a machine like the one that trained it (same torch build, CPU, float32,
seed 0); another BLAS or CPU may differ in the last bits, which the FVU comparison then bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", type=Path, help="Store the retrained SAE here (default: a temporary dir)")
    args = ap.parse_args()
    cache = args.keep or Path(tempfile.mkdtemp(prefix="datadebug-shipped-"))
    os.environ["DATADEBUG_CACHE_DIR"] = str(cache)
    models = Path(os.path.expanduser("~/.cache/datadebug/models"))
    if models.is_dir() and not (cache / "models").exists():  # reuse the float copy of the model
        (cache).mkdir(parents=True, exist_ok=True)
        (cache / "models").symlink_to(models)

    from safetensors.torch import load_file

    from core.model.shipped import SHIPPED_DIR, manifest
    from core.session import train_sae

    load = os.getloadavg()[0]
    t = time.perf_counter()
    entry, q = train_sae(None, [], progress=lambda p: None)
    seconds = time.perf_counter() - t
    meta = manifest(entry.name)
    if meta is None:
        sys.exit(f"no SAE ships under {entry.name}: the sample or the recipe changed")
    shipped = SHIPPED_DIR / entry.name
    a = load_file(shipped / "sae_weights.safetensors")
    b = load_file(cache / "saes" / entry.name / "sae_weights.safetensors")
    same = a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a) if a.keys() == b.keys() else float("nan")
    q0 = json.loads((shipped / "quality.json").read_text())
    print(f"SAE {entry.name}: retrained in {seconds:.0f} s (load average {load:.1f} at start)")
    print(f"weights bit-identical to the shipped ones: {same}; largest |difference| {diff:.3g}")
    print(f"{'':10} {'FVU':>7} {'L0':>6} {'dead':>7}")
    print(f"{'shipped':10} {q0['fvu']:7.3f} {q0['l0']:6.1f} {q0['dead_fraction']:7.1%}")
    print(f"{'retrained':10} {q.fvu:7.3f} {q.l0:6.1f} {q.dead_fraction:7.1%}")


if __name__ == "__main__":
    main()
