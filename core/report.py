"""The findings of a workspace as a report a team reads where it decides: Markdown that GitHub renders
(a pull request, an issue, a repository), one self-contained HTML page, and the PNG plots.

`write_report(session, out)` reads everything through `core.session.Session` (the same door as the
CLI and the TUI) and writes, into the folder `out`:

    report.md     the summary, findings, marks, plan and plots (images linked as plots/NAME.png)
    report.html   the same, with the plots inlined (data: URIs): one file to mail or attach
    plots/        concepts.png (top concepts' predicted shifts with 95% intervals), clusters.png
                  (data clusters' sizes and contrasts), validation.png (when a validation report is
                  given)

Findings are the established hypotheses (calibrated: q below the false discovery rate) ranked over every
pair, as DPO would see the data; each with its numbers, exemplar snippets of chosen beside rejected
replies, and its before -> after without the marked pairs (`Session.hypothesis_change`, a what-if).

All text that comes from the dataset or from people (replies, names built from tokens, mark reasons,
paths) is escaped: `core.data.textsafe.markdown_text` in Markdown, `html_text` in HTML.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import threading
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

from core.analysis.kinds import Kind
from core.errors import Cancelled, UsageError
from core.progress import Progress, ProgressFn, reporter
from core.data.textsafe import html_text, markdown_text
from core.views import HypothesisKey

MARKDOWN = "report.md"
HTML = "report.html"
PLOTS = "plots"
N_FINDINGS = 12  # established findings shown in full (the rest counted)
N_LEADS = 5  # when none is established: the top hypotheses, shown as leads
N_EXAMPLES = 3  # chosen/rejected snippet rows per finding
N_MARKS = 100  # marks listed (the rest counted)
N_CONCEPTS = 15
N_CLUSTERS = 20
EXCERPT_WORDS = 24  # an excerpt of a reply when no exemplar snippet can be made
RANKED = 200  # hypotheses read to find the established ones


@dataclass(frozen=True)
class Example:
    """One row of exemplars: a chosen reply's snippet beside a rejected reply's (either may be "")."""

    chosen: str
    rejected: str
    chosen_pair: int | None
    rejected_pair: int | None


@dataclass(frozen=True)
class Finding:
    """One hypothesis as the report shows it."""

    hypothesis: object  # core.analysis.hypotheses.Hypothesis
    examples: tuple[Example, ...]
    change: object | None  # core.views.HypothesisChange without the marks; None when nothing is marked


@dataclass
class Report:
    """What the report says, before it is written as Markdown or HTML (all text raw)."""

    title: str
    facts: list[tuple[str, str]]
    summary: list[str]
    n_tested: int
    n_established: int
    fdr: float
    findings: list[Finding]
    leads: list[Finding]  # top hypotheses shown when none is established
    n_more: int  # established findings not shown
    marks: list  # core.data.marks.MarkInfo, by source index
    n_marked: int
    plan: object | None  # core.train.interventions.Plan
    plots: list[tuple[str, str, Path]] = field(default_factory=list)  # (title, caption, file)
    validation: dict | None = None
    concepts: list = field(default_factory=list)  # established global concept shifts (NamedConceptShift)


@dataclass(frozen=True)
class ReportFiles:
    """Where `write_report` wrote."""

    markdown: Path
    html: Path
    plots: tuple[Path, ...]


def write_report(session, out: Path | str, validation: Path | str | None = None,
                 progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> ReportFiles:
    """Write the report of `session`'s workspace (core.session.Session) into the folder `out` (module
    doc), replacing an earlier report there. `validation`: a validation report (JSON, or a train-dpo
    folder holding validation.json) whose concept scatter to include.

    Returns ReportFiles. Raises WorkspaceError (no pairs), ValidationError (an unreadable validation
    report), UsageError (`out` is a file), Cancelled when `cancel` is set between steps.
    """
    emit = reporter(progress)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; the report is written into a folder")

    def step(done: int, what: str) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("report stopped; nothing was written")
        emit(Progress("report", what, done, 4, "steps"))

    step(0, "hypotheses (fitted on first use)")
    report = build_report(session, validation)
    step(1, "plots")
    plots_dir = out / PLOTS
    plots_dir.mkdir(parents=True, exist_ok=True)
    report.plots = _plots(session, report, plots_dir)
    step(2, "Markdown")
    md = out / MARKDOWN
    md.write_text(to_markdown(report), encoding="utf-8")
    step(3, "HTML")
    html = out / HTML
    html.write_text(to_html(report), encoding="utf-8")
    emit(Progress("report", f"wrote {md} and {html}", 4, 4, "steps"))
    return ReportFiles(md, html, tuple(p for _, _, p in report.plots))


# -- what the report says ---------------------------------------------------------------------------


def build_report(session, validation: Path | str | None = None) -> Report:
    """The report's content (raw text) from `session`: findings over every pair, their change without
    the marks, the marks, the plan, the validation report's numbers. Raises as `write_report`."""
    info = session.info()
    marked = session.marked()
    ranked = session.hypotheses(top=RANKED, excluded=frozenset())
    established = [h for h in ranked.hypotheses if h.established]
    shown = established[:N_FINDINGS]
    leads = [] if established else list(ranked.hypotheses[:N_LEADS])

    def finding(h) -> Finding:
        change = session.hypothesis_change(HypothesisKey.of(h), frozenset(), marked) if marked else None
        return Finding(h, _examples(session, h), change)

    marks = session.marks.marked
    meta = session.meta
    hf = meta.get("hf") or {}
    dataset = str(meta.get("dataset", "")) + (f" [{hf['split']}]" if hf.get("split") else "")
    facts = [
        ("workspace", str(session.path)),
        ("dataset", dataset),
        ("model / SAE", f"{info.model} / {info.sae} (layer {info.layer})"),
        ("pairs", f"{info.n_pairs:,} indexed, {len(marks):,} marked for removal"),
        ("hypotheses", f"{ranked.n_tested:,} tested, {ranked.n_established:,} established "
                       f"(q < {ranked.fdr:g}, the false discovery rate)"),
        ("written", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    report = Report(
        title=f"datadebug report: {info.name}",
        facts=facts,
        summary=[],
        n_tested=ranked.n_tested,
        n_established=ranked.n_established,
        fdr=ranked.fdr,
        findings=[finding(h) for h in shown],
        leads=[finding(h) for h in leads],
        n_more=len(established) - len(shown),
        marks=[marks[s] for s in sorted(marks)][:N_MARKS],
        n_marked=len(marks),
        plan=session.plan(),
        validation=_validation(validation),
        concepts=[c for c in session.concepts(top=N_CONCEPTS, excluded=frozenset()).rows if c.shift.established],
    )
    report.summary = _summary(session, report)
    return report


def _summary(session, report: Report) -> list[str]:
    """The findings in plain words: one sentence per paragraph (raw text)."""
    n = report.n_established
    if not n:
        lines = [f"No local finding is established: none of the {report.n_tested:,} hypotheses tested has q < "
                 f"{report.fdr:g}. DPO on this data is not predicted to teach any one concept in any one "
                 "region of it more than chance would; the strongest leads are listed below, unconfirmed."]
    else:
        lines = [f"DPO on this data would teach {n} thing{'s' * (n != 1)} beyond chance "
                 f"(of {report.n_tested:,} hypotheses tested, q < {report.fdr:g}):"]
        lines += [_plain(f.hypothesis) for f in report.findings]
    if report.n_more:
        lines.append(f"… and {report.n_more} more established findings (datadebug hypotheses lists them all).")
    for direction, sign in (("more", 1), ("less", -1)):
        names = [_concept_words(c) for c in report.concepts if sign * c.shift.shift > 0]
        if names:
            lines.append(f"Across all pairs, chosen replies have {direction} of {', '.join(names)} "
                         "(established global shifts: DPO would move the model that way everywhere).")
    moved = [f for f in report.findings if f.change is not None]
    if moved:
        gone = sum(1 for f in moved if not f.change.q[1] < report.fdr)
        if len(moved) == 1:
            after = "the finding shown would " + ("no longer be established" if gone else "stay established")
        else:
            after = (f"{gone} of the {len(moved)} findings shown would no longer be established" if gone else
                     "every finding shown stays established")
        lines.append(f"{report.n_marked:,} pairs are marked for removal; without them {after} "
                     "(each finding's before → after is below).")
    elif report.n_marked:
        lines.append(f"{report.n_marked:,} pairs are marked for removal (their reasons, and each lead's "
                     "before → after without them, are below).")
    return lines


def _plain(h) -> str:
    """A hypothesis as a person says it: what DPO would teach, and where."""
    what = f"«{h.concept_name}»" if h.concept_name else f"concept {h.concept}"
    verb = "produce more" if h.direction == "more" else "produce less"
    kind = Kind(h.kind)
    if kind is Kind.CONCEPT:
        where = "wherever replies touch it at all"
    elif kind is Kind.PROMPT and h.group_name:
        where = f"when the prompt is about «{h.group_name}»"
    else:
        where = kind.where(h.group, h.group_name)
    return f"to {verb} {what} {where} ({h.n:,} pairs, Δ {h.delta:+.2f}, q {_q(h.q)})."


def _concept_words(c) -> str:
    return f"«{c.name}»" if c.name else f"concept {c.shift.concept}"


def _q(q: float) -> str:
    return "—" if q is None or (isinstance(q, float) and math.isnan(q)) else (f"{q:.2g}" if q >= 1e-3 else f"{q:.1e}")


def _excerpt(text: str, words: int = EXCERPT_WORDS) -> str:
    parts = str(text).split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


def _examples(session, h) -> tuple[Example, ...]:
    """Chosen beside rejected for hypothesis `h`: exemplar snippets around where its concept fires
    (core.analysis.evidence, where present), else the start of each driving pair's two replies."""
    pairs = [p.source_index for p in h.driving]
    if not pairs:
        return ()
    try:
        from core.analysis.evidence import exemplars
    except ImportError:
        exemplars = None
    if exemplars is not None:
        u = {p.source_index: p.u for p in h.driving}
        snippets = exemplars(session.analysis, h.features, pairs, u=u, n=2 * N_EXAMPLES)
        sides = {side: [s for s in snippets if s.side == side] for side in ("chosen", "rejected")}
        rows = []
        for c, r in zip_longest(sides["chosen"], sides["rejected"]):
            rows.append(Example(
                f"{c.before}«{c.span}»{c.after}" if c else "", f"{r.before}«{r.span}»{r.after}" if r else "",
                c.source_index if c else None, r.source_index if r else None))
        if rows:
            return tuple(rows[:N_EXAMPLES])
    return tuple(Example(_excerpt(p.chosen), _excerpt(p.rejected), p.source_index, p.source_index)
                 for p in session.pair_rows(pairs[:N_EXAMPLES]))


def _validation(path: Path | str | None) -> dict | None:
    if path is None:
        return None
    from core.checks.validate import read_report

    raw = read_report(path)
    level = raw.get("concepts") or raw.get("thresholded_features")
    if not level or not level.get("points"):
        return {"path": str(path), "points": [], "fit": {}, "level": "concepts"}
    return {"path": str(path), "points": level["points"], "fit": level.get("fit") or {},
            "level": "concepts" if raw.get("concepts") else "features", "trained": raw.get("trained")}


def _plots(session, report: Report, folder: Path) -> list[tuple[str, str, Path]]:
    from core.checks import plots

    out = []
    view = session.concepts(top=N_CONCEPTS, excluded=frozenset())
    rows = [(_label(c.shift.concept, c.name), c.shift.shift, tuple(c.shift.ci), bool(c.shift.established))
            for c in view.rows]
    if rows:
        out.append(("Top concepts' predicted shifts", f"The {len(rows)} concepts DPO on all {view.n_pairs:,} "
                    "pairs would move most; bars show the 95% interval, grey ones are not established.",
                    plots.concept_shifts_plot(rows, folder / "concepts.png")))
    clusters = _cluster_rows(session)
    if clusters is not None:
        rows, n_silent = clusters
        out.append(("Data clusters", f"The {len(rows)} largest data clusters: their size, and the Δ of the "
                    "strongest hypothesis inside each (the contrast the labels draw there).",
                    plots.data_clusters_plot(rows, n_silent, folder / "clusters.png")))
    v = report.validation
    if v is not None and v["points"]:
        out.append(("Validation: predicted vs actual", f"From the validation report {v['path']}: each "
                    f"{v['level'][:-1]}'s predicted shift against what training actually changed.",
                    plots.validation_points_plot(v["points"], v["fit"], "validation", folder / "validation.png")))
    return out


def _label(concept: int, name: str) -> str:
    return f"{concept} {name}".strip()[:48]


def _cluster_rows(session) -> tuple[list[tuple[str, int, float]], int] | None:
    """(label, size, contrast) of the largest data clusters, and the silent pairs' count."""
    import numpy as np

    engine = session.hypotheses_engine()
    labels = np.asarray(engine.st.clusters)
    if not len(labels) or labels.max() < 0:
        return None
    sizes = np.bincount(labels[labels >= 0], minlength=engine.st.k)
    contrast: dict[int, float] = {}
    for h in session.hypotheses(top=RANKED, kind=Kind.CLUSTER, excluded=frozenset()).hypotheses:
        contrast.setdefault(int(h.group), float(h.delta))
    names = engine.names
    order = np.argsort(-sizes, kind="stable")[:N_CLUSTERS]
    rows = [(_label(int(k), names.group("cluster", int(k)) if names is not None else ""), int(sizes[k]),
             contrast.get(int(k), 0.0)) for k in order if sizes[k]]
    return rows, int((labels < 0).sum())


# -- Markdown -------------------------------------------------------------------------------------


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A GitHub table; cells are already Markdown (escaped where they hold outside text)."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _num(x, fmt: str = "+.2f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _rank(r) -> str:
    return "not ranked" if r is None else f"#{r}"


def _change(c) -> str:
    """A finding's before → after without the marks (core.views.HypothesisChange); numbers only."""
    return (f"pairs {c.n[0]:,} → {c.n[1]:,}, Δ {_num(c.delta[0])} → {_num(c.delta[1])}, d {_num(c.d[0])} → "
            f"{_num(c.d[1])}, q {_q(c.q[0])} → {_q(c.q[1])}, rank {_rank(c.rank[0])} → {_rank(c.rank[1])}")


def _md_hypothesis(f: Finding, t=markdown_text) -> list[str]:
    h = f.hypothesis
    out = [f"### {h.rank}. {t(h.sentence)}", ""]
    out += _md_table(
        ["kind", "pairs", "supporting", "Δ", "d", "t", "score", "p", "q"],
        [[h.kind, f"{h.n:,}", f"{h.n_support:,}", _num(h.delta), _num(h.d), _num(h.t), _num(h.score, ".3f"),
          _q(h.p), _q(h.q)]],
    )
    out.append(f"Concept {h.concept}" + (f" «{t(h.concept_name)}»" if h.concept_name else "")
               + f", SAE features {', '.join(str(x) for x in h.features[:12])}"
               + (" …" if len(h.features) > 12 else "") + ".")
    out.append("")
    if f.examples:
        out += _md_table(["chosen", "rejected"], [
            [_md_cell(e.chosen, e.chosen_pair), _md_cell(e.rejected, e.rejected_pair)] for e in f.examples])
    if f.change is not None:
        c = f.change
        out.append(f"**Without the marked pairs:** {_change(c)}.")
        out.append("")
    return out


def _md_cell(text: str, pair: int | None) -> str:
    return (f"#{pair}: " if pair is not None else "") + markdown_text(text) if text else ""


def to_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown; outside text escaped with `markdown_text`."""
    t = markdown_text
    out = [f"# {t(report.title)}", ""]
    out += _md_table(["", ""], [[k, t(v)] for k, v in report.facts])
    out += ["## Summary", ""]
    out += [f"- {t(line)}" if i else t(line) for i, line in enumerate(report.summary)]
    out.append("")
    if report.findings:
        out += ["## Established findings", ""]
        for f in report.findings:
            out += _md_hypothesis(f)
    if report.leads:
        out += ["## Leads (not established)", ""]
        for f in report.leads:
            out += _md_hypothesis(f)
    out += ["## Marks", ""]
    if report.marks:
        out += _md_table(["pair", "reason", "scope", "who", "when"], [
            [f"#{m.source_index}", t(m.reason) or "—", t(m.scope), t(m.who), t(m.when)] for m in report.marks])
        if report.n_marked > len(report.marks):
            out += [f"… and {report.n_marked - len(report.marks):,} more (datadebug marks lists them all).", ""]
    else:
        out += ["No pair is marked.", ""]
    out += ["## Intervention plan", ""]
    out += _md_plan(report.plan)
    for title, caption, path in report.plots:
        out += [f"## {t(title)}", "", f"![{t(title)}]({PLOTS}/{path.name})", "", t(caption), ""]
    return "\n".join(out)


def _plan_rows(plan) -> list[tuple[str, str]]:
    rows = [("kind", plan.kind), ("concept", plan.label or "—"), ("from", plan.source or "—"),
            ("strength", f"{plan.strength:g}"),
            ("features", ", ".join(str(f) for f in plan.features[:20]) + (" …" if len(plan.features) > 20 else "")),
            ("made", plan.created or "—")]
    if plan.text:
        rows.append(("system prompt", plan.text))
    return rows


def _md_plan(plan) -> list[str]:
    if plan is None:
        return ["No intervention plan is saved (datadebug plan saves one).", ""]
    return _md_table(["", ""], [[k, markdown_text(v)] for k, v in _plan_rows(plan)])


# -- HTML -----------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.5 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #d0d7de;padding:.3em .6em;
vertical-align:top;text-align:left}th{background:#f6f8fa}
.ex td{width:50%;font-size:13px}.num td{font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #d0d7de}h3{margin-top:1.6em}.muted{color:#59636e}
"""


def _h_table(head: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are already HTML (escaped where they hold outside text)."""
    top = "<tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}">{top}{body}</table>'


def _h_hypothesis(f: Finding) -> str:
    t = html_text
    h = f.hypothesis
    parts = [f"<h3>{h.rank}. {t(h.sentence)}</h3>", _h_table(
        ["kind", "pairs", "supporting", "Δ", "d", "t", "score", "p", "q"],
        [[t(h.kind), f"{h.n:,}", f"{h.n_support:,}", _num(h.delta), _num(h.d), _num(h.t), _num(h.score, ".3f"),
          _q(h.p), _q(h.q)]], "num")]
    parts.append(f"<p>Concept {h.concept}" + (f" «{t(h.concept_name)}»" if h.concept_name else "")
                 + f", SAE features {t(', '.join(str(x) for x in h.features[:12]))}"
                 + (" …" if len(h.features) > 12 else "") + ".</p>")
    if f.examples:
        parts.append(_h_table(["chosen", "rejected"], [
            [_h_cell(e.chosen, e.chosen_pair), _h_cell(e.rejected, e.rejected_pair)] for e in f.examples], "ex"))
    if f.change is not None:
        c = f.change
        parts.append(f"<p><b>Without the marked pairs:</b> {_change(c)}.</p>")
    return "\n".join(parts)


def _h_cell(text: str, pair: int | None) -> str:
    return (f'<span class="muted">#{pair}</span> ' if pair is not None else "") + html_text(text) if text else ""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(report: Report) -> str:
    """The report as one self-contained HTML page (plots inlined); outside text escaped with
    `html_text`."""
    t = html_text
    body = [f"<h1>{t(report.title)}</h1>", _h_table(None, [[t(k), t(v)] for k, v in report.facts]),
            "<h2>Summary</h2>", f"<p>{t(report.summary[0])}</p>"]
    if len(report.summary) > 1:
        body.append("<ul>" + "".join(f"<li>{t(line)}</li>" for line in report.summary[1:]) + "</ul>")
    if report.findings:
        body.append("<h2>Established findings</h2>")
        body += [_h_hypothesis(f) for f in report.findings]
    if report.leads:
        body.append("<h2>Leads (not established)</h2>")
        body += [_h_hypothesis(f) for f in report.leads]
    body.append("<h2>Marks</h2>")
    if report.marks:
        body.append(_h_table(["pair", "reason", "scope", "who", "when"], [
            [f"#{m.source_index}", t(m.reason) or "—", t(m.scope), t(m.who), t(m.when)] for m in report.marks]))
        if report.n_marked > len(report.marks):
            body.append(f"<p>… and {report.n_marked - len(report.marks):,} more.</p>")
    else:
        body.append("<p>No pair is marked.</p>")
    body.append("<h2>Intervention plan</h2>")
    body.append("<p>No intervention plan is saved.</p>" if report.plan is None else
                _h_table(None, [[t(k), t(v)] for k, v in _plan_rows(report.plan)]))
    for title, caption, path in report.plots:
        body += [f"<h2>{t(title)}</h2>", f'<img src="{_data_uri(path)}" alt="{t(title)}">', f"<p>{t(caption)}</p>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{t(report.title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
