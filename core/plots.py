"""Predicted-vs-actual scatter plots as PNG files (matplotlib's Agg canvas: no pyplot state, no
display, safe in worker threads)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _num(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def scatter_plot(predicted: np.ndarray, actual: np.ndarray, significant: np.ndarray, top: np.ndarray,
                 report, path: Path | str) -> Path:
    """The mean-activation scatter of every feature (`core.validate.ValidationReport` numbers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure()
    ax = fig.add_subplot()
    nonzero = np.nonzero(predicted)[0]
    ax.scatter(predicted[nonzero], actual[nonzero], s=6, c="#bbbbbb", label="predicted ≠ 0", lw=0)
    ax.scatter(predicted[significant], actual[significant], s=12, c="#1f77b4", lw=0,
               label=f"CI clear of zero ({len(significant)})")
    ax.scatter(predicted[top], actual[top], s=22, facecolors="none", edgecolors="#d62728", lw=0.8,
               label=f"top {len(top)} |predicted|")
    for f in top[:8]:
        ax.annotate(str(int(f)), (predicted[f], actual[f]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    s = report.significant
    if not math.isnan(s.slope) and len(significant):
        xs = np.linspace(predicted[significant].min(), predicted[significant].max(), 2)
        ax.plot(xs, s.slope * xs + s.intercept, c="#1f77b4", lw=1)
    ax.axhline(0, c="k", lw=0.4)
    ax.axvline(0, c="k", lw=0.4)
    ax.set_xlabel("predicted shift: mean a(chosen) - a(rejected) over trained pairs")
    ax.set_ylabel("actual shift: mean a(after) - a(before) over prompts")
    ax.set_title(
        f"{report.model} / {report.sae}: R² {_num(s.r2)}, Spearman {_num(s.spearman)} "
        f"({s.n_features} features)\n{report.n_pairs_predicted} pairs, {report.n_prompts} prompts, "
        f"top-{report.k} R² {_num(report.top_k.r2)}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def agreement_plot(agreement, title: str, path: Path | str) -> Path:
    """Predicted vs actual of a `core.validate.Agreement` (concepts or thresholded features): the
    points with their standard errors, the fitted line and y = s * x after the global scale."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.array([p["predicted"] for p in agreement.points])
    y = np.array([p["actual"] for p in agreement.points])
    se = np.array([p["actual_se"] for p in agreement.points])
    fig = _figure()
    ax = fig.add_subplot()
    ax.errorbar(x, y, yerr=se, fmt="o", ms=3, lw=0.5, c="#1f77b4", alpha=0.8)
    f = agreement.fit
    if len(x) and not math.isnan(f.slope):
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(xs, f.slope * xs + f.intercept, c="#1f77b4", lw=1, label=f"fit: R² {_num(f.r2)}")
        ax.plot(xs, f.scale * xs, c="#d62728", lw=1, ls="--",
                label=f"y = {f.scale:.3g} x: R² {_num(f.r2_scaled)}")
    ax.axhline(0, c="k", lw=0.4)
    ax.axvline(0, c="k", lw=0.4)
    what = "concept" if agreement.level == "concepts" else "feature"
    ax.set_xlabel(f"predicted: mean over pairs of the {what}'s signed disparity u")
    ax.set_ylabel("actual: change in its firing share, after - before")
    null = agreement.null or {}
    ax.set_title(
        f"{title}: {len(x)} {agreement.level}, Spearman {_num(f.spearman)} "
        f"[{_num(agreement.spearman_ci[0])}, {_num(agreement.spearman_ci[1])}]"
        + (f"\nnull (shuffled {what}s) R² {_num(null.get('r2_mean'))}, p {null.get('p_value', 0):.3g}"
           if null else ""),
        fontsize=9,
    )
    if len(x):
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path
