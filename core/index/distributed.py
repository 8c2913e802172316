"""Indexing on a Ray cluster: the pairs sharded over model workers (one per GPU), one writer.

The driver (where `datadebug index --ray` runs) prepares the run exactly as the single-process index
does (`core.index.build.index_dataset`: dataset, SAE, workspace meta, the pairs still to do), then:

1. plans the same length-sorted batches as the single-process index, with the model's tokenizer and
   config alone (the weights stay off the driver);
2. makes each batch one row of a Ray Dataset and `map_batches` it over a pool of `PairIndexer`
   actors, each holding the model, the SAE and MiniLM on its own GPU (`num_gpus=1`), or on a CPU
   when the cluster has no GPU. An actor reads its batch (`core.index.readout.read_batch`) and returns
   finished workspace rows with their embeddings (`core.index.stages.rows_table`);
3. alone writes: it appends the rows, in chunks of whole pairs, to the LanceDB workspace.

No loss, no duplicate:
- a pair is in the workspace once the single LanceDB append of its chunk commits (all or nothing);
- Ray restarts a killed actor and retries its batch (Ray Data's actor pools retry without limit);
  a retried batch is the same batch, padded the same way, so its numbers are the same;
- a row can still reach the driver twice (a task retried after its first try delivered): the
  driver keeps the set of pairs written and drops repeats;
- a killed driver loses only rows not yet appended: a rerun reads which pairs the workspace holds
  and does the rest, as the single-process index resumes;
- at the end the driver checks that every pair it had to do was written, else raises (a rerun
  resumes).

Where things live: the workspace is on the driver's disk (workers never open it). Each worker node
loads the model from its own store (pulled from the hub on first use, or a shared
DATADEBUG_CACHE_DIR); the SAE's files travel from the driver through Ray's object store, so an SAE
trained on the driver needs nothing on the workers.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from core.model.catalog import ModelEntry, SAEEntry
from core.errors import Cancelled, UsageError, WorkspaceError
from core.data.ingest import Pair
from core.progress import Progress, ProgressFn, reporter
from core.data.workspace import PAIRS_SCHEMA, Workspace

CPU_WORKERS_MAX = 4  # default workers on a cluster without GPUs (each holds a model in memory)


def _pair_json(p: Pair) -> dict:
    return {"source_index": p.source_index, "line": p.line, "prompt": list(p.prompt),
            "chosen": p.chosen, "rejected": p.rejected}


def _pair(d: dict) -> Pair:
    return Pair(d["source_index"], d["line"], tuple(d["prompt"]), d["chosen"], d["rejected"])


class PairIndexer:
    """A Ray Data actor: one model + SAE + MiniLM; a batch row of pairs in, workspace rows out."""

    def __init__(self, model: ModelEntry, sae: SAEEntry, sae_files: dict[str, bytes], settings, device: str):
        import tempfile

        from core.model.embed import Embedder
        from core.model.lm import ResidualReader
        from core.model.sae import load_sae

        if not isinstance(sae_files, dict):  # an ObjectRef: Ray Data passes constructor kwargs as given
            import ray

            sae_files = ray.get(sae_files)
        self.settings = settings
        self.reader = ResidualReader.from_entry(model, layer=sae.layer, device=device)
        with tempfile.TemporaryDirectory(prefix="datadebug-sae-") as d:
            for name, data in sae_files.items():
                (Path(d) / name).write_bytes(data)
            self.sae = load_sae(d, device=str(self.reader.device))
        self.embedder = Embedder(device=str(self.reader.device))

    def __call__(self, batch: dict) -> pa.Table:
        from core.index.stages import rows_table
        from core.index.readout import read_batch

        rows, by_index = [], {}
        for blob in batch["pairs"]:
            pairs = [_pair(d) for d in json.loads(blob)]
            by_index.update((p.source_index, p) for p in pairs)
            tokenized = [self.reader.tokenize(p, self.settings.max_tokens) for p in pairs]
            rows += read_batch(self.reader, self.sae, tokenized, self.settings)
        return rows_table(rows, by_index, self.embedder)


def _tokenizing_reader(model: ModelEntry, layer: int):
    """A ResidualReader whose weights live on the meta device: it tokenises exactly as the workers'
    readers do (same tokenizer, same context) and holds no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from core.model.lm import ResidualReader
    from core.model.store import pull_model

    path = pull_model(model)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return ResidualReader(m, AutoTokenizer.from_pretrained(model.tokenizer or path), layer)


