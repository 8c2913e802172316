"""Hugging Face datasets as preference data: a hub id, a `save_to_disk` folder, or a folder of shards.

Everything here goes through the `datasets` library, which TRL's DPOTrainer reads too:
- hub: `load_dataset(id, config, split=..., revision=..., streaming=True)`; the revision read at
  indexing (the commit it resolved to) is pinned, so the export reads the same rows;
- saved: `load_from_disk` (memory-mapped Arrow: nothing is copied or held in memory);
- shards: a folder of .parquet or JSON lines (.jsonl, .jsonl.gz, .json) files, whose splits are the
  ones `load_dataset(folder)` finds (file names like `train-00000-of-00002.parquet`, else one
  "train" split); each shard is streamed in turn.

An `HFSource` hands its records to `core.data.ingest.read_pairs`, so the four record shapes are detected
and checked exactly as for files. A pair's source id is (split, row): the split is the workspace's
(one split per workspace, recorded in its meta under "hf"), the row is the pair's `source_index`,
its 0-based position in the split; issues name `LOCATION [SPLIT]:ROW+1`.

The workspace records the dataset's identity (`identity`): a SHA-256 of the split's files (or of the
hub id + revision), the datasets fingerprint, and a cheap stamp of file sizes and times. `changed`
says, in one line, when the files differ now; marks and exports refuse such a dataset.

`export_dataset` writes the unmarked rows in the source's own form (a `save_to_disk` folder for a
saved dataset, the same shard files for a shard folder, Parquet shards for a hub dataset) to a new
folder OUT, and OUT.removed.jsonl beside it as `core.data.export` does for files. Other splits are
carried over unchanged, so `load_from_disk(OUT)` / `load_dataset(OUT)` is the dataset less the marks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from core.data import containers
from core.data.records import file_error, first_line
from core.errors import ExportError, IngestError, UsageError

KINDS = ("hub", "saved", "shards")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_BATCH = 1024


@dataclass(frozen=True)
class HFSource:
    """One split of a Hugging Face dataset, as `open_source` found it."""

    kind: str  # one of KINDS
    location: str  # the hub id, or the folder's absolute path
    split: str
    config: str | None = None  # hub only: the dataset's configuration (subset)
    revision: str | None = None  # hub only: the commit to read

    def __str__(self) -> str:
        return f"{self.location} [{self.split}]"

    def records(self) -> Iterator[tuple[int, object]]:
        """Yield (row + 1, record) for every row of the split, in order (core.data.ingest.read_pairs takes
        this in place of a file's records). Raises IngestError when the data cannot be read."""
        _quiet()
        if self.kind == "saved":
            dataset = _saved_split(self)
            rows = (row for batch in dataset.iter(batch_size=_BATCH) for row in _rows(batch))
            yield from _numbered(rows, str(self))
        elif self.kind == "shards":
            number = 0
            for path in shard_files(self):
                # a shard that cannot be parsed is named as a whole: its parser's message says where
                for number, record in _numbered(_shard_rows(path), str(path), number, whole=True):
                    yield number, record
        else:
            yield from _numbered(iter(_hub_split(self)), str(self))


# -- finding a dataset ------------------------------------------------------------------------------


def open_source(data: Path | str, split: str | None = None, config: str | None = None,
                revision: str | None = None) -> HFSource | None:
    """The Hugging Face dataset that `data` names, or None when it names a file (core.data.ingest reads it).

    Takes a `save_to_disk` folder, a folder of shards, or a hub id (any name that is no local path
    and looks like "owner/name"); `split` picks one split (needed when there are several), `config`
    and `revision` apply to hub ids only. Raises IngestError for a folder that holds no dataset, a
    split that is not there, or a folder of mixed shard types, and UsageError for a config or
    revision given to a local folder.
    """
    path = Path(data)
    if path.name.lower().endswith((*containers.suffixes(), ".gz")):  # a file's name, even on a folder: ingest says
        return None
    if path.is_dir():
        if config or revision:
            raise UsageError(f"{path}: --config and --revision apply to hub datasets, not a local folder")
        location = str(path.resolve())
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return HFSource("saved", location, _saved_split_name(path, split))
        splits = _shard_splits(path)
        return HFSource("shards", location, _pick_split(path, list(splits), split))
    if path.exists() or not _HUB_ID.match(str(data)):
        return None
    return HFSource("hub", str(data), split or "train", config or None, revision or None)


def source_of(meta: dict) -> HFSource | None:
    """The dataset a workspace's meta records (None when it indexed a file)."""
    hf = meta.get("hf")
    if not hf:
        return None
    return HFSource(hf["kind"], hf["location"], hf["split"], hf.get("config"), hf.get("revision"))


def shard_builders() -> dict[str, str]:
    """Shard file suffix -> the `datasets` builder that reads it (the containers that have one)."""
    return {s: c.hf_builder for c in containers.CONTAINERS if c.hf_builder for s in c.suffixes}


def _pick_split(where: Path | str, splits: list[str], split: str | None) -> str:
    if split is not None:
        if split not in splits:
            raise file_error(where, f"no split '{split}'; it holds {', '.join(splits)}")
        return split
    if len(splits) == 1:
        return splits[0]
    raise file_error(where, f"holds splits {', '.join(splits)}: name one with --split")


def _saved_split_name(path: Path, split: str | None) -> str:
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise file_error(path / "dataset_dict.json", f"not a saved DatasetDict: {first_line(e)}") from e
        return _pick_split(path, [str(s) for s in splits], split)
    try:
        own = json.loads((path / "state.json").read_text()).get("_split")
    except (OSError, ValueError, AttributeError) as e:
        raise file_error(path / "state.json", f"not a saved Dataset: {first_line(e)}") from e
    return _pick_split(path, [own or split or "train"], split)


def _shard_container(name: str) -> containers.Container | None:
    found = containers.container_of(name)
    return found[0] if found and found[0].hf_builder else None


def _shard_splits(folder: Path) -> dict[str, list[Path]]:
    """split -> its shard files in order, as `load_dataset(folder)` groups them. Raises IngestError."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(folder.resolve()))
        found = DataFilesDict.from_patterns(patterns, base_path=str(folder.resolve()))
    except Exception:  # datasets raises its own EmptyDatasetError, FileNotFoundError, ...
        found = {}
    splits = {str(name): [Path(f) for f in files if _shard_container(f)] for name, files in found.items()}
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        raise file_error(folder, "is a directory with no save_to_disk dataset and no data files "
                             f"({', '.join(shard_builders())})")
    builders = {_shard_container(f).hf_builder for files in splits.values() for f in files}
    if len(builders) > 1:
        raise file_error(folder, "holds both Parquet and JSON shards; one folder holds one kind")
    return splits


def shard_files(source: HFSource) -> list[Path]:
    """The shard files of `source`'s split, in the order their rows are numbered."""
    return _shard_splits(Path(source.location))[source.split]


# -- reading ----------------------------------------------------------------------------------------


def _quiet() -> None:
    """No progress bars or log lines from `datasets` on the user's terminal (our errors say it)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a bad shard is logged at ERROR too


def _rows(batch: dict) -> Iterator[dict]:
    names = list(batch)
    for values in zip(*batch.values(), strict=True):
        yield dict(zip(names, values, strict=True))


def _drop_nulls(value: object) -> object:
    """A row as its record was written: Arrow gives every struct every key seen in the column, with
    null where a record had none (a ShareGPT message gains "role": None), so null means absent."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _numbered(rows, where: str, start: int = 0, whole: bool = False) -> Iterator[tuple[int, object]]:
    """(number, record) from `start` + 1 on; a read error becomes an IngestError naming the row (or,
    `whole`, `where` as a whole)."""
    number = start
    try:
        for row in rows:
            number += 1
            yield number, _drop_nulls(row)
    except IngestError:
        raise
    except Exception as e:  # pyarrow, datasets, fsspec and OS errors alike
        raise file_error(where, f"cannot read the dataset: {first_line(e)}", 0 if whole else number + 1) from e


def _saved_split(source: HFSource):
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(source.location)
    except Exception as e:
        raise file_error(source.location, f"cannot load the saved dataset: {first_line(e)}") from e
    return loaded[source.split] if isinstance(loaded, DatasetDict) else loaded


def _shard_rows(path: Path) -> Iterator[dict]:
    from datasets import load_dataset

    yield from load_dataset(_shard_container(path).hf_builder, data_files=[str(path)], split="train", streaming=True)


def _hub_split(source: HFSource):
    """The hub split, streamed (never downloaded whole). Raises IngestError (offline, no such split)."""
    from datasets import load_dataset

    try:
        return load_dataset(source.location, source.config, split=source.split, revision=source.revision,
                            streaming=True)
    except Exception as e:
        raise file_error(source, f"cannot load the hub dataset: {first_line(e)}") from e


# -- identity and change ----------------------------------------------------------------------------


def _files(source: HFSource) -> list[Path]:
    """The files whose bytes are the split's rows (and, for a saved dataset, its features)."""
    if source.kind == "shards":
        return shard_files(source)
    folder = Path(source.location)
    if (folder / "dataset_dict.json").is_file():
        folder = folder / source.split
    # The files state.json names, not every file there: `datasets` writes cache-*.arrow files beside
    # them when a loaded dataset is mapped, which changes no row.
    try:
        named = [f["filename"] for f in json.loads((folder / "state.json").read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise file_error(folder / "state.json", f"not a saved Dataset: {first_line(e)}") from e
    return [folder / "state.json", folder / "dataset_info.json", *(folder / name for name in named)]


def _stamp(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _content_sha256(files: list[Path], root: Path) -> str:
    from core.data.workspace import file_sha256

    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root)}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def identity(source: HFSource) -> dict:
    """What the workspace records of `source` (meta "hf"): its kind/location/split/config/revision,
    "sha256" (of the split's files, or of the hub id + the commit it resolved to), "stamp" (sizes
    and times of the files, a cheap first check) and "fingerprint" (the datasets library's).
    For a hub id the revision is resolved to a commit when the hub can be reached."""
    out = asdict(source)
    if source.kind == "hub":
        revision = _hub_commit(source) or source.revision
        out["revision"] = revision
        key = "\0".join(["hub", source.location, source.config or "", source.split, revision or ""])
        out.update(sha256=hashlib.sha256(key.encode()).hexdigest(), stamp=None, fingerprint=revision)
        return out
    root = Path(source.location)
    files = _files(source)
    out.update(sha256=_content_sha256(files, root), stamp=_stamp(files, root), fingerprint=_fingerprint(source))
    return out


def dataset_sha256(data: Path | str | HFSource) -> str:
    """The SHA-256 that identifies a dataset: a file's bytes, or `identity(source)["sha256"]`."""
    if isinstance(data, HFSource):
        return identity(data)["sha256"]
    from core.data.workspace import file_sha256

    return file_sha256(Path(data))


def _fingerprint(source: HFSource) -> str | None:
    """The datasets fingerprint of a saved split (its state.json), None for shards."""
    if source.kind != "saved":
        return None
    folder = Path(source.location)
    state = folder / source.split / "state.json" if (folder / "dataset_dict.json").is_file() else folder / "state.json"
    try:
        return json.loads(state.read_text()).get("_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _hub_commit(source: HFSource) -> str | None:
    """The commit sha that `source.revision` (None: the main branch) names on the hub; None offline."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(source.location, revision=source.revision).sha
    except Exception:  # offline, gated, private: the revision stays as given
        return None


def changed(meta: dict) -> str | None:
    """One line saying how the dataset a workspace indexed (meta "hf") differs now, None when it is
    the same (or a file: core.data.export checks those), or a hub dataset pinned to its commit."""
    source = source_of(meta)
    if source is None or source.kind == "hub":
        return None
    recorded = meta["hf"]
    root = Path(source.location)
    where = f"dataset {source}"
    if not root.is_dir():
        return f"{where} is gone; the workspace indexed it from {root}"
    try:
        files = _files(source)
    except IngestError as e:
        return f"{where} changed since it was indexed ({e}); re-index it into a new workspace"
    if _stamp(files, root) == recorded.get("stamp"):
        return None
    if _content_sha256(files, root) == recorded.get("sha256"):
        return None
    return (f"{where} changed since it was indexed (its files differ from sha256 "
            f"{str(recorded.get('sha256'))[:12]}); re-index it into a new workspace")


# -- export -----------------------------------------------------------------------------------------


def export_dataset(source: HFSource, marks: dict, out: Path | str, overwrite: bool = False,
                   line_of: dict[int, int] | None = None):
    """Write `source`'s rows whose row (source_index) is not in `marks` to the folder `out`, in the
    source's own form (module doc), and `out.removed.jsonl` with one line per removed row: its
    split, source_index, line, the mark's reason/scope/features/who/when and the row itself.

    `marks` maps source_index -> core.data.marks.MarkInfo. Both are written under temporary names and
    renamed (manifest first), so nothing partial appears under OUT. Returns core.data.export.ExportResult.
    Raises ExportError when `out` is the source, a file, exists (unless overwrite) or cannot be
    written, or the source cannot be read again.
    """
    from core.data.export import ExportResult

    _quiet()
    out = Path(out)
    manifest = out.with_name(out.name + ".removed.jsonl")
    _check_out(source, out, manifest, overwrite)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_manifest = manifest.with_name(f".{manifest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    removed_rows: dict[int, dict] = {}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = {"saved": _export_saved, "shards": _export_shards, "hub": _export_hub}[source.kind]
        n_records = writer(source, set(marks), tmp, removed_rows)
        with open(tmp_manifest, "wb") as f:
            for s in sorted(removed_rows):
                info = marks[s]
                entry = {"split": source.split, "source_index": s, "line": (line_of or {}).get(s, s + 1),
                         "reason": info.reason, "scope": info.scope, "features": list(info.features),
                         "who": info.who, "when": info.when, "record": removed_rows[s]}
                f.write(json.dumps(entry, ensure_ascii=False, default=str).encode("utf-8", "surrogateescape")
                        + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_manifest, manifest)  # an output never stands without its manifest
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except ExportError:
        raise
    except IngestError as e:
        raise ExportError(f"cannot read the source dataset again: {e}") from e
    except OSError as e:
        raise ExportError(f"cannot write {e.filename or out}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp_manifest.unlink(missing_ok=True)
    n_removed = len(removed_rows)
    return ExportResult(out, manifest, n_records - n_removed, n_removed, n_records)


def _check_out(source: HFSource, out: Path, manifest: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; a {source.kind} dataset is exported to a folder")
    if source.kind != "hub":
        src = Path(source.location).resolve()
        if out.resolve() == src or src in out.resolve().parents or out.resolve() in src.parents:
            raise ExportError(f"refusing to write into or over the source dataset {src}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists (pass overwrite to replace it)")
    if manifest.is_dir():
        raise ExportError(f"{manifest} is a directory; it is where the removed rows go")


def _export_saved(source: HFSource, marked: set[int], tmp: Path, removed_rows: dict) -> int:
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(source.location)
    except Exception as e:
        raise file_error(source.location, f"cannot load the saved dataset: {first_line(e)}") from e
    split = loaded[source.split] if isinstance(loaded, DatasetDict) else loaded
    n = len(split)
    gone = sorted(s for s in marked if 0 <= s < n)
    if gone:
        removed_rows.update(zip(gone, split.select(gone).to_list(), strict=True))
    kept = split.select([i for i in range(n) if i not in marked]) if gone else split
    result = DatasetDict({**loaded, source.split: kept}) if isinstance(loaded, DatasetDict) else kept
    result.save_to_disk(str(tmp))
    return n


def _export_shards(source: HFSource, marked: set[int], tmp: Path, removed_rows: dict) -> int:
    root = Path(source.location)
    ours = shard_files(source)
    start = 0
    for path in ours:
        dest = tmp / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        start += _shard_container(path).filter_shard(path, dest, marked, start, removed_rows)
    mine = {p.resolve() for p in ours}
    for path in sorted(root.rglob("*")):  # other splits, the dataset card: as they are
        if path.is_file() and path.resolve() not in mine and not path.name.startswith("."):
            dest = tmp / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    return start


def _export_hub(source: HFSource, marked: set[int], tmp: Path, removed_rows: dict) -> int:
    """The pinned hub split less the marked rows, as one Parquet shard named as the hub names them."""
    from datasets import Dataset

    n = 0

    def kept():
        nonlocal n
        for row in _hub_split(source):
            if n in marked:
                removed_rows[n] = row
            else:
                yield row
            n += 1

    stream = _hub_split(source)
    dataset = Dataset.from_generator(kept, features=stream.features)
    (tmp / "data").mkdir(parents=True)
    dataset.to_parquet(str(tmp / "data" / f"{source.split}-00000-of-00001.parquet"))
    return n
