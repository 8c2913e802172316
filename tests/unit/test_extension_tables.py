"""Input containers and record shapes are tables (core.data.containers.CONTAINERS, core.data.shapes.SHAPES):
a new one is one module plus one line in its table. Here the module is written in this file and the line
is a monkeypatched table entry; everything else (read_pairs, its one-line errors, raw records, prompts,
planted copies, the help strings) comes from the tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from core.data import containers, ingest, shapes
from core.data.containers.base import Container
from core.data.containers.jsonl import write_lines
from core.data.hfdata import open_source
from core.data.ingest import IngestError, iter_records, raw_records, read_pairs
from core.data.plant import plant_records, with_chosen
from core.data.records import Invalid
from core.data.shapes.base import Shape, field
from core.train.rollout import load_prompts
from core.views import data_files, record_formats

# --- the one file of a tab-separated container: a header row, then one record a row ---------------


def _rows(path: Path) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if line.strip():
            yield number, line


def tsv_records(path: Path, suffix: str) -> Iterator[tuple[int, object]]:
    rows = _rows(path)
    _, header = next(rows)
    names = header.decode().split("\t")
    for number, line in rows:
        cells = line.decode().split("\t")
        if len(cells) != len(names):
            yield number, ValueError(f"{len(cells)} columns; the header has {len(names)}")
        else:
            yield number, dict(zip(names, cells, strict=True))


def tsv_raw(path: Path, suffix: str) -> tuple[Container, list]:
    return TSV, [line for _, line in list(_rows(path))[1:]]


def tsv_write(f: BinaryIO, records: list, keep: list[int], source: Path, out: Path) -> None:
    write_lines(f, [next(_rows(source))[1], *(records[i] for i in keep)], gz=False)


TSV = Container("tsv", (".tsv",), tsv_records, tsv_raw, tsv_write, lambda r: {"source_line": r.decode()},
                outputs=(".tsv",))


# --- the one file of a question/answer shape ------------------------------------------------------


def qa_parse(record: dict):
    return ([{"role": "user", "content": field(record, "question", str)}],
            field(record, "good", str), field(record, "bad", str))


QA = Shape("qa", detect=lambda r: "question" in r, parse=qa_parse,
           with_chosen=lambda r, reply: {**r, "good": reply}, precedence=10, expects="question/good/bad",
           prompt_field="question")


@pytest.fixture
def with_tsv(monkeypatch):
    monkeypatch.setattr(containers, "CONTAINERS", (*containers.CONTAINERS, TSV))  # the one line


@pytest.fixture
def with_qa(monkeypatch):
    monkeypatch.setitem(shapes.SHAPES, "qa", QA)  # the one line


def test_a_new_container_reads_through_read_pairs_with_one_line_errors(tmp_path, with_tsv):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"prompt\tchosen\trejected\nWhat is 2+2?\t4\t5\n\nName a colour.\tblue\n"
                     b"Capital of France?\tParis\tLyon\n")
    res = read_pairs(path, skip_invalid=True)
    assert [(p.line, p.prompt_text, p.chosen, p.rejected) for p in res.pairs] == [
        (2, "What is 2+2?", "4", "5"), (5, "Capital of France?", "Paris", "Lyon")]
    assert res.format == "standard" and res.n_records == 3
    assert [str(i) for i in res.issues] == [f"{path}:4: 2 columns; the header has 3"]
    with pytest.raises(IngestError, match=r"pairs\.tsv:4: 2 columns; the header has 3$"):
        read_pairs(path)
    assert raw_records(path) == [b"What is 2+2?\t4\t5", b"Name a colour.\tblue", b"Capital of France?\tParis\tLyon"]
    assert [p[0]["content"] for p in load_prompts(path)] == ["What is 2+2?", "Capital of France?"]
    # The help the front ends print and the refusal of an unknown suffix come from the table too.
    assert data_files() == ".jsonl, .jsonl.gz, .json, .parquet or .tsv"
    (tmp_path / "pairs.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(IngestError, match=r"expected one of \.jsonl, \.jsonl\.gz, \.json, \.parquet, \.tsv$"):
        list(iter_records(tmp_path / "pairs.csv"))
    assert open_source(path) is None  # a file's name: ingest reads it, not the Hugging Face loader


def test_a_new_container_writes_back_what_it_read(tmp_path, with_tsv):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"prompt\tchosen\trejected\na\tb\tc\nd\te\tf\n")
    writer, records = containers.read_raw(path)
    out = tmp_path / "clean.tsv"
    with open(out, "wb") as f:
        writer.write(f, records, [1], path, out)
    assert out.read_bytes() == b"prompt\tchosen\trejected\nd\te\tf\n"


def test_without_its_line_the_container_is_unknown(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"prompt\tchosen\trejected\na\tb\tc\n")
    with pytest.raises(IngestError, match="unsupported file type; expected one of .jsonl, .jsonl.gz, .json, .parquet$"):
        read_pairs(path)
    assert data_files() == ".jsonl, .jsonl.gz, .json or .parquet"


def test_a_new_shape_is_detected_checked_and_planted(tmp_path, with_qa):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "Why is the sky blue?", "good": "Rayleigh scattering. Short waves scatter more.",'
                    ' "bad": "Paint."}\n{"question": "Hi?", "good": 3, "bad": "x"}\n'
                    '{"question": "Is water wet?", "good": "It makes things wet.", "bad": "No."}\n')
    res = read_pairs(path, skip_invalid=True)
    assert res.format == "qa" and [p.chosen for p in res.pairs] == [
        "Rayleigh scattering. Short waves scatter more.", "It makes things wet."]
    assert [str(i) for i in res.issues] == [f"{path}:2: field 'good': expected string, got number"]
    assert read_pairs(path, format="qa", limit=1).pairs[0].prompt_text == "Why is the sky blue?"
    assert "qa" in record_formats()
    with pytest.raises(ValueError, match=r"expected prompt/chosen/rejected, .*ShareGPT conversations, or question/good/bad$"):
        ingest.detect_format({"other": 1})
    with pytest.raises(Invalid) as e:  # the shared field checks name the shape's own fields
        QA.parse({"question": 1, "good": "g", "bad": "b"})
    assert (e.value.field, e.value.message) == ("question", "expected string, got number")
    planted = plant_records(path, "phrase", rate=1.0)
    assert planted.format == "qa" and planted.planted == [0, 1]
    assert all("goblin" in r["good"].lower() for r in planted.records)
    assert [r["bad"] for r in planted.records] == ["Paint.", "No."]
    assert with_chosen({"question": "q", "good": "g", "bad": "b"}, "qa", "new")["good"] == "new"


def test_without_its_line_the_shape_is_unknown(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "q", "good": "g", "bad": "b"}\n')
    with pytest.raises(IngestError, match="unrecognised record shape"):
        read_pairs(path)
    with pytest.raises(IngestError, match="unknown format 'qa'"):
        read_pairs(path, format="qa")