def model_width(model: ModelEntry) -> int:
    """d_model of `model`, from its config alone."""
    from transformers import AutoConfig

    from core.model.store import pull_model

    cfg = AutoConfig.from_pretrained(pull_model(model))
    return int(getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size)


class PairCount(NamedTuple):
    """What the result counts of one pair (its token ids stay with the workers)."""

    n_tokens: int
    replies_cut: int  # 0, 1 or 2
    prompt_cut: bool


def plan_work(model: ModelEntry, layer: int, todo: list[Pair], settings) -> tuple[list[dict], dict[int, PairCount]]:
    """The single-process index's batches of `todo`, as Ray Dataset rows {"pairs": JSON of the batch's
    pairs, in batch order}, and each pair's PairCount."""
    from core.index.stages import Prefetch

    reader = _tokenizing_reader(model, layer)
    items, counts = [], {}
    prefetch = Prefetch(reader, todo, settings)  # the single-process index's tokeniser and batch plan
    by_index = {p.source_index: p for p in todo}
    try:
        for batch in prefetch:
            items.append({"pairs": json.dumps([_pair_json(by_index[t.source_index]) for t in batch])})
            counts.update((t.source_index, PairCount(t.n_tokens, (t.chosen_cut > 0) + (t.rejected_cut > 0),
                                                        t.prompt_dropped > 0)) for t in batch)
    finally:
        prefetch.stop()
    return items, counts


RAY_CONNECT_TIMEOUT_S = 10.0  # how long a cluster address may take to answer before we give up


