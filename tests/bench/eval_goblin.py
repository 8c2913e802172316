"""Re-run only the hypotheses analysis on an indexed goblin workspace (no model): the goblin feature
(from the text), its concept and name, where the goblin pairs fall, and the landing ranking.

    .venv/bin/python tests/bench/eval_goblin.py DIR/rate-0.01 [TOP]

DIR is bench_goblin.py's --out; the truth file beside the workspace only scores the driving pairs.
"""
import json
import sys
import time
import numpy as np
from core.checks.goblin import goblin_detection, goblin_hypothesis, goblin_paths
from core.analysis.shifts import Analysis
from core.data.workspace import Workspace
from core.analysis.hypotheses import Hypotheses
from core.analysis.naming import load_names
from core.analysis.structure import structure

ws = sys.argv[1]
truth = set(json.loads(goblin_paths(ws)["truth"].read_text())["planted"])
a = Analysis(Workspace(ws))
det = goblin_detection(a)
f = max(det, key=lambda g: (det[g].ap, det[g].margin))
print("goblin feature", f, "AP", round(det[f].ap, 3))
t = time.time()
r = goblin_hypothesis(a, f, a.rows(truth))
print("analysis", round(time.time() - t, 1), "s")
print(json.dumps(r, indent=1))
st = structure(a)
rows = a.rows(truth)
print("goblin pairs' clusters", st.clusters[rows].tolist(), "sizes", np.bincount(st.clusters[st.clusters >= 0])[st.clusters[rows][st.clusters[rows] >= 0]].tolist())
print("concept features", st.response.features(r["goblin_concept"]).tolist() if r["goblin_concept"] is not None else None)
H = Hypotheses(a, st, load_names(a, st))
u = H.u[rows][:, r["goblin_concept"]].toarray().ravel() if r["goblin_concept"] is not None else None
print("u of goblin concept on goblin pairs", u)
for h in H.report(top=int(sys.argv[2]) if len(sys.argv) > 2 else 10).hypotheses:
    print(f"{h.rank:>3} {h.score:.3f} {h.sentence[:170]}")
