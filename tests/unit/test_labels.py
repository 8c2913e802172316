"""Published feature labels: read and checked from a catalogue SAE's JSON file, shown as the label."""

import json

import pytest

from core.model.catalog import SAEEntry
from core.errors import CatalogError
from core.model.labels import labels_path, published_labels, read_labels
from core.analysis.shifts import Analysis
from tests.unit.test_shifts import planted


def test_labels_file_is_read_and_checked(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"3": "goblin\nmentions", "5": "refusals", 0: "x"}))
    assert read_labels(path, 8) == ["x", "", "", "goblin mentions", "", "refusals", "", ""]
    for content, why in (("[1]", "must be a JSON object"), ('{"a": "x"}', "not a feature id"),
                         ('{"9": "x"}', "outside 0..7"), ('{"1": 2}', "not a string"), ("{", "not valid JSON")):
        path.write_text(content)
        with pytest.raises(CatalogError, match=why):
            read_labels(path, 8)
    with pytest.raises(CatalogError, match="cannot read"):
        read_labels(tmp_path / "missing.json", 8)


def test_a_relative_labels_file_sits_beside_the_sae(tmp_path):
    entry = SAEEntry(name="s", model="m", layer=1, source="local", path=str(tmp_path), labels="labels.json")
    assert labels_path(entry) == tmp_path / "labels.json"
    (tmp_path / "labels.json").write_text('{"1": "one"}')
    assert published_labels(entry, 3) == ["", "one", ""]
    assert published_labels(SAEEntry(name="s", model="m", layer=1, source="local", path=str(tmp_path)), 2) == ["", ""]


def test_a_published_label_in_the_features_table_is_the_label_every_view_shows(tmp_path):
    import pyarrow as pa

    ws, _, _ = planted(tmp_path)
    labels = [""] * 16
    labels[3] = "published: amplified feature"
    ws.write_features(pa.table({"feature": pa.array(range(16), pa.int32()), "promoted": [["x"]] * 16,
                                "label": labels}))
    a = Analysis(ws)
    report = a.report(top=3)
    assert [f.label for f in report.amplified if f.feature == 3] == ["published: amplified feature"]
    assert a.label(3) == "published: amplified feature" and a.label(5) != ""
    from core.analysis.trace import trace_feature

    assert trace_feature(a, 3, top=1)["label"] == "published: amplified feature"
