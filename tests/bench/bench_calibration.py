"""Calibration of "established" (issue 26): label-shuffled copies and the planted suite.

Every number is read through the Session API the TUI uses (core.session.Session: hypotheses,
concepts, report). Copies are spliced from their base workspace (tests/bench/copies.py, shown equal
to a full index in tests/unit/test_copies.py), each with a `<copy>.truth.json` beside it.

Build the copies (no model run: splicing and column swaps):

    python tests/bench/bench_calibration.py shuffle --base WS --out DIR [--seeds 0-9]
        DIR/<base name>.shuffled.<seed>: chosen and rejected swapped in a seeded random half of the pairs
    python tests/bench/bench_calibration.py plant --base WS --only KIND=ONLY_WS ... --out DIR
                                               [--rates 0.02 0.05 0.1] [--seed 0]
        DIR/<base name>.<kind>.<rate>: the planted copy (core.data.plant); ONLY_WS indexes the planted
        records of the highest rate alone (copies.only_planted_file), with the base's SAE and settings

Print the tables:

    python tests/bench/bench_calibration.py report --real WS ... --copies DIR ... [--rel-max 0.5 0.7 0.9]
                                                   [--top 200] [--json OUT]

(i) established counts in Hypotheses, Concepts and Shifts per real workspace and per shuffled copy
    (with the hypothesis cells tested and the fewest one-way pairs a first finding needs), the mean per copy and how many copies establish nothing (issue 26 target: >= 9 of 10
    copies establish nothing, mean <= 0.2);
(ii) the planted suite, dataset x kind x rate: whether a row about the plant is established, the
    rank of the first row about the plant (the first hypothesis whose shown driving pairs are mostly
    planted pairs: the row at which a person scanning the list meets the plant), its driving-pair
    precision and recall against the planted pairs (its top |planted| driving pairs), whether its
    concept name holds one of the kind's marker words (core.data.plant), and how many planted replies
    the index read the marker in (a reply cut before its planted sentence cannot show it);
(iii) the phrase (goblin) kind at 5% on each dataset.
With several --rel-max values (core.analysis.structure.Params) the tables are printed once per value over
the same workspaces: a parameter is justified on the whole suite, not on one benchmark. `--engine
NAME=V1,V2 ...` sweeps the hypothesis engine's own settings the same way, one at a time with the
others at their defaults: pseudo_pairs (the shrinkage, core.analysis.hypotheses.PSEUDO_PAIRS),
min_support (MIN_SUPPORT) and lean (on: the score reads v, u beyond each pair's lean; off: u itself).

The counts "established" use the names of issue 26's API (Hypothesis.established, p, q;
HypothesisReport.n_established, n_tested, detectable_pairs; ConceptsView and ShiftReport .n_established);
where a workspace's code predates them the cell reads "n/a".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.analysis.naming import words  # noqa: E402
from core.data.plant import PLANTS, plant_records  # noqa: E402
from core.session import Session  # noqa: E402
from core.analysis.structure import Params  # noqa: E402
from core.views import HypothesisKey  # noqa: E402
from core.data.workspace import Workspace  # noqa: E402
from tests.bench.copies import splice_planted, swap_labels  # noqa: E402

TRUTH = ".truth.json"
SHIFTS_TOP = 50  # features read from Shifts (its n_established counts them all)
CONCEPT_ROWS = 50  # Concepts view rows read for a global shift about the plant
MOSTLY = 0.5  # a row is about the plant when more than this share of its shown driving pairs are planted


def truth_path(ws: Path) -> Path:
    return ws.parent / (ws.name + TRUTH)


def _seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


# -- building copies ------------------------------------------------------------------------------


def build_shuffled(base: Path, out: Path, seeds: list[int]) -> list[Path]:
    made = []
    bws = Workspace(base)
    for seed in seeds:
        dest = out / f"{base.name}.shuffled.{seed}"
        t0 = time.perf_counter()
        _, swapped = swap_labels(bws, seed, dest)
        truth_path(dest).write_text(json.dumps({
            "kind": "shuffled", "seed": seed, "base": str(base.resolve()), "dataset": base.name,
            "swapped": swapped}, indent=1))
        print(f"{dest}: {len(swapped)} of {bws.table('pairs').count_rows()} pairs swapped "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
        made.append(dest)
    return made


def build_planted(base: Path, only: dict[str, Path], out: Path, rates: list[float], seed: int) -> list[Path]:
    made = []
    bws = Workspace(base)
    data = bws.meta()["dataset"]
    for kind, only_ws in only.items():
        top = plant_records(data, kind, max(rates), seed=seed).planted
        ows = Workspace(only_ws)
        if ows.table("pairs").count_rows() != len(top):
            raise SystemExit(f"{only_ws} holds {ows.table('pairs').count_rows()} pairs, the {kind} file at "
                             f"{max(rates):.0%} plants {len(top)}: not its planted-only workspace")
        for rate in rates:
            dest = out / f"{base.name}.{kind}.{rate:g}"
            t0 = time.perf_counter()
            _, planted = splice_planted(bws, ows, top, kind, rate, dest, seed=seed)
            truth_path(dest).write_text(json.dumps({
                "kind": kind, "rate": rate, "seed": seed, "base": str(base.resolve()), "dataset": base.name,
                "planted": planted}, indent=1))
            print(f"{dest}: {kind} in {len(planted)} chosen replies ({time.perf_counter() - t0:.1f}s)", flush=True)
            made.append(dest)
    return made


# -- measuring ------------------------------------------------------------------------------------


def _established(obj, rows=()) -> int | None:
    """obj.n_established, else the established rows counted, else None (code before issue 26)."""
    n = getattr(obj, "n_established", None)
    if n is not None:
        return int(n)
    flags = [getattr(r, "established", None) for r in rows]
    if flags and all(f is not None for f in flags):
        return sum(bool(f) for f in flags)
    return None


@dataclass
class Counts:
    name: str
    hypotheses: int | None
    concepts: int | None
    shifts: int | None
    n_tested: int | None
    detectable: int | None  # fewest pairs all moving one way that a first finding needs here
    seconds: float
    top: list[str] = field(default_factory=list)  # the first established hypotheses, as read

    @property
    def total(self) -> int | None:
        parts = (self.hypotheses, self.concepts, self.shifts)
        return None if any(p is None for p in parts) else sum(parts)


def _concept_rows(view):
    return [getattr(r, "shift", r) for r in view.rows]


def counts(ws: Path, params: Params, top: int) -> tuple[Counts, Session, object]:
    t0 = time.perf_counter()
    s = Session(ws, params=params)
    hyps = s.hypotheses(top=top)
    concepts = s.concepts(top=top)
    shifts = s.report(top=min(top, SHIFTS_TOP))
    # a concept row is established when its shift is (NamedConceptShift.shift or the row itself)
    c_est = _established(concepts) if hasattr(concepts, "n_established") else _established(
        object(), _concept_rows(concepts))
    shown = [h for h in hyps.hypotheses if getattr(h, "established", False)][:5]
    c = Counts(ws.name, _established(hyps, hyps.hypotheses), c_est, _established(shifts, shifts.features),
               getattr(hyps, "n_tested", None), getattr(hyps, "detectable_pairs", None), time.perf_counter() - t0,
               [f"{h.rank}. {h.sentence} (q {getattr(h, 'q', float('nan')):.3f})" for h in shown])
    return c, s, hyps


@dataclass
class PlantedRow:
    dataset: str
    kind: str
    rate: float
    n_planted: int
    n_visible: int  # planted replies whose read tokens hold a marker word
    established: bool | None
    rank: int | None
    precision: float | None
    recall: float | None
    named: bool | None
    sentence: str
    q: float | None
    n_established: int | None
    seconds: float
    # the Concepts view (global shifts): the first established concept about the plant, by its top
    # pairs (the planted-many pairs moving it most in its shift's direction, mostly planted)
    concept_rank: int | None = None
    concept_precision: float | None = None
    concept_named: bool | None = None
    concept_q: float | None = None


def _visible(ws: Workspace, planted: list[int], plant) -> int:
    toks = ws.pairs_in(planted, ["chosen_tokens"])["chosen_tokens"].to_pylist()
    return sum(plant.marks(words("".join(t))) for t in toks)


def planted_row(ws: Path, truth: dict, params: Params, top: int) -> PlantedRow:
    c, s, hyps = counts(ws, params, top)
    planted = set(truth["planted"])
    plant = PLANTS[truth["kind"]]
    about = [h for h in hyps.hypotheses
             if h.driving and sum(p.source_index in planted for p in h.driving) / len(h.driving) > MOSTLY]
    first = about[0] if about else None
    est = None
    if about and all(hasattr(h, "established") for h in about):
        est = any(h.established for h in about)
    elif not about and c.hypotheses is not None:
        est = False
    p = r = None
    if first is not None:
        dp = s.driving_pairs(HypothesisKey.of(first), top=len(planted))
        hit = sum(x.source_index in planted for x in dp)
        p, r = hit / max(len(dp), 1), hit / len(planted)
    c_rank = c_p = c_named = c_q = None
    if hasattr(s, "hypotheses_engine"):
        u = s.hypotheses_engine().u_csc
        view = s.concepts(top=CONCEPT_ROWS)
        for rank, row in enumerate(view.rows, start=1):
            shift = getattr(row, "shift", row)
            if not getattr(shift, "established", False):
                break
            lo, hi = u.indptr[shift.concept], u.indptr[shift.concept + 1]
            sign = 1.0 if shift.shift >= 0 else -1.0
            order = np.argsort(-sign * u.data[lo:hi], kind="stable")[: len(planted)]
            top = [int(s.analysis.source_index[u.indices[lo + i]]) for i in order if sign * u.data[lo + i] > 0]
            hit = sum(t in planted for t in top)
            if top and hit / len(top) > MOSTLY:
                c_rank, c_p, c_q = rank, hit / len(top), shift.q
                c_named = plant.marks(words(getattr(row, "name", "")))
                break
    return PlantedRow(
        truth["dataset"], truth["kind"], truth["rate"], len(planted),
        _visible(Workspace(ws), sorted(planted), plant), est,
        first.rank if first else None, p, r,
        plant.marks(words(first.concept_name)) if first else None,
        first.sentence if first else "", getattr(first, "q", None) if first else None,
        c.hypotheses, c.seconds, c_rank, c_p, c_named, c_q,
    )


# -- printing -------------------------------------------------------------------------------------


def _n(x) -> str:
    return "n/a" if x is None else str(x)


def _f(x, fmt=".2f") -> str:
    return "—" if x is None else format(x, fmt)


def print_counts(real: list[Counts], shuffled: dict[str, list[Counts]]) -> dict:
    print("\n(i) established rows: real files and label-shuffled copies (half the pairs swapped)")
    print(f"{'workspace':<34} {'hypotheses':>10} {'concepts':>9} {'shifts':>7} {'total':>6} {'tested':>7} "
          f"{'detect':>6} {'s':>6}")
    for c in real:
        print(f"{c.name:<34} {_n(c.hypotheses):>10} {_n(c.concepts):>9} {_n(c.shifts):>7} {_n(c.total):>6} "
              f"{_n(c.n_tested):>7} {_n(c.detectable):>6} {c.seconds:>6.1f}")
        for line in c.top:
            print(f"    {line}")
    summary = {}
    for base, cs in shuffled.items():
        for c in cs:
            print(f"{c.name:<34} {_n(c.hypotheses):>10} {_n(c.concepts):>9} {_n(c.shifts):>7} {_n(c.total):>6} "
                  f"{_n(c.n_tested):>7} {_n(c.detectable):>6} {c.seconds:>6.1f}")
        totals = [c.total for c in cs]
        if cs and all(t is not None for t in totals):
            none = sum(t == 0 for t in totals)
            mean = statistics.fmean(totals)
            ok = none >= 0.9 * len(cs) and mean <= 0.2
            print(f"  {base}: {none} of {len(cs)} copies establish nothing; mean established per copy "
                  f"{mean:.2f} (target >= 9 of 10 and <= 0.2: {'met' if ok else 'NOT met'})")
            summary[base] = {"copies": len(cs), "establish_nothing": none, "mean": mean, "target_met": ok}
        else:
            print(f"  {base}: {len(cs)} copies (established counts n/a: code before issue 26)")
    return summary


def _met(r: PlantedRow) -> bool:
    return bool(r.established and r.rank is not None and r.rank <= 5 and (r.precision or 0) >= 0.8)


def _met_concept(r: PlantedRow) -> bool:
    return r.concept_rank is not None and r.concept_rank <= 5 and (r.concept_precision or 0) >= 0.8


def print_planted(rows: list[PlantedRow]) -> None:
    print("\n(ii) planted suite: the first hypothesis about the plant (driving pairs mostly planted), and the"
          "\n     Concepts view's first established global shift about it (its top pairs mostly planted)")
    print(f"{'dataset':<16} {'kind':<7} {'rate':>5} {'planted':>7} {'read':>5} {'estab':>6} {'rank':>5} "
          f"{'P':>5} {'R':>5} {'named':>6} {'q':>6} {'n_est':>6} | {'C rank':>6} {'C P':>5} {'C nam':>5} {'C q':>6}"
          f"  first row about the plant")
    for r in rows:
        est = "n/a" if r.established is None else ("yes" if r.established else "no")
        named = "—" if r.named is None else ("yes" if r.named else "no")
        c_named = "—" if r.concept_named is None else ("yes" if r.concept_named else "no")
        print(f"{r.dataset:<16} {r.kind:<7} {r.rate:>5.0%} {r.n_planted:>7} {r.n_visible:>5} {est:>6} "
              f"{_n(r.rank):>5} {_f(r.precision):>5} {_f(r.recall):>5} {named:>6} {_f(r.q, '.3f'):>6} "
              f"{_n(r.n_established):>6} | {_n(r.concept_rank):>6} {_f(r.concept_precision):>5} {c_named:>5} "
              f"{_f(r.concept_q, '.3f'):>6}  {r.sentence[:110]}")
    cells = [r for r in rows if r.rate >= 0.05]
    if cells:
        hit = [r for r in cells if _met(r)]
        print(f"  target (every 5% and 10% cell established, top 5, P >= 0.8): {len(hit)} of {len(cells)} cells "
              f"as a hypothesis; {len([r for r in cells if _met(r) or _met_concept(r)])} of {len(cells)} in either "
              "view (a global shift: established, in the Concepts view's top 5, top pairs P >= 0.8)")
    print("\n(iii) goblin (phrase) at 5%")
    for r in rows:
        if r.kind == "phrase" and abs(r.rate - 0.05) < 1e-9:
            print(f"  {r.dataset}: established {'n/a' if r.established is None else r.established}, rank "
                  f"{_n(r.rank)}, P {_f(r.precision)}, R {_f(r.recall)} ({r.n_planted} planted, "
                  f"{r.n_visible} read with the goblin)")


def _copies(dirs: list[Path]) -> list[tuple[Path, dict]]:
    out = []
    for d in dirs:
        for t in sorted(d.glob("*" + TRUTH)):
            ws = t.parent / t.name[: -len(TRUTH)]
            if (ws / "meta.lance").exists():
                out.append((ws, json.loads(t.read_text())))
    return out


def _order(item):
    ws, truth = item
    seed = truth.get("seed", 0)
    return (truth["dataset"], truth["kind"], truth.get("rate", 0), seed)


ENGINE = {  # --engine NAME: the module constant it sets (lean: whether v or u is scored)
    "pseudo_pairs": ("PSEUDO_PAIRS", float),
    "min_support": ("MIN_SUPPORT", int),
    "lean": (None, lambda v: {"on": True, "off": False}[v]),
}


@contextlib.contextmanager
def engine_setting(name: str | None, value):
    """The hypothesis engine with one setting changed while the block runs (bench only: the product
    has them as module constants)."""
    import core.analysis.hypotheses as H

    if name is None:
        yield
        return
    const, _ = ENGINE[name]
    if const is not None:
        old = getattr(H, const)
        setattr(H, const, value)
        try:
            yield
        finally:
            setattr(H, const, old)
        return
    old = H.beyond_lean
    if not value:
        H.beyond_lean = lambda concepts, b, u: u.copy()  # v = u: no lean correction
    try:
        yield
    finally:
        H.beyond_lean = old


def _engine_sweep(text: str) -> list[tuple[str, object]]:
    name, sep, values = text.partition("=")
    if not sep or name not in ENGINE:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=V1,V2 with NAME one of {', '.join(ENGINE)}")
    try:
        return [(name, ENGINE[name][1](v)) for v in values.split(",")]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: a value {name} does not take") from None


def report(real: list[Path], dirs: list[Path], rel_max: list[float | None], top: int, as_json: Path | None,
           engine: list[tuple[str, object]] = ()) -> None:
    copies = sorted(_copies(dirs), key=_order)
    results = []
    runs = [(value, None, None) for value in rel_max] + [(None, n, v) for n, v in engine]
    for value, setting, setting_value in runs:
        params = Params() if value is None else Params(rel_max=value)
        label = f"rel_max = {params.rel_max}" + (f", engine {setting} = {setting_value}" if setting else "")
        print(f"\n===== {label} =====", flush=True)
        with engine_setting(setting, setting_value):
            results.append(_report_one(real, copies, params, top, label))
    if as_json:
        as_json.write_text(json.dumps(results, indent=1, default=str))


def _report_one(real: list[Path], copies, params: Params, top: int, label: str) -> dict:
    real_counts = [counts(ws, params, top)[0] for ws in real]
    shuffled: dict[str, list[Counts]] = {}
    planted = []
    for ws, truth in copies:
        if truth["kind"] == "shuffled":
            shuffled.setdefault(truth["dataset"], []).append(counts(ws, params, top)[0])
        else:
            planted.append(planted_row(ws, truth, params, top))
    summary = print_counts(real_counts, shuffled)
    print_planted(planted)
    return {"settings": label, "rel_max": params.rel_max, "real": [c.__dict__ for c in real_counts],
            "shuffled": {k: [c.__dict__ for c in v] for k, v in shuffled.items()},
            "shuffled_summary": summary, "planted": [r.__dict__ for r in planted]}


def _kv(text: str) -> tuple[str, Path]:
    kind, sep, path = text.partition("=")
    if not sep or kind not in PLANTS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND=WORKSPACE, KIND one of {', '.join(PLANTS)}")
    return kind, Path(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("shuffle", help="label-shuffled copies of a workspace")
    a.add_argument("--base", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--seeds", type=_seeds, default=_seeds("0-9"), help="e.g. 0-9")
    b = sub.add_parser("plant", help="planted copies of a workspace, spliced")
    b.add_argument("--base", type=Path, required=True)
    b.add_argument("--only", type=_kv, nargs="+", required=True, help="KIND=WS of the planted-only file")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--rates", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    b.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("report", help="print the calibration tables")
    c.add_argument("--real", type=Path, nargs="*", default=[])
    c.add_argument("--copies", type=Path, nargs="*", default=[], help="folders holding copies (*.truth.json)")
    c.add_argument("--rel-max", type=float, nargs="*", default=[None], help="sweep core.analysis.structure.Params.rel_max")
    c.add_argument("--engine", type=_engine_sweep, nargs="*", default=[],
                   help="NAME=V1,V2: sweep pseudo_pairs, min_support or lean (on/off), one at a time")
    c.add_argument("--top", type=int, default=200, help="hypotheses read per workspace")
    c.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "shuffle":
        build_shuffled(args.base, args.out, args.seeds)
    elif args.cmd == "plant":
        build_planted(args.base, dict(args.only), args.out, args.rates, args.seed)
    else:
        report(args.real, args.copies, args.rel_max or [None], args.top, args.json,
               [x for sweep in args.engine for x in sweep])


if __name__ == "__main__":
    main()
