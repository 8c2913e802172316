"""Predicted-vs-actual scatter plots as PNG files (matplotlib's Agg canvas: no pyplot state, no
display, safe in worker threads)."""

from __future__ import annotations

import contextlib
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
    """The mean-activation scatter of every feature (`core.checks.validate.ValidationReport` numbers)."""
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
    """Predicted vs actual of a `core.checks.validate.Agreement` (concepts or thresholded features): the
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


# -- the report's plots (core.report) -----------------------------------------------------------------


@contextlib.contextmanager
def _report_figure(path: Path, width: float, height: float):
    """A figure of that size saved to `path` on leaving. Names in these plots come from dataset tokens:
    a "$" in one must not start matplotlib's math mode, so math parsing is off while it is drawn."""
    import matplotlib

    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        fig = _figure()
        fig.set_size_inches(width, height)
        yield fig
        fig.tight_layout()
        fig.savefig(path)


def concept_shifts_plot(rows: list[tuple[str, float, tuple[float, float], bool]], path: Path | str) -> Path:
    """Horizontal bars of concepts' predicted shifts (mean u) with their 95% intervals: `rows` of
    (label, shift, (low, high), established), drawn top to bottom in the order given."""
    path = Path(path)
    with _report_figure(path, 8, 0.35 * len(rows) + 1.6) as fig:
        ax = fig.add_subplot()
        y = np.arange(len(rows))[::-1]
        shift = np.array([r[1] for r in rows], dtype=float)
        low = shift - np.array([r[2][0] for r in rows], dtype=float)
        high = np.array([r[2][1] for r in rows], dtype=float) - shift
        colours = [("#d62728" if s > 0 else "#1f77b4") if r[3] else "#bbbbbb" for s, r in zip(shift, rows)]
        ax.barh(y, shift, color=colours, height=0.6)
        ax.errorbar(shift, y, xerr=np.vstack([low, high]), fmt="none", ecolor="k", lw=0.8, capsize=2)
        ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
        ax.axvline(0, c="k", lw=0.5)
        ax.set_xlabel("predicted shift: mean over pairs of u (> 0: DPO amplifies it), 95% interval")
        ax.set_title("top concepts by |predicted shift| (grey: not established)", fontsize=9)
    return path


def data_clusters_plot(rows: list[tuple[str, int, float]], n_silent: int, path: Path | str) -> Path:
    """Data clusters side by side: each one's size, and its contrast (the Δ of its strongest ranked
    hypothesis, 0 where it has none); `rows` of (label, size, contrast), largest first."""
    path = Path(path)
    with _report_figure(path, 9, 0.3 * len(rows) + 1.8) as fig:
        size_ax, delta_ax = fig.subplots(1, 2, sharey=True)
        y = np.arange(len(rows))[::-1]
        size_ax.barh(y, [r[1] for r in rows], color="#7f7f7f", height=0.6)
        size_ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
        size_ax.set_xlabel("pairs")
        size_ax.set_title(f"size ({n_silent} silent pairs in no cluster)", fontsize=9)
        delta = np.array([r[2] for r in rows], dtype=float)
        delta_ax.barh(y, delta, color=["#d62728" if d > 0 else "#1f77b4" for d in delta], height=0.6)
        delta_ax.axvline(0, c="k", lw=0.5)
        delta_ax.set_xlabel("Δ of its strongest hypothesis")
        delta_ax.set_title("contrast: what the labels select for inside it", fontsize=9)
    return path


def validation_points_plot(points: list[dict], fit: dict, title: str, path: Path | str) -> Path:
    """Predicted vs actual concept shifts of a saved validation report (its "points": id, predicted,
    actual, actual_se), with the fitted line."""
    path = Path(path)
    x = np.array([p["predicted"] for p in points], dtype=float)
    y = np.array([p["actual"] for p in points], dtype=float)
    se = np.array([p.get("actual_se") or 0.0 for p in points], dtype=float)
    with _report_figure(path, 7, 6) as fig:
        ax = fig.add_subplot()
        ax.errorbar(x, y, yerr=se, fmt="o", ms=3, lw=0.5, c="#1f77b4", alpha=0.8)
        slope, intercept = fit.get("slope"), fit.get("intercept")
        if len(x) and slope is not None and intercept is not None and not math.isnan(slope):
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, slope * xs + intercept, c="#1f77b4", lw=1, label=f"fit: R² {_num(fit.get('r2'))}")
            ax.legend(fontsize=7, loc="best")
        ax.axhline(0, c="k", lw=0.4)
        ax.axvline(0, c="k", lw=0.4)
        ax.set_xlabel("predicted: mean over pairs of the concept's u")
        ax.set_ylabel("actual: change in its firing share after DPO")
        ax.set_title(f"{title}: {len(x)} concepts, Spearman {_num(fit.get('spearman'))}", fontsize=9)
    return path
