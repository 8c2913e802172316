"""Hugging Face datasets in and out (core.data.hfdata): saved datasets and shard folders that the tests
build, indexed with the real small model and tiny SAE, marked, exported and loaded back with
`datasets`. Offline: the hub path is the same loader with a hub id and is not run here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

datasets = pytest.importorskip("datasets")

from core.errors import ExportError, IngestError, UsageError, WorkspaceError  # noqa: E402
from core.data.hfdata import HFSource, open_source  # noqa: E402
from core.data.ingest import read_pairs  # noqa: E402

QUESTIONS = ["Name a colour.", "Say hello.", "Count to two.", "Name a fruit.", "Name a pet."]
GOOD = ["Blue.", "Hello!", "One, two.", "An apple.", "A cat."]
BAD = ["I refuse.", "No.", "Three.", "A rock.", "A brick."]


def _records(shape: str) -> list[dict]:
    out = []
    for q, c, r in zip(QUESTIONS, GOOD, BAD, strict=True):
        if shape == "standard":
            out.append({"prompt": q, "chosen": c, "rejected": r})
        elif shape == "conversational":
            user = [{"role": "user", "content": q}]
            out.append({"chosen": [*user, {"role": "assistant", "content": c}],
                        "rejected": [*user, {"role": "assistant", "content": r}]})
        elif shape == "hh-rlhf":
            out.append({"chosen": f"\n\nHuman: {q}\n\nAssistant: {c}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {r}"})
        else:
            out.append({"conversations": [{"from": "human", "value": q}],
                        "chosen": {"from": "gpt", "value": c}, "rejected": {"from": "gpt", "value": r}})
    return out


def _save(records: list[dict], folder, test_rows: int = 0):
    """A DatasetDict saved with save_to_disk: `records` as "train", and a "test" split when asked."""
    splits = {"train": datasets.Dataset.from_list(records)}
    if test_rows:
        splits["test"] = datasets.Dataset.from_list(records[:test_rows])
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def _index(data, ws, sae, **kw):
    from core.index.build import IndexSettings, index_dataset

    return index_dataset(data, ws, sae=sae, settings=IndexSettings(max_tokens=16, chunk_pairs=8), **kw)


def _mark(ws, rows, reason="off topic"):
    from core.session import Session
    from core.views import Selection

    session = Session(ws)
    session.mark(Selection(tuple(rows), "pair"), reason=reason)
    return session


@pytest.mark.parametrize("shape", ["standard", "conversational", "hh-rlhf", "sharegpt"])
def test_a_saved_dataset_of_each_shape_reads_as_a_file_would(tmp_path, shape):
    records = _records(shape)
    source = open_source(_save(records, tmp_path / "saved"), split="train")
    got = read_pairs(source)
    assert got.format == shape and got.n_records == len(records)
    assert [p.chosen for p in got.pairs] == GOOD and [p.rejected for p in got.pairs] == BAD
    assert [p.prompt_text for p in got.pairs] == QUESTIONS
    assert [(p.source_index, p.line) for p in got.pairs] == [(i, i + 1) for i in range(len(records))]


def test_saved_dataset_index_mark_export_gives_back_the_unmarked_rows(tmp_path, tiny_sae):
    """One full run per shape would cost a model load each; the four shapes share their reading code
    (above), so one index/mark/export/load round trip per kind of source is what is left to show."""
    records = _records("sharegpt")  # the shape whose nested structs Arrow rewrites most
    folder = _save(records, tmp_path / "saved", test_rows=2)
    ws = tmp_path / "ws"
    r = _index(folder, ws, tiny_sae, split="train")
    assert r.n_pairs == len(records)
    session = _mark(ws, [1, 3])
    meta = session.meta
    assert meta["hf"]["kind"] == "saved" and meta["hf"]["split"] == "train" and meta["hf"]["fingerprint"]
    out = tmp_path / "clean"
    result = session.export(out)
    assert (result.n_kept, result.n_removed, result.n_records) == (3, 2, 5)
    back = datasets.load_from_disk(str(out))
    kept = [records[i] for i in (0, 2, 4)]
    assert [json.loads(json.dumps(row)) for row in back["train"]] == [
        json.loads(json.dumps(datasets.Dataset.from_list(records)[i])) for i in (0, 2, 4)
    ]
    assert [row["chosen"]["value"] for row in back["train"]] == [r["chosen"]["value"] for r in kept]
    assert len(back["test"]) == 2  # the other split is carried over whole
    removed = [json.loads(line) for line in result.manifest.read_text().splitlines()]
    assert [(m["split"], m["source_index"], m["reason"]) for m in removed] == [("train", 1, "off topic"),
                                                                              ("train", 3, "off topic")]
    assert [m["record"]["chosen"]["value"] for m in removed] == [GOOD[1], GOOD[3]]
    with pytest.raises(ExportError, match="exists"):
        session.export(out)


def test_a_dataset_changed_after_indexing_is_refused_in_one_line(tmp_path, tiny_sae):
    records = _records("standard")
    folder = _save(records, tmp_path / "saved")
    ws = tmp_path / "ws"
    _index(folder, ws, tiny_sae)
    session = _mark(ws, [0])
    records[2] = {"prompt": "Name a planet.", "chosen": "Mars.", "rejected": "A sock."}
    _save(records, tmp_path / "saved")  # saved again over it: row 2 is another pair now
    with pytest.raises(WorkspaceError, match=r"changed since it was indexed") as marking:
        _mark(ws, [1])
    with pytest.raises(ExportError, match=r"changed since it was indexed") as exporting:
        session.export(tmp_path / "clean")
    assert "\n" not in str(marking.value) and "\n" not in str(exporting.value)
    assert not (tmp_path / "clean").exists()
    # the CLI says it in one line too, exit 2
    cli = subprocess.run([sys.executable, "-m", "core.cli", "export", "-w", str(ws), "-o", str(tmp_path / "c2")],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "changed since it was indexed" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_a_shard_folder_indexes_marks_and_exports_as_shards(tmp_path, tiny_sae, kind):
    records = _records("conversational" if kind == "parquet" else "standard")
    folder = tmp_path / "shards"
    (folder / "data").mkdir(parents=True)
    parts = [records[:2], records[2:]]
    for i, part in enumerate(parts):
        name = folder / "data" / f"train-{i:05d}-of-00002.{kind}"
        if kind == "parquet":
            datasets.Dataset.from_list(part).to_parquet(str(name))
        else:  # with a blank line and a CRLF line: rows are the non-blank lines, kept byte for byte
            lines = [json.dumps(r).encode() for r in part]
            name.write_bytes(lines[0] + b"\r\n\n" + b"\n".join(lines[1:]) + b"\n")
    (folder / "data" / f"test-00000-of-00001.{kind}").write_bytes(
        (folder / "data" / f"train-00000-of-00002.{kind}").read_bytes())
    (folder / "README.md").write_text("# a dataset card\n")
    with pytest.raises(IngestError, match=r"holds splits (train, test|test, train): name one with --split"):
        open_source(folder)
    ws = tmp_path / "ws"
    r = _index(folder, ws, tiny_sae, split="train")
    assert r.n_pairs == len(records)
    session = _mark(ws, [0, 3])
    assert session.meta["hf"]["kind"] == "shards"
    out = tmp_path / "clean"
    session.export(out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    back = datasets.load_dataset(str(out), split="train")
    expected = [records[i] for i in (1, 2, 4)]
    assert [row["chosen"] for row in back] == [r["chosen"] for r in expected]
    assert len(datasets.load_dataset(str(out), split="test")) == 2
    if kind == "jsonl":  # kept lines are the source's bytes
        assert (out / "data/train-00000-of-00002.jsonl").read_bytes() == json.dumps(records[1]).encode() + b"\n"
    # a shard rewritten after indexing is refused
    (folder / "data" / f"train-00001-of-00002.{kind}").write_bytes(
        (folder / "data" / f"train-00000-of-00002.{kind}").read_bytes())
    with pytest.raises(ExportError, match="changed since it was indexed"):
        session.export(tmp_path / "clean2")


def test_bad_rows_and_folders_are_named_in_one_line(tmp_path):
    records = _records("standard")
    records[2] = {"prompt": "Q", "chosen": "", "rejected": "x"}
    source = open_source(_save(records, tmp_path / "saved"))
    with pytest.raises(IngestError) as raised:
        read_pairs(source)
    assert str(raised.value) == f"{source}:3: field 'chosen': empty reply"
    assert len(read_pairs(source, skip_invalid=True).pairs) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="empty: is a directory with no save_to_disk dataset and no data files"):
        open_source(tmp_path / "empty")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.jsonl").write_text(json.dumps(records[0]) + "\n{not json\n")
    with pytest.raises(IngestError, match=r"shards/a\.jsonl: cannot read the dataset: JSON parse error"):
        read_pairs(open_source(shards))
    (tmp_path / "dir.jsonl").mkdir()  # a file's name on a folder is a file to core.data.ingest, which refuses it
    assert open_source(tmp_path / "dir.jsonl") is None
    with pytest.raises(IngestError, match="no split 'dev'"):
        open_source(tmp_path / "saved", split="dev")
    # a file is not a Hugging Face dataset; a name that is no path and looks like owner/name is a hub id
    assert open_source(tmp_path / "missing.jsonl") is None
    hub = open_source("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs", config="default")
    assert hub == HFSource("hub", "HuggingFaceH4/ultrafeedback_binarized", "train_prefs", "default")
    # offline (as every test runs) the hub loader is reached and says so in one line
    with pytest.raises(IngestError, match=r"^HuggingFaceH4/ultrafeedback_binarized \[train_prefs\]: cannot load "
                                          r"the hub dataset: .*Offline") as offline:
        read_pairs(hub)
    assert "\n" not in str(offline.value)
    with pytest.raises(UsageError, match="apply to hub datasets"):
        open_source(tmp_path / "saved", config="default")
