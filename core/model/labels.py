"""Published feature labels: a catalogue SAE may ship a JSON file {feature_id: label} (`labels =` in
models.toml). Indexing writes them into the workspace's `features` table, where every view shows them
in place of the labels computed from the data (core.analysis.shifts.Analysis.describe).

The path is taken as written (`~` expanded); a relative path is relative to the SAE's own folder
(core.model.store.sae_dir), so a labels file can sit beside the weights.
"""

from __future__ import annotations

from pathlib import Path

from core.model.catalog import SAEEntry
from core.errors import CatalogError


def labels_path(entry: SAEEntry) -> Path | None:
    """Where `entry`'s published labels are, or None when it ships none."""
    if not entry.labels:
        return None
    path = Path(entry.labels).expanduser()
    if not path.is_absolute():
        from core.model.store import sae_dir

        path = sae_dir(entry) / path
    return path


def read_labels(path: Path | str, d_sae: int) -> list[str]:
    """The labels of a JSON object {feature_id: label} as a list of `d_sae` strings ("" where the file
    has none). Feature ids are integers (or their decimal strings, as JSON keys must be) in
    0..d_sae-1; labels are strings. Raises CatalogError naming the file and the bad entry."""
    from core.data.jsonfile import read_json_file

    path = Path(path)
    raw = read_json_file(path, "the published labels", CatalogError)
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: published labels must be a JSON object {{feature_id: label}}")
    out = [""] * d_sae
    for key, label in raw.items():
        try:
            feature = int(key)
        except ValueError:
            raise CatalogError(f"{path}: key {key[:40]!r} is not a feature id") from None
        if not 0 <= feature < d_sae:
            raise CatalogError(f"{path}: feature {feature} is outside 0..{d_sae - 1}")
        if not isinstance(label, str):
            raise CatalogError(f"{path}: the label of feature {feature} is not a string")
        out[feature] = " ".join(label.split())  # one line
    return out


def published_labels(entry: SAEEntry, d_sae: int) -> list[str]:
    """`entry`'s published labels as `read_labels` gives them, or `d_sae` empty strings when it ships
    none. Raises CatalogError when the file named in the catalogue is missing or malformed."""
    path = labels_path(entry)
    if path is None:
        return [""] * d_sae
    return read_labels(path, d_sae)
