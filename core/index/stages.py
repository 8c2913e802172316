"""The stages an index run overlaps, shared by the one-machine path (`core.index.build`) and the Ray
path (`core.index.distributed`): tokenising ahead of the model (`Prefetch`), appending finished
chunks to the workspace (`Writer`, `rows_table`), and the feature-label table."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator

import pyarrow as pa
import torch

from core.data.ingest import Pair
from core.data.workspace import PAIRS_SCHEMA, Workspace
from core.index.readout import IndexSettings
from core.progress import Progress


class Prefetch:
    """Tokenises pairs in a thread, window by window, and yields each window's length-sorted batches.

    A window (not the whole dataset) is sorted so that the model starts after the first window is
    tokenised; the first window is small for the same reason.
    """

    def __init__(self, reader, pairs: list[Pair], settings: IndexSettings, window: int = 2048):
        self._q: queue.Queue = queue.Queue(maxsize=64)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(reader, pairs, settings, window), name="datadebug-tokenize", daemon=True
        )
        self._thread.start()

    def _run(self, reader, pairs, settings, window) -> None:
        from core.model.lm import plan_batches

        try:
            start, size = 0, min(window, 128)
            while start < len(pairs) and not self._stop.is_set():
                toks = [reader.tokenize(p, settings.max_tokens) for p in pairs[start : start + size]]
                for batch in plan_batches(toks, settings.batch_tokens):
                    if not self._put(batch):
                        return
                start, size = start + size, window
        except BaseException as exc:  # handed to the consuming thread
            self._error = exc
        self._put(None)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[list]:
        while True:
            batch = self._q.get()
            if batch is None:
                if self._error is not None:
                    raise self._error
                return
            yield batch

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Writer:
    """Appends chunks of finished rows to the workspace in a thread: MiniLM embeddings, then one
    LanceDB append per chunk (a chunk is saved whole or not at all). `saved` counts pairs written."""

    def __init__(self, ws: Workspace, pairs: dict[int, Pair], embedder):
        self.ws, self.pairs, self.embedder = ws, pairs, embedder
        self.saved = 0
        self.error: BaseException | None = None
        self._q: queue.Queue = queue.Queue(maxsize=2)  # bounded: the reader waits when writing lags
        self._thread = threading.Thread(target=self._run, name="datadebug-write", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def _run(self) -> None:
        while True:
            rows = self._q.get()
            if rows is None:
                return
            if self.error is not None:
                continue  # drain without writing after a failure
            try:
                self.ws.add_pairs(rows_table(rows, self.pairs, self.embedder))
                self.saved += len(rows)
            except BaseException as exc:
                self.error = exc

    def put(self, rows: list[dict]) -> None:
        """Queue a chunk; raises the writer's error if an earlier chunk failed."""
        self._raise()
        self._q.put(rows)

    def close(self, raise_error: bool = True) -> None:
        """Wait until every queued chunk is written."""
        self._q.put(None)
        self._thread.join()
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def rows_table(rows: list[dict], pairs: dict[int, Pair], embedder) -> pa.Table:
    """The pairs-table rows (PAIRS_SCHEMA) of `read_batch` rows: their pairs' texts from `pairs`
    (by source_index) and MiniLM embeddings of prompt, chosen and rejected from `embedder`."""
    ps: list[Pair] = [pairs[r["source_index"]] for r in rows]
    emb = embedder.encode(
        [p.prompt_text for p in ps] + [p.chosen for p in ps] + [p.rejected for p in ps]
    )  # (3n, 384)
    n = len(ps)
    cols: dict[str, list] = {name: [] for name in PAIRS_SCHEMA.names}
    for i, (r, p) in enumerate(zip(rows, ps)):
        cols["source_index"].append(p.source_index)
        cols["line"].append(p.line)
        cols["prompt"].append(json.dumps(list(p.prompt), ensure_ascii=False))
        cols["prompt_text"].append(p.prompt_text)
        cols["n_prompt_tokens"].append(r["n_prompt_tokens"])
        for key in ("feat", "max", "freq"):
            cols[f"prompt_{key}"].append(r["prompt"][key])
        cols["emb_prompt"].append(emb[i])
        for side, text, e in (("chosen", p.chosen, emb[n + i]), ("rejected", p.rejected, emb[2 * n + i])):
            s = r[side]
            cols[side].append(text)
            cols[f"{side}_tokens"].append(r[f"{side}_tokens"])
            for key in ("feat", "mean", "max", "freq", "tok_feat", "tok_pos", "tok_val"):
                cols[f"{side}_{key}"].append(s[key])
            cols[f"emb_{side}"].append(e)
    return pa.table(cols, schema=PAIRS_SCHEMA)


def features_complete(ws: Workspace, d_sae: int) -> bool:
    """Whether the feature-label table holds a committed row for each of the SAE's features."""
    return ws.has("features") and ws.table("features").count_rows() == d_sae


@torch.inference_mode()
def write_feature_table(ws: Workspace, reader, sae_model, progress, top: int = 8) -> None:
    """Each feature's top promoted tokens: its decoder direction through the final norm and unembedding.

    Written in one LanceDB commit (overwriting any table a killed run left behind), so a reader
    sees either no table or the whole one."""
    progress(Progress("labels", "feature labels: decoder directions through the unembedding"))
    W_dec = sae_model.W_dec.float()  # (d_sae, d_model)
    W_U = reader.unembed.float().to(W_dec.device)  # (vocab, d_model)
    if reader.final_norm_weight is not None:
        W_dec = W_dec * reader.final_norm_weight.float().to(W_dec.device)
    promoted: list[list[str]] = []
    for s in range(0, W_dec.shape[0], 512):
        logits = W_dec[s : s + 512] @ W_U.T  # (chunk, vocab)
        ids = logits.topk(top, dim=1).indices.cpu().tolist()
        promoted.extend([reader.token_strings(row) for row in ids])
    n = len(promoted)
    ws.write_features(pa.table({
        "feature": pa.array(range(n), pa.int32()),
        "promoted": promoted,
        "label": [""] * n,
    }))
