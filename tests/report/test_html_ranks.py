"""The HTML report's per-rank view (diagnose/report/ranks_section.py) on 2-rank synthetic
runs: the ranks side by side, the rank that stopped first, and the header's status."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diagnose.report import analyse
from diagnose.report.html import render_html
from diagnose.rundir.synthetic import write_synthetic_run
from tests.distributed.test_rank_ends import _end
from tests.report.test_html_browser import DevTools, browser, chromium  # noqa: F401 - fixtures


def _html(path: Path) -> str:
    return render_html([analyse(path)])


def _section(html: str) -> str:
    match = re.search(r'<section id="ranks">.*?</section>', html, re.S)
    assert match, "no ranks section"
    return match.group(0)


def test_two_finished_ranks_side_by_side(tmp_path: Path) -> None:
    root = write_synthetic_run(tmp_path / "run", steps=30, params=2, ranks=2, amp=True)
    html = _html(root)
    section = _section(html)
    rows = re.findall(r"<tr><th>(\d)</th>", section)
    assert rows == ["0", "1"]
    assert section.count(">finished<") == 2 and "stopped first" not in section
    assert '<img src="data:image/svg+xml;base64,' in section          # the side-by-side figure
    assert '<a href="#ranks">Ranks</a>' in html
    assert " style=" not in section                                     # the page's CSP allows no inline style


def test_crashed_rank_is_named_in_header_and_table(tmp_path: Path) -> None:
    root = write_synthetic_run(tmp_path / "run", steps=30, params=2, ranks=2)
    _end(root / "rank0", "interrupted", "SIGTERM", 6.0)
    _end(root / "rank1", "crashed", "ValueError: bad batch", 4.0)
    html = _html(root)
    assert '<span class="status crashed">crashed (rank 1)</span>' in html
    section = _section(html)
    assert "<strong>Rank 1 stopped first</strong>: crashed at step 29" in section
    assert "crashed (stopped first)" in section and "ValueError: bad batch" in section


def test_single_rank_has_no_ranks_section(tmp_path: Path) -> None:
    html = _html(write_synthetic_run(tmp_path / "run", steps=10, params=2))
    assert 'id="ranks"' not in html and "#ranks" not in html


@pytest.mark.browser
def test_ranks_view_in_a_browser(browser: DevTools, tmp_path: Path) -> None:  # noqa: F811
    root = write_synthetic_run(tmp_path / "run", steps=30, params=2, ranks=2, amp=True)
    _end(root / "rank1", "crashed", "ValueError: bad batch", 4.0)
    page = tmp_path / "report.html"
    page.write_text(_html(root), encoding="utf-8")
    browser.load(page)
    state = json.loads(browser.evaluate("""JSON.stringify({
      rows: document.querySelectorAll('#ranks tbody tr').length,
      image: (i => ({complete: i.complete, width: i.naturalWidth, shown: i.getBoundingClientRect().width}))(
        document.querySelector('#fig-ranks img')),
      text: document.querySelector('#ranks').innerText})"""))
    assert browser.problems() == []                    # no CSP violation, no request, no console output
    assert state["rows"] == 2 and "Rank 1 stopped first" in state["text"]
    assert state["image"]["complete"] and state["image"]["width"] > 0 and state["image"]["shown"] > 300
