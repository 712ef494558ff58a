"""The profile section in the terminal, JSON and HTML reports (offline, escaped, and
looked at in a real browser)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from diagnose.cli import main
from diagnose.report.html import csp
from tests.profiling import _runs
from tests.report.test_html import ATTR, SCRIPT, parse
from tests.report.test_html_browser import DevTools, browser, chromium  # noqa: F401 - fixtures


def test_terminal_section(profiled_run: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(profiled_run)])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Profile (steps 3-5; torch-tb-profiler" in text
    line = next(line for line in text.splitlines() if "mean step" in line)
    assert "CPU exec" in line and "%" in line
    assert "top operators (host self time, 3 steps): " in text and "aten::addmm" in text
    assert f"tensorboard --logdir {profiled_run}" in text and "ui.perfetto.dev" in text
    assert text.index("Profile (") < text.index("No problems found.")


def test_json_section(profiled_run: Path) -> None:
    document = json.loads(CliRunner().invoke(main, ["report", str(profiled_run), "--format", "json"]).stdout)
    profile = document["profile"]["0"]
    assert profile["status"] == "ok" and [s["step"] for s in profile["steps"]] == _runs.TRACED
    assert sum(profile["mean_share"].values()) == pytest.approx(1.0, abs=0.01)
    assert profile["gpus"] == [] and profile["top_operators"][0]["calls"] > 0
    assert profile["trace_files"][0].startswith("rank0/profile/rank0.")


def _html(run: Path, out: Path) -> str:
    result = CliRunner().invoke(main, ["report", str(run), "--format", "html", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out.read_text(encoding="utf-8")


def test_html_section_is_offline_and_links_from_the_contents(profiled_run: Path, tmp_path: Path) -> None:
    html = _html(profiled_run, tmp_path / "r.html")
    page = parse(html)
    assert '<section id="profile">' in html and '<a href="#profile">Profile</a>' in html
    section = html[html.index('<section id="profile">'):html.index('<section id="notes">')]
    assert "mean step" in section and "aten::addmm" in section and "Open the trace" in section
    assert [t for t, _ in page.tags].count("script") == 0
    images = [a["src"] for t, a in page.tags if t == "img"]
    assert images and all(src.startswith("data:image/svg+xml;base64,") for src in images)
    assert f'content="{csp()}"'.replace("'", "&#x27;") in html


def test_html_escapes_names_from_the_trace(profiled_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(profiled_run, run)
    trace_file = _runs.trace_of(run)
    trace = _runs.read_trace(trace_file)
    for event in trace["traceEvents"]:
        if event.get("name") == "aten::addmm":
            event["name"] = f"aten::{SCRIPT}{ATTR}"
    _runs.write_trace(trace_file, trace)
    html = _html(run, tmp_path / "r.html")
    page = parse(html)
    assert [t for t, _ in page.tags].count("script") == 0
    assert not any(t == "img" and a.get("src") == "x" for t, a in page.tags)
    assert any(f"aten::{SCRIPT}{ATTR}" in text for text in page.text)  # shown as text


@pytest.mark.browser
def test_profile_section_in_a_browser(browser: DevTools, profiled_run: Path, tmp_path: Path) -> None:  # noqa: F811
    page = tmp_path / "r.html"
    _html(profiled_run, page)
    browser.load(page)
    state = json.loads(browser.evaluate("""JSON.stringify({
      text: document.querySelector('#profile').innerText,
      images: Array.from(document.querySelectorAll('#profile img')).map(i => ({ok: i.complete && i.naturalWidth > 0,
                                                                              shown: i.getBoundingClientRect().width})),
      rows: document.querySelectorAll('#profile tbody tr').length})"""))
    assert browser.problems() == []
    assert "mean step" in state["text"] and "aten::addmm" in state["text"]
    assert state["images"] and all(i["ok"] and i["shown"] > 300 for i in state["images"])
    assert state["rows"] >= 3


def test_kernel_names_are_shortened_for_people() -> None:
    from diagnose.report.profile_section import short_kernel_name

    assert short_kernel_name("void at::native::reduce_kernel<128, 4, Op<c10::Half>>(Op<c10::Half>)") == \
        "at::native::reduce_kernel<…>"
    assert short_kernel_name("nvjet_sm90_hsh_64x64_64x13_4x2_h_bz_NNT") == "nvjet_sm90_hsh_64x64_64x13_4x2_h_bz_NNT"
    assert short_kernel_name("void gemm(int, float)") == "gemm(…)"
    assert short_kernel_name("k" * 200, limit=20) == "k" * 19 + "…"
