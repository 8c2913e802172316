"""The calibration bench end to end on the 16-pair fixture (tiny mode; not in the default suite):
build shuffled and planted copies, print the tables for two rel_max values."""

import json

from core.index.build import index_dataset
from tests.bench import bench_calibration as bench
from tests.bench.copies import only_planted_file
from tests.unit.test_copies import SETTINGS, base, copies_sae  # noqa: F401 (fixtures)


def test_the_bench_builds_copies_and_prints_every_table(base, copies_sae, capsys):  # noqa: F811
    root, ws = base
    only = {}
    for kind in ("phrase", "style"):
        only_planted_file(ws.meta()["dataset"], kind, 0.5, root / f"only-{kind}.jsonl")
        index_dataset(root / f"only-{kind}.jsonl", root / f"base.only-{kind}", sae=copies_sae, settings=SETTINGS)
        only[kind] = root / f"base.only-{kind}"
    copies = root / "copies"
    bench.main(["shuffle", "--base", str(ws.path), "--out", str(copies), "--seeds", "0-1"])
    args = ["plant", "--base", str(ws.path), "--out", str(copies), "--rates", "0.25", "0.5", "--only"]
    bench.main(args + [f"{k}={p}" for k, p in only.items()])
    truths = sorted(p.name for p in copies.glob("*.truth.json"))
    assert truths == ["base.phrase.0.25.truth.json", "base.phrase.0.5.truth.json", "base.shuffled.0.truth.json",
                      "base.shuffled.1.truth.json", "base.style.0.25.truth.json", "base.style.0.5.truth.json"]
    capsys.readouterr()

    out_json = root / "calibration.json"
    bench.main(["report", "--real", str(ws.path), "--copies", str(copies), "--rel-max", "0.5", "0.9",
                "--top", "30", "--json", str(out_json)])
    text = capsys.readouterr().out
    assert text.count("===== structure params") == 2 and "rel_max = 0.5" in text and "rel_max = 0.9" in text
    assert text.count("(i) established rows") == 2 and text.count("(ii) planted suite") == 2
    results = json.loads(out_json.read_text())
    assert [r["rel_max"] for r in results] == [0.5, 0.9]
    for r in results:
        assert [c["name"] for c in r["shuffled"]["base"]] == ["base.shuffled.0", "base.shuffled.1"]
        rows = {(p["kind"], p["rate"]): p for p in r["planted"]}
        assert set(rows) == {("phrase", 0.25), ("phrase", 0.5), ("style", 0.25), ("style", 0.5)}
        assert [rows[("phrase", x)]["n_planted"] for x in (0.25, 0.5)] == [4, 8]
        for p in r["planted"]:
            # precision and recall are fractions when a row about the plant was found
            assert p["n_visible"] <= p["n_planted"]
            assert p["rank"] is None or (0 <= p["precision"] <= 1 and 0 <= p["recall"] <= 1)