def check_address(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Raise UsageError, within `timeout` seconds, when `address` (host:port or ray://host:port) is
    malformed or nothing answers there. Ray itself retries an unreachable address for minutes.
    "auto", "local" and None pass (nothing to reach)."""
    import socket

    if address in (None, "", "auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray {address!r}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc) or type(exc).__name__)
        raise UsageError(f"--ray {address}: cannot reach a Ray cluster there ({reason}, after at most "
                         f"{timeout:g}s); is `ray start --head` running at that address?") from None


def connect(address: str | None, progress: ProgressFn | None = None) -> bool:
    """Connect to Ray: "auto" (or None) joins the cluster `ray start` made on this machine (or
    RAY_ADDRESS), else starts one here; "local" always starts one here; anything else is a cluster
    address (host:port, ray://host:port). Returns whether this call connected (and so must
    `ray.shutdown()`: it stops a cluster it started, and only disconnects from one it joined)."""
    import ray

    if ray.is_initialized():
        return False
    reporter(progress)(Progress("load", f"connecting to Ray ({address or 'auto'})"))
    check_address(address)
    extra = {"include_dashboard": False} if address == "local" else {}
    ray.init(address=None if address in (None, "", "auto") else address, log_to_driver=False, **extra)
    return True


def worker_resources(workers: int | None) -> tuple[int, dict]:
    """How many actors, and each one's resources: a GPU each when the cluster has GPUs, else one CPU."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        return workers or gpus, {"num_gpus": 1}
    return workers or max(1, min(int(res.get("CPU", 1)), CPU_WORKERS_MAX)), {"num_cpus": 1}


def index_on_ray(
    ws: Workspace,
    model: ModelEntry,
    sae: SAEEntry,
    sae_path: Path,
    todo: list[Pair],
    settings,
    *,
    labels: bool,
    address: str | None = None,
    workers: int | None = None,
    n_total: int,
    n_done: int,
    result,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Index `todo` into `ws` on a Ray cluster (module doc), then, when `labels`, write the feature-label
    table computed by one Ray task. Fills `result` (an IndexResult) as the single-process loop does.
    Raises Cancelled (after writing every row received), WorkspaceError when a pair did not come back."""
    import ray

    progress = reporter(progress)
    started = connect(address, progress)
    try:
        n_workers, resources = worker_resources(workers)
        device = "cuda" if "num_gpus" in resources else "cpu"
        sae_files = ray.put({f.name: f.read_bytes() for f in Path(sae_path).iterdir()
                             if f.name in ("cfg.json", "sae_weights.safetensors")})
        if todo:
            progress(Progress("load", f"planning the batches of {len(todo)} pairs"))
            items, counts = plan_work(model, sae.layer, todo, settings)
            progress(Progress("load", f"{n_workers} Ray workers ({device}), each loading {model.name} and SAE {sae.name}"))
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.execution_options.preserve_order = False
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                PairIndexer, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_workers),
                fn_constructor_kwargs={"model": model, "sae": sae, "sae_files": sae_files,
                                       "settings": settings, "device": device},
                **resources,
            )
            _write_stream(ws, ds, counts, n_total, n_done, settings.chunk_pairs, result, progress, cancel)
        if labels:
            progress(Progress("labels", "feature labels: decoder directions through the unembedding (a Ray task)"))
            task = ray.remote(**resources)(_feature_rows)
            ws.write_features(ray.get(task.remote(model, sae, sae_files, device)))
    finally:
        if started:
            ray.shutdown()


def _write_stream(ws, ds, counts: dict[int, PairCount], n_total, n_done, chunk_pairs, result, progress,
                  cancel) -> None:
    """Append the dataset's rows to `ws` in chunks of at least `chunk_pairs` whole pairs, each pair once."""
    written: set[int] = set()
    pending: list[pa.Table] = []
    pending_ids: set[int] = set()
    tokens_left = sum(c.n_tokens for c in counts.values())
    start = time.perf_counter()

    def flush() -> None:
        nonlocal pending, tokens_left
        if not pending:
            return
        table = pa.concat_tables(pending).cast(PAIRS_SCHEMA)
        ws.add_pairs(table)
        for s in table["source_index"].to_pylist():
            written.add(s)
            c = counts[s]
            result.tokens += c.n_tokens
            tokens_left -= c.n_tokens
            result.n_replies_cut += c.replies_cut
            result.n_prompts_cut += c.prompt_cut
        pending = []
        pending_ids.clear()
        elapsed = time.perf_counter() - start
        rate = result.tokens / elapsed if elapsed else 0.0
        progress(Progress("index", done=n_done + len(written), total=n_total, unit="pairs saved",
                          rate=rate, rate_unit="tok/s", eta_s=tokens_left / rate if rate else None))

    cancelled = False
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            keep = []
            for i, s in enumerate(block["source_index"].to_pylist()):
                if s in counts and s not in written and s not in pending_ids:  # a retried task's repeat
                    keep.append(i)
                    pending_ids.add(s)
            if keep:
                pending.append(block.take(keep))
            if len(pending_ids) >= chunk_pairs:
                flush()
    finally:
        flush()  # whole rows received: save them, even when stopping
        result.n_new = len(written)
        result.n_pairs = n_done + len(written)
        result.seconds = time.perf_counter() - start
    if cancelled:
        raise Cancelled(f"indexing cancelled with {result.n_pairs} pairs saved in {ws.path}; rerun to resume")
    missing = counts.keys() - written
    if missing:
        raise WorkspaceError(f"{len(missing)} pairs did not come back from the Ray workers "
                             f"(e.g. #{min(missing)}); rerun to index them")


def _feature_rows(model: ModelEntry, sae: SAEEntry, sae_files: dict[str, bytes], device: str) -> pa.Table:
    """The feature-label table, computed where the model can be loaded (a Ray task)."""
    import tempfile

    from core.index.stages import write_feature_table
    from core.model.lm import ResidualReader
    from core.model.sae import load_sae

    class Capture:  # stands in for the workspace: keeps the table instead of writing it
        table = None

        def write_features(self, table):
            self.table = table

    reader = ResidualReader.from_entry(model, layer=sae.layer, device=device)
    with tempfile.TemporaryDirectory(prefix="datadebug-sae-") as d:
        for name, data in sae_files.items():
            (Path(d) / name).write_bytes(data)
        sae_model = load_sae(d, device=str(reader.device))
    out = Capture()
    write_feature_table(out, reader, sae_model, lambda _: None)
    return out.table
