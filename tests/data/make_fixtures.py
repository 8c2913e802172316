"""Build the committed test fixtures under tests/data from the shared real data sets, once.

    PYTHONPATH=. python tests/data/make_fixtures.py [SHARED_DATA_DIR]   (default: ../shared/data)

The tests read these files, not ../shared: a fresh clone runs its suite on them. Every text is real
(HH-RLHF harmless-base test, MIT; UltraFeedback binarized via trl-lib, MIT), copied unchanged:

- hh-rlhf.jsonl: the source lines, unchanged, of the first 236 valid HH-RLHF pairs whose prompt +
  chosen + rejected text is under 600 characters, in source order. `short_pairs(HH, n, skip=k)` in
  tests/conftest.py picks the same pairs from it as from the whole file (the tiny SAE trains on the
  101st to 140th, the session workspace is the first 24, the goblin run the 201st to 236th).
- ultrafeedback.jsonl: the source lines, unchanged (the UltraFeedback shape: prompt, chosen,
  rejected, source_index, metadata), of the first 40 valid pairs under 900 characters and the first
  2 pairs with a 1,400-2,500 character chosen reply (a reply longer than the old token cap), in
  source order.
- formats/: the first 40 pairs of each file above, in each record shape and container that
  core.data.ingest and core.data.hfdata read (test_ingest.py reads each back and compares the pairs):
    hh-rlhf.jsonl.gz        the first 40 HH-RLHF lines above, gzipped
    standard.json           the first 40 UltraFeedback records, unchanged, as one JSON array
    conversational.parquet  the first 40 HH-RLHF pairs as TRL conversational records (prompt list)
    sharegpt.jsonl          the first 40 UltraFeedback pairs as ShareGPT records
    hf-saved/               the first 40 HH-RLHF pairs, TRL implicit-prompt conversational,
                            written by `datasets` save_to_disk (split "train")
    hf-shards/              the first 40 UltraFeedback pairs, standard, as two Parquet shards
                            (train-00000-of-00002.parquet, train-00001-of-00002.parquet)
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
N_HH = 236  # short HH pairs: the last test window is the goblin run's 201st..236th
N_UF = 40
N_UF_LONG = 2
N_FORMAT = 40


def _len(p) -> int:
    return len(p.prompt_text) + len(p.chosen) + len(p.rejected)


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def main(shared: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.data.ingest import raw_records, read_pairs

    hh_src, uf_src = shared / "hh-rlhf-harmless-base-test.jsonl.gz", shared / "ultrafeedback-1k.jsonl"
    hh = [p for p in read_pairs(hh_src, skip_invalid=True).pairs if _len(p) < 600][:N_HH]
    uf_all = read_pairs(uf_src, skip_invalid=True).pairs
    uf_short = [p for p in uf_all if _len(p) < 900][:N_UF]
    uf_long = [p for p in uf_all
               if 1400 < len(p.chosen) < 2500 and len(p.prompt_text) + len(p.rejected) < 1200][:N_UF_LONG]
    uf = sorted(uf_short + uf_long, key=lambda p: p.source_index)
    hh_raw, uf_raw = raw_records(hh_src), raw_records(uf_src)
    _write_lines(HERE / "hh-rlhf.jsonl", [hh_raw[p.source_index] for p in hh])
    _write_lines(HERE / "ultrafeedback.jsonl", [uf_raw[p.source_index] for p in uf])

    out = HERE / "formats"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    hh40, uf40 = hh[:N_FORMAT], uf[:N_FORMAT]  # the first 40 lines of each fixture above
    # gzip with a fixed mtime and no name: the same bytes on every build
    with open(out / "hh-rlhf.jsonl.gz", "wb") as raw_f, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw_f, mtime=0) as f:
        f.write(b"".join(hh_raw[p.source_index] + b"\n" for p in hh40))
    (out / "standard.json").write_text(
        json.dumps([json.loads(uf_raw[p.source_index]) for p in uf40], ensure_ascii=False, indent=1) + "\n",
        encoding="utf-8")

    def reply(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    conv = [{"prompt": list(p.prompt), "chosen": reply(p.chosen), "rejected": reply(p.rejected)} for p in hh40]
    pq.write_table(pa.Table.from_pylist(conv), out / "conversational.parquet")
    roles = {"user": "human", "assistant": "gpt", "system": "system"}
    sharegpt = [{"conversations": [{"from": roles[m["role"]], "value": m["content"]} for m in p.prompt],
                 "chosen": {"from": "gpt", "value": p.chosen}, "rejected": {"from": "gpt", "value": p.rejected}}
                for p in uf40]
    (out / "sharegpt.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sharegpt), encoding="utf-8")
    implicit = [{"chosen": [*p.prompt, *reply(p.chosen)], "rejected": [*p.prompt, *reply(p.rejected)]}
                for p in hh40]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(implicit)}).save_to_disk(str(out / "hf-saved"))
    shards = out / "hf-shards"
    shards.mkdir()
    standard = [{"prompt": p.prompt_text, "chosen": p.chosen, "rejected": p.rejected} for p in uf40]
    half = len(standard) // 2
    for i, part in enumerate((standard[:half], standard[half:])):
        pq.write_table(pa.Table.from_pylist(part), shards / f"train-0000{i}-of-00002.parquet")
    total = sum(f.stat().st_size for f in HERE.rglob("*") if f.is_file())
    print(f"{len(hh)} HH-RLHF pairs, {len(uf)} UltraFeedback pairs, {N_FORMAT} per format; "
          f"tests/data holds {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data")
