"""`datadebug report` (core.report): a real workspace whose records and mark reasons carry markup,
written as Markdown, HTML and plots; its files exist, its links and images resolve, and no dataset
text becomes markup in either format."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HOSTILE = ('<script>alert(1)</script> [click](http://evil.example/x) ![pic](http://evil.example/p.png) '
           '<img src=x onerror=alert(2)> https://evil.example/bare | cell *bold* `code` $x^2$ &amp;')
PNG = b"\x89PNG\r\n\x1a\n"


# Short enough that the replies it opens are still read (and rank hypotheses) after it.
IN_REPLY = '<script>alert(1)</script> [click](http://evil.example/x) ![pic](http://evil.example/p.png) |'


@pytest.fixture(scope="module")
def hostile_ws(tmp_path_factory, tiny_sae, hh_small) -> Path:
    """24 real HH pairs as standard records whose chosen and rejected replies all open with markup
    (the same on both sides, so the real replies still drive the hypotheses, and every excerpt of a
    driving pair holds it); the file's name holds markup too."""
    from core.index.build import IndexSettings, index_dataset
    from core.data.ingest import read_pairs

    folder = tmp_path_factory.mktemp("hostile")
    data = folder / f"data{HOSTILE[:8]}.jsonl"
    with data.open("w") as f:
        for p in read_pairs(hh_small).pairs:
            record = {"prompt": p.prompt_text, "chosen": f"{IN_REPLY} {p.chosen}", "rejected": f"{IN_REPLY} {p.rejected}"}
            f.write(json.dumps(record) + "\n")
    ws = folder / "ws"
    index_dataset(data, ws, sae=tiny_sae, settings=IndexSettings(max_tokens=96, chunk_pairs=8))
    return ws


@pytest.fixture(scope="module")
def written(hostile_ws, tmp_path_factory):
    """The report of `hostile_ws` with two pairs marked (hostile reason), a plan and a validation
    report: (ReportFiles, session)."""
    from core.session import Session
    from core.views import Selection

    session = Session(hostile_ws)
    session.mark(Selection((0, 2), "pair"), reason=HOSTILE)
    session.save_plan("steer", [1, 2, 3], label=HOSTILE, source="concept 0")
    validation = tmp_path_factory.mktemp("val") / "validation.json"
    points = [{"id": i, "predicted": 0.1 * i, "actual": 0.08 * i - 0.01, "actual_se": 0.01} for i in range(6)]
    validation.write_text(json.dumps({"trained": "run", "concepts": {
        "points": points, "fit": {"slope": 0.8, "intercept": -0.01, "r2": 0.97, "spearman": 1.0}}}))
    out = tmp_path_factory.mktemp("report") / "out"
    return session.write_report(out, validation=validation), session


@pytest.mark.slow(10)  # 10 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_the_files_exist_and_every_link_and_image_resolves(written):
    files, _ = written
    md = files.markdown.read_text()
    assert files.markdown.name == "report.md" and files.html.name == "report.html"
    assert {p.name for p in files.plots} == {"concepts.png", "clusters.png", "validation.png"}
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", md)
    assert sorted(targets) == sorted(f"plots/{p.name}" for p in files.plots)
    for target in targets:
        assert (files.markdown.parent / target).read_bytes().startswith(PNG)
    html = files.html.read_text()
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) == 3
    for src in sources:  # self-contained: every image inline, each a PNG
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert not re.search(r'(?:href|src)="(?!data:)', html)  # nothing fetched from anywhere


def test_the_report_says_what_was_found_marked_and_planned(written):
    from markdown_it import MarkdownIt

    files, session = written
    md = files.markdown.read_text()
    page = MarkdownIt("gfm-like").render(md)  # what GitHub shows
    ranked = session.hypotheses(top=200, excluded=frozenset())
    assert f"{ranked.n_tested:,} tested, {ranked.n_established:,} established" in page
    heading = "## Established findings" if ranked.n_established else "## Leads (not established)"
    assert heading in md
    assert md.count("| chosen | rejected |") >= 1  # exemplars side by side
    assert "<strong>Without the marked pairs:</strong> pairs" in page and "→" in page
    assert "<td>#0</td>" in page and "<td>#2</td>" in page  # the marks, with their reasons
    assert "<td>kind</td>\n<td>steer</td>" in page  # the plan
    assert page.count("<table>") >= 4 and "<h2>Summary</h2>" in page


def test_hostile_text_is_text_in_both_formats(written):
    from markdown_it import MarkdownIt

    from core.data.textsafe import html_text

    files, _ = written
    render = MarkdownIt("gfm-like").render  # GitHub flavour, bare URLs made links
    # the check could fail: unescaped, this text is markup (a line that opens with <script> is passed
    # through as raw HTML; the links and images of the rest become links and images)
    assert render(HOSTILE).startswith("<script>alert(1)</script>")
    raw = render(HOSTILE.split("</script> ", 1)[1])
    assert '<a href="http://evil.example/x"' in raw and '<img src="http://evil.example/p.png"' in raw
    assert '<a href="https://evil.example/bare"' in raw
    page = render(files.markdown.read_text())
    assert "<script" not in page and "evil.example" in page
    assert not re.search(r'<a href="[^"]*evil', page)
    assert re.findall(r'<img src="([^"]*)"', page) == [f"plots/{p.name}" for p in files.plots]
    assert "&lt;script&gt;alert(1)&lt;/script&gt; [click](http://evil.example/x)" in page  # shown as written
    html = files.html.read_text()
    assert "<script" not in html and "<img src=x" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3 + 2  # mark reasons, plan, the replies
    assert html.count(html_text(IN_REPLY)) >= 2 and page.count("&lt;script&gt;alert(1)&lt;/script&gt; [click]") >= 5
    assert "evil.example" in html and not re.search(r'(?:href|src)="[^"]*evil', html)


def test_cli_report_writes_the_same_files(hostile_ws, tmp_path):
    out = tmp_path / "cli-report"
    done = subprocess.run([sys.executable, "-m", "core.cli", "report", "-w", str(hostile_ws), "-o", str(out),
                           "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)
    assert Path(files["markdown"]).is_file() and Path(files["html"]).is_file()
    assert sorted(Path(p).name for p in files["plots"]) == ["clusters.png", "concepts.png"]
    bad = subprocess.run([sys.executable, "-m", "core.cli", "report", "-w", str(hostile_ws), "-o",
                          str(Path(files["markdown"]))], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("the report is written into a folder")
