"""The residuals an SAE's training read, kept for the index that follows: one read per dataset.

When `index` must first train the dataset's own SAE (core.model.dataset_sae), the model reads the
dataset's pairs to build the SAE's corpus (core.model.sae_train.collect_activations), and the index
would then read the same pairs through the model again. Instead the corpus reads them the way the
index will (the index's reply cap, the prompt's activations too) and keeps, for each, its residuals
at the SAE's layer in float16: prompt (Tp, d_model), chosen (Tc, d_model), rejected (Tr, d_model).
The index (core.index.build) encodes those pairs from here and reads only the others.

Where: <cache>/residuals/<SAE name>-<dataset sha256[:12]>/ (core.locations.cache_dir): one
safetensors shard per batch read, and index.json, written once the corpus is read. A pair is found by
its source_index and a fingerprint of its token ids, so a pair tokenised differently (another reply
cap, another tokenizer or chat template) is never matched: the index reads it through the model.

Size: at most MAX_BYTES (2 bytes x d_model per token read: 1,152 bytes for SmolLM2-135M); the pairs
past it are not kept, and the index reads them itself, as it does the pairs whose prompt the corpus
read cuts (the corpus must hold what it holds without keeping: see collect_activations).

Lifetime: deleted when the index completes. A run that stops before (cancelled, crashed) leaves it
behind: the rerun encodes the pairs whose fingerprints still match from it, and a folder without a
readable index.json (a corpus read that stopped), or kept for another model or layer, is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from core import locations
from core.data.ingest import Pair
from core.errors import StoreError
from core.model.lm import BatchStates, TokenizedPair
from core.progress import Progress, ProgressFn, reporter

MAX_BYTES = 2 * 2**30  # float16 residuals kept per dataset, at most
INDEX_FILE = "index.json"
VERSION = 1


def residuals_dir(sae_name: str, dataset_sha256: str) -> Path:
    """Where the residuals read for SAE `sae_name`'s corpus from the dataset `dataset_sha256` are kept."""
    return locations.cache_dir() / "residuals" / f"{sae_name}-{dataset_sha256[:12]}"


def fingerprint(t: TokenizedPair) -> str:
    """A pair's token ids as read (prompt, chosen, rejected), hashed: equal only when read alike."""
    ids = json.dumps([t.prompt_ids, t.chosen_ids, t.rejected_ids], separators=(",", ":"))
    return hashlib.sha256(ids.encode()).hexdigest()[:32]


def discard(path: Path) -> None:
    """Delete kept residuals (nothing when there are none)."""
    shutil.rmtree(path, ignore_errors=True)


