"""SAEs that ship inside the package (core/model/shipped/NAME/): the embedded default's SAE of the
bundled sample, so that `demo`, and any index of the sample, trains nothing.

Each folder is an sae-lens folder (cfg.json, sae_weights.safetensors, quality.json) plus shipped.json:
its name (the "RECIPE@KEY" that core.model.dataset_sae gives the sample), the sha256 of its weights,
the seed and the command that produced it. `install` checks the sha256 and copies the folder into the
store, where every SAE is loaded from; a folder whose weights do not match is refused (StoreError).
Adding one is a folder, no code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.errors import StoreError
from core.model.catalog import SAEEntry
from core.model.publish import partial_folder, publish
from core.model.store import sae_dir, sae_folder_ready, sae_ready

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
FILES = ("cfg.json", "sae_weights.safetensors", "quality.json")


def manifest(name: str, root: Path = SHIPPED_DIR) -> dict | None:
    """The shipped.json of the SAE `name`, or None when none ships."""
    path = root / name / "shipped.json"
    return json.loads(path.read_text()) if path.is_file() else None


def install(entry: SAEEntry, root: Path = SHIPPED_DIR) -> bool:
    """Copy the shipped SAE `entry.name` into the store when it is not there. Returns whether the store
    now holds it from here (False: none ships under that name). Raises StoreError when the shipped
    weights do not match their recorded sha256."""
    from core.data.workspace import file_sha256

    if sae_ready(entry):
        return False
    meta = manifest(entry.name, root)
    if meta is None:
        return False
    src = root / entry.name
    digest = file_sha256(src / "sae_weights.safetensors")
    if digest != meta["sha256"]:
        raise StoreError(f"{src / 'sae_weights.safetensors'}: sha256 {digest[:12]}… is not the recorded "
                         f"{meta['sha256'][:12]}… of the shipped SAE {entry.name} (reinstall datadebug)")
    out = sae_dir(entry)
    tmp = partial_folder(out)
    tmp.mkdir(parents=True)
    for f in FILES:
        shutil.copyfile(src / f, tmp / f)
    publish(tmp, out, sae_folder_ready)
    return True