class ResidualWriter:
    """Keeps pairs' residuals while an SAE's corpus is read: `start`, `reserve` each pair planned,
    `put` each batch read, `finish` (module doc)."""

    def __init__(self, path: Path, *, model: str, layer: int, max_bytes: int = MAX_BYTES):
        self.path = Path(path)
        self.model, self.layer, self.max_bytes = model, layer, max_bytes
        self.pairs: dict[str, dict] = {}  # str(source_index) -> {"fp", "shard", "tokens"}
        self.bytes = 0  # written
        self.full = False  # a pair did not fit: nothing more is kept
        self._reserved = 0
        self._shards = 0
        self._d_model = 0

    def start(self) -> None:
        """An empty folder: what an earlier corpus read left is read again now."""
        discard(self.path)
        self.path.mkdir(parents=True)

    def reserve(self, t: TokenizedPair, d_model: int) -> bool:
        """Whether pair `t` is kept: it still fits under the byte cap (and every pair before it did)."""
        self._d_model = d_model
        need = 2 * d_model * t.n_tokens
        if self.full or self._reserved + need > self.max_bytes:
            self.full = True
            return False
        self._reserved += need
        return True

    def put(self, items: list[tuple[TokenizedPair, torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Write one shard: for each (pair, prompt (Tp, d), chosen (Tc, d), rejected (Tr, d)), its
        residuals in float16 (a pair with a value float16 cannot hold is left to the index)."""
        tensors, entries = {}, {}
        for t, p, c, r in items:
            parts = {name: x.to(torch.float16).cpu().contiguous()
                     for name, x in (("prompt", p), ("chosen", c), ("rejected", r))}
            if not all(bool(x.isfinite().all()) for x in parts.values()):
                continue
            key = str(t.source_index)
            tensors.update({f"{key}.{name}": x for name, x in parts.items()})
            entries[key] = {"fp": fingerprint(t), "tokens": t.n_tokens}
        if not tensors:
            return
        from safetensors.torch import save_file

        shard = f"{self._shards:05d}.safetensors"
        save_file(tensors, str(self.path / shard))
        self._shards += 1
        self.bytes += sum(x.numel() * 2 for x in tensors.values())
        for key, e in entries.items():
            self.pairs[key] = {**e, "shard": shard}

    def finish(self, progress: ProgressFn | None = None) -> None:
        """Write index.json (the store is usable from now on) and say what is kept, how much, where."""
        index = {"version": VERSION, "model": self.model, "layer": self.layer, "d_model": self._d_model,
                 "dtype": "float16", "bytes": self.bytes, "max_bytes": self.max_bytes, "pairs": self.pairs}
        tmp = self.path / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.path / INDEX_FILE)
        past = "; the byte cap was reached, the index reads the other pairs itself" if self.full else ""
        reporter(progress)(Progress("sae", (
            f"kept the float16 residuals of {len(self.pairs)} dataset pairs ({self.bytes / 2**20:,.1f} MiB, "
            f"at most {self.max_bytes / 2**30:g} GiB) in {self.path}: the index encodes them without "
            f"reading them again, then deletes them{past}")))


class ResidualStore:
    """Kept residuals, read back by the index (module doc). `open` one, ask `has`, get `states`."""

    def __init__(self, path: Path, index: dict):
        self.path = path
        self.pairs: dict[str, dict] = index["pairs"]
        self.d_model: int = index["d_model"]

    @classmethod
    def open(cls, path: Path, *, model: str, layer: int, d_model: int) -> ResidualStore | None:
        """The residuals kept in `path` for `model` at `layer`, None when there are none. A folder
        without a readable index, or kept for another model, layer or width, is removed."""
        path = Path(path)
        if not path.exists():
            return None
        try:
            index = json.loads((path / INDEX_FILE).read_text())
            ok = (index.get("version") == VERSION and index.get("model") == model and index.get("layer") == layer
                  and (index.get("d_model") == d_model or not index.get("pairs")))
        except (OSError, ValueError):
            ok = False
        if not ok:
            discard(path)
            return None
        return cls(path, index)

    def __len__(self) -> int:
        return len(self.pairs)

    def has(self, t: TokenizedPair) -> bool:
        """Whether pair `t`, tokenised exactly so, is kept."""
        e = self.pairs.get(str(t.source_index))
        return e is not None and e["fp"] == fingerprint(t)

    def load(self, batch: list[TokenizedPair]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Each pair's (prompt (Tp, d), chosen (Tc, d), rejected (Tr, d)) in float16 on the host.
        Raises KeyError for a pair not kept (`has`), StoreError when a shard cannot be read (deleted
        or damaged since the store was opened)."""
        from safetensors import SafetensorError, safe_open

        by_shard: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(batch):
            if not self.has(t):
                raise KeyError(f"pair {t.source_index} is not kept (or was tokenised otherwise)")
            by_shard[self.pairs[str(t.source_index)]["shard"]].append(i)
        out: list = [None] * len(batch)
        for shard, rows in by_shard.items():
            try:
                with safe_open(str(self.path / shard), framework="pt") as f:
                    for i in rows:
                        key = str(batch[i].source_index)
                        out[i] = tuple(f.get_tensor(f"{key}.{name}") for name in ("prompt", "chosen", "rejected"))
            except (OSError, SafetensorError) as exc:
                raise StoreError(f"{self.path / shard}: kept residuals unreadable ({exc})") from exc
        for t, (p, c, r) in zip(batch, out):
            if (len(p), len(c), len(r)) != (len(t.prompt_ids), len(t.chosen_ids), len(t.rejected_ids)):
                raise StoreError(f"{self.path}: the kept residuals of pair {t.source_index} do not match its tokens")
        return out

    def states(self, batch: list[TokenizedPair], device: torch.device | str, dtype: torch.dtype) -> BatchStates:
        """The batch's kept residuals laid out as `ResidualReader.forward` returns them: prompts
        left-padded, replies right-padded (chosen 0, rejected 0, chosen 1, ...), with their masks."""
        got = self.load(batch)
        B, d = len(batch), self.d_model
        P = max(len(p) for p, _, _ in got)
        R = max(1, max(max(len(c), len(r)) for _, c, r in got))
        prompts = torch.zeros((B, P, d), dtype=dtype)  # (B, P, d_model)
        pmask = torch.zeros((B, P), dtype=torch.bool)
        replies = torch.zeros((2 * B, R, d), dtype=dtype)  # (2B, R, d_model)
        rmask = torch.zeros((2 * B, R), dtype=torch.bool)
        for i, (p, c, r) in enumerate(got):
            prompts[i, P - len(p):] = p.to(dtype)
            pmask[i, P - len(p):] = True
            for j, x in ((2 * i, c), (2 * i + 1, r)):
                replies[j, : len(x)] = x.to(dtype)
                rmask[j, : len(x)] = True
        return BatchStates(replies=replies.to(device), reply_mask=rmask.to(device),
                           prompts=prompts.to(device), prompt_mask=pmask.to(device))


@dataclass
class Keep:
    """What an SAE corpus read keeps for the index that follows (core.model.sae_train.collect_activations)."""

    store: ResidualWriter
    pairs: dict[int, Pair]  # the dataset's pairs the index will read, by source_index
    max_tokens: int | None  # the index's reply cap (IndexSettings.max_tokens; None: whole replies)

    def wants(self, pair: Pair) -> bool:
        """Whether `pair` is one of the dataset's pairs to keep (a sample pair of the same number is not)."""
        return self.pairs.get(pair.source_index) == pair
