"""The HTML report: structure, escaping of hostile run data, CSP, no external URLs, figures.

The page is parsed (html.parser), never searched for substrings only, so a check such as
"no <script> element" means what it says. Each embedded SVG is decoded and parsed as XML:
a well-formed SVG with our hostile strings as text proves matplotlib escaped them.
`test_html_browser.py` loads the same pages in headless Chromium.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from diagnose.cli import main
from diagnose.report import build_report
from diagnose.report.figures import binned
from diagnose.report.heatmap import MAX_COLUMNS, pooled
from diagnose.report.html import FIGURES, render_html, write_html_report
from diagnose.rules._base import Finding, Severity
from diagnose.rundir.reader import read_run
from diagnose.rundir.synthetic import write_synthetic_run

SCRIPT = "<script>alert(1)</script>"
ATTR = '"><img src=x onerror=alert(1)>'
JS_URL = "javascript:alert(1)"
# Payloads with an effect a browser test can look for (a global, the title) if they ever ran.
PWN_ATTR = '"><img src=x onerror="window.__pwned=1;document.title=\'pwned\'">'
PWN_SCRIPT = "<script>window.__pwned=2;document.title='pwned'</script>"
HOSTILE = (SCRIPT, ATTR, JS_URL, PWN_ATTR, PWN_SCRIPT)
FIGURE_IDS = [f"fig-{spec.key}" for spec in FIGURES]


# ---- run directories -----------------------------------------------------------------------
def _rewrite(path: Path, change) -> None:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    path.write_text("".join(json.dumps(change(r)) + "\n" for r in records), encoding="utf-8")


def hostile_run(root: Path, steps: int = 60) -> Path:
    """A crashed fp16 run (NaN loss from step 40) with markup or a `javascript:` URL in
    every free-text field: parameter names, config keys and values, the command and the
    script path, model and optimizer classes, the crash message, a metric name, a call."""
    loss = [2.0 * math.exp(-i / 20) + 0.3 for i in range(steps)]
    loss[40:] = [math.nan] * (steps - 40)
    run = write_synthetic_run(root, steps=steps, params=6, amp=True, loss=loss, status="crashed", steps_per_epoch=20)
    rank = run / "rank0"

    def meta(r: dict) -> dict:
        if r.get("type") == "start":
            r["command"] = ["python", f"/tmp/{SCRIPT}/train.py", f"--out={ATTR}", JS_URL]
            r["config"] = {SCRIPT: ATTR, "url": JS_URL, "nested": {"style": "</style><script>alert(2)</script>"},
                           "owner": PWN_ATTR}
            r["device"] = f"cuda {ATTR}"
        if r.get("type") == "objects":
            r["models"][0]["class"] = f"Net{SCRIPT}"
            r["optimizers"][0]["class"] = f"Adam{ATTR}"
        if r.get("type") == "status" and r.get("status") == "crashed":
            r["error"] = f"RuntimeError: {ATTR} </textarea>{SCRIPT} {PWN_SCRIPT}"
        return r

    names = {1: f"layers.0.{SCRIPT}", 2: ATTR, 3: JS_URL}

    def params(r: dict) -> dict:
        r["name"] = names.get(r["index"], r["name"])
        return r

    def events(r: dict) -> dict:
        if r.get("kind") == "metrics":
            r["metrics"] = {f"val_loss{ATTR}": r["metrics"]["val_loss"]}
        if r.get("kind") == "calls" and r.get("step") == 3:
            r["calls"] = [*r["calls"], f"evil{SCRIPT}"]
        return r

    oom = {"kind": "oom", "step": 40, "t_s": 1.0, "where": f"backward{PWN_ATTR}", "type": "OutOfMemoryError",
           "message": f"CUDA out of memory. Tried to allocate 2.00 GiB. {PWN_SCRIPT}", "requested_bytes": 2**31}
    exception = {"kind": "exception", "step": 40, "t_s": 1.0, "type": f"OutOfMemoryError{ATTR}",
                 "message": f"CUDA out of memory {PWN_SCRIPT}", "traceback": f"File \"/tmp/{SCRIPT}/train.py\""}

    _rewrite(rank / "meta.jsonl", meta)
    _rewrite(rank / "params.jsonl", params)
    _rewrite(rank / "events.jsonl", events)
    with open(rank / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(exception) + "\n" + json.dumps(oom) + "\n")
    return run


def hostile_findings() -> list[Finding]:
    """Hostile text in every field of a finding; an error, a warning, an info, a loop finding."""
    return [
        Finding(rule="gradient-spike", severity=Severity.WARNING, title=f"Spike in {ATTR}", steps=(10, 12),
                evidence={"layer": SCRIPT, ATTR: JS_URL, "values": [1.0, math.inf, math.nan]},
                explanation=f"Because `{SCRIPT}` and {ATTR}.", fix=f"Do this:\n\n    model.{SCRIPT}()\n\n- {JS_URL}"),
        Finding(rule="nonfinite-loss", severity=Severity.ERROR, title="Loss is nan from step 40", steps=(40, 59),
                evidence={"first_step": 40}, explanation="Bad.", fix="```python\nprint('<b>')\n```"),
        Finding(rule="clip-before-unscale", severity=Severity.ERROR, title="Clipped before unscale_", steps=(3, 3),
                evidence={"step": 3, "calls": ["clip_grad_norm_"]}, fix="Call scaler.unscale_(optimizer) first."),
        Finding(rule="some-future-rule", severity=Severity.INFO, title="A rule this report has no figure for"),
    ]


def render_hostile_cli(tmp_path: Path) -> Path:
    """The hostile run, from a run directory whose name is markup too, through `diagnose
    report --html` (every rule runs: findings quote parameter names, messages, ...)."""
    run = hostile_run(tmp_path / f"run-{PWN_ATTR}")
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(main, ["report", str(run), "--html", str(out)])
    assert result.exit_code in (0, 1), result.output
    return out


def render_hostile(tmp_path: Path) -> Path:
    run = read_run(hostile_run(tmp_path / "hostile"))
    return write_html_report([run], [hostile_findings()], tmp_path / "hostile.html",
                             notes_per_run=[[f"rule x skipped: {SCRIPT}"]])


# ---- parsing -------------------------------------------------------------------------------
@dataclass
class Page:
    """What html.parser saw: every start tag with its attributes, the text, the style."""

    tags: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    style: str = ""
    decls: list[str] = field(default_factory=list)

    def all(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.tags if tag == name]

    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs in self.tags if attrs.get("id")}

    @property
    def joined(self) -> str:
        return " ".join(self.text)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.page.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.page.style += data
        else:
            self.page.text.append(data)

    def handle_decl(self, decl):
        self.page.decls.append(decl)


def parse(html_text: str) -> Page:
    parser = _Parser()
    parser.feed(html_text)
    parser.close()
    return parser.page


def svgs(page: Page) -> list[str]:
    prefix = "data:image/svg+xml;base64,"
    return [base64.b64decode(attrs["src"][len(prefix):]).decode("utf-8") for attrs in page.all("img")]


def svg_text(svg: str) -> str:
    """All text of an SVG, parsed as XML (raises on a malformed one)."""
    root = ET.fromstring(svg)
    return " ".join("".join(el.itertext()) for el in root.iter() if el.tag.endswith("text"))


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[str, Page]:
    path = render_hostile(tmp_path_factory.mktemp("hostile"))
    text = path.read_text(encoding="utf-8")
    return text, parse(text)


# ---- structure and safety ------------------------------------------------------------------
def test_one_document_with_a_restrictive_csp(hostile) -> None:
    text, page = hostile
    assert page.decls == ["DOCTYPE html"]
    csp = [a for a in page.all("meta") if (a.get("http-equiv") or "").lower() == "content-security-policy"]
    assert len(csp) == 1
    policy = {d.split()[0]: d.split()[1:] for d in csp[0]["content"].split(";") if d.strip()}
    assert policy["default-src"] == ["'none'"]
    assert policy["img-src"] == ["data:"]
    assert "script-src" not in policy  # falls back to default-src 'none': no script at all
    digest = base64.b64encode(hashlib.sha256(page.style.encode("utf-8")).digest()).decode("ascii")
    assert policy["style-src"] == [f"'sha256-{digest}'"], "the CSP hash must match the inline sheet exactly"
    assert [tag for tag, _ in page.tags].index("meta") < [tag for tag, _ in page.tags].index("style")
    assert len(page.all("style")) == 1


def test_no_script_no_handlers_no_inline_styles(hostile) -> None:
    _, page = hostile
    forbidden = {"script", "iframe", "object", "embed", "link", "base", "form", "svg", "frame", "meta-refresh"}
    assert not [tag for tag, _ in page.tags if tag in forbidden]
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name != "style", f"<{tag} style=...> is blocked by the CSP"
            assert "javascript:" not in (value or "").lower(), (tag, name, value)


def test_no_external_urls(hostile) -> None:
    text, page = hostile
    for tag, attrs in page.tags:
        if "href" in attrs:
            assert attrs["href"].startswith("#"), (tag, attrs["href"])
            assert attrs["href"][1:] in page.ids(), f"dangling link {attrs['href']}"
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/svg+xml;base64,"), (tag, attrs["src"][:40])
    assert not re.search(r"(?i)\b(src|href|action|srcset|poster)\s*=\s*[\"']?\s*(https?:)?//", text)
    assert "http://" not in text and "https://" not in text


def test_hostile_strings_are_text_not_markup(hostile) -> None:
    text, page = hostile
    assert "<script" not in text.lower()
    assert "<img src=x" not in text.lower()
    assert len(page.all("img")) == len([s for s in svgs(page)])  # only the figures are images
    for hostile_string in HOSTILE:
        assert hostile_string in page.joined, f"{hostile_string!r} should be shown, as text"
    assert f"/tmp/{SCRIPT}/train.py" in page.joined  # the command, with its script path
    assert f"RuntimeError: {ATTR} </textarea>{SCRIPT}" in page.joined  # the crash message
    assert "</style><script>alert(2)</script>" in page.joined  # a config value
    assert f"rule x skipped: {SCRIPT}" in page.joined  # a note


def test_svg_figures_are_well_formed_and_escape_their_text(hostile) -> None:
    _, page = hostile
    texts = []
    for svg in svgs(page):
        root = ET.fromstring(svg)  # well-formed: every hostile string was escaped
        for el in root.iter():
            assert not el.tag.endswith(("script", "foreignObject")), el.tag
            for name, value in el.attrib.items():
                assert not name.lower().startswith("on"), name
                if name.endswith("href"):
                    assert value.startswith(("#", "data:image/png;base64,")), value
        texts.append(svg_text(svg))
    everything = " ".join(texts)
    assert f"val_loss{ATTR}" in everything  # the metric name in the loss legend
    assert f"layers.0.{SCRIPT}" in everything and JS_URL in everything  # heatmap row labels
    assert f"Net{SCRIPT}" in everything  # the model's class in the timeline


def test_the_cli_report_with_every_rule_is_as_safe(tmp_path: Path) -> None:
    text = render_hostile_cli(tmp_path).read_text(encoding="utf-8")
    page = parse(text)
    test_one_document_with_a_restrictive_csp((text, page))
    test_no_script_no_handlers_no_inline_styles((text, page))
    test_no_external_urls((text, page))
    assert "<script" not in text.lower() and "<img src=x" not in text.lower()
    shown = page.joined
    assert f"run-{PWN_ATTR}" in shown  # the run directory's name
    assert "Out of memory at step 40" in shown and PWN_ATTR in shown  # a rule's finding quoting the data
    assert PWN_SCRIPT in shown and ATTR in shown and JS_URL in shown


# ---- content -------------------------------------------------------------------------------
def test_header_tells_what_ran(hostile) -> None:
    _, page = hostile
    text = page.joined
    for expected in ("Status", "crashed", "Command", "Versions", "Python 3.11.7", "torch 2.13.0", "CUDA none",
                     "Device", "Duration", "Steps", "60", "Samples/s", "Config"):
        assert expected in text, expected


def test_findings_first_most_severe_first_with_links(hostile) -> None:
    _, page = hostile
    order = [t for t, _ in page.tags]
    cards = [a for t, a in page.tags if t == "article"]
    assert order.index("article") < [i for i, (t, a) in enumerate(page.tags) if a.get("id") == "fig-loss"][0]
    classes = [a["class"].split()[-1] for a in cards]
    assert classes == ["error", "error", "warning", "info"]
    assert [a["id"] for a in cards] == ["finding-1", "finding-2", "finding-3", "finding-4"]
    links = [a["href"] for _, a in page.tags if a.get("href", "").startswith("#fig-")]
    assert {"#fig-calls", "#fig-loss", "#fig-grad-norm"} <= set(links)
    back = [a["href"] for _, a in page.tags if a.get("href", "").startswith("#finding-")]
    assert {"#finding-1", "#finding-2", "#finding-3"} <= set(back)  # figures point back at their findings
    assert "Fix" in page.joined and "Evidence" in page.joined and "Why it matters" in page.joined


def test_every_figure_is_drawn_or_says_why(hostile) -> None:
    text, page = hostile
    assert [i for i in FIGURE_IDS if i in page.ids()] == FIGURE_IDS
    for fig_id in FIGURE_IDS:
        section = text[text.index(f'id="{fig_id}"'):]
        section = section[:section.index("</figure>")]
        assert ("<img " in section) != ('class="missing"' in section), fig_id
    assert len(page.all("img")) == len(FIGURE_IDS)  # everything was recorded (memory: RSS only)
    assert "No gradient norm" not in page.joined


def test_marks_and_blamed_calls_are_drawn(hostile) -> None:
    _, page = hostile
    images = dict(zip([a["id"] for t, a in page.tags if t == "figure"], svgs(page)))
    assert "#2" in svg_text(images["fig-loss"])  # the NaN-loss finding's band label
    assert "#3" in svg_text(images["fig-grad-norm"])
    assert "#1" in svg_text(images["fig-calls"])  # clip-before-unscale blames clip_grad_norm_


def test_missing_data_is_one_line_each(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "plain", steps=30, params=2, amp=False)
    for name in ("grad_norms.arrow",):
        (run_dir / "rank0" / name).unlink()
    events = run_dir / "rank0" / "events.jsonl"
    events.write_text("".join(line + "\n" for line in events.read_text().splitlines() if '"calls"' not in line))
    page = parse(write_html_report([read_run(run_dir)], [[]], tmp_path / "r.html").read_text())
    missing = [t for t in page.text if t.startswith("No ")]
    assert any("GradScaler" in m for m in missing)
    assert any("per-parameter gradient norms" in m for m in missing)
    assert any("call-order events" in m for m in missing)
    assert "No findings" in page.joined


def test_a_run_with_nothing_but_metadata_still_renders(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "empty", steps=5, params=2)
    for name in ("steps.jsonl", "events.jsonl", "grad_norms.arrow", "param_norms.arrow", "params.jsonl"):
        (run_dir / "rank0" / name).unlink()
    page = parse(write_html_report([read_run(run_dir)], [[]], tmp_path / "r.html").read_text())
    assert not page.all("img")
    assert [i for i in FIGURE_IDS if i in page.ids()] == FIGURE_IDS


def test_comparison_overlays_runs_and_sets_findings_side_by_side(tmp_path: Path) -> None:
    fast = write_synthetic_run(tmp_path / "fast", steps=40, params=2)
    slow = write_synthetic_run(tmp_path / "slow", steps=50, params=2, amp=True)
    _rewrite(fast / "rank0" / "steps.jsonl", lambda r: {**r, "step_time_s": 0.05})
    _rewrite(slow / "rank0" / "steps.jsonl", lambda r: {**r, "step_time_s": 0.10})
    runs = [read_run(fast), read_run(slow)]
    findings = [[], [Finding(rule="throughput-drop", severity=Severity.WARNING, title="Slower", steps=(5, 9))]]
    page = parse(write_html_report(runs, findings, tmp_path / "cmp.html").read_text())
    text = page.joined
    assert "comparison of 2 runs" in text
    assert "Step time vs A" in text and "2× (2× slower)" in text and "1× (the same)" in text
    assert "B#1" in text and "No findings" in text
    assert {"fig-grad-heatmap", "fig-calls"} <= page.ids()
    images = dict(zip([a["id"] for t, a in page.tags if t == "figure"], svgs(page)))
    loss_text = svg_text(images["fig-loss"])
    assert "A: train loss" in loss_text and "B: train loss" in loss_text
    assert len(page.all("img")) == len(FIGURE_IDS) + 2  # heatmap and timeline once per run


def test_write_is_atomic_and_returns_the_path(tmp_path: Path) -> None:
    run = read_run(write_synthetic_run(tmp_path / "run", steps=10, params=2))
    target = tmp_path / "out.html"
    assert write_html_report([run], [[]], target) == target
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError):
        write_html_report([run], [], target)


def test_html_is_deterministic_apart_from_the_footer(tmp_path: Path) -> None:
    run = read_run(write_synthetic_run(tmp_path / "run", steps=30, params=3))
    report = build_report(run, [], [])
    first, second = (re.sub(r"<footer>.*</footer>", "", render_html([report])) for _ in range(2))
    assert first == second


def test_timeline_blames_the_offending_call_not_every_call_of_its_kind(tmp_path: Path) -> None:
    from diagnose.report.timeline import blamed

    run_dir = write_synthetic_run(tmp_path / "run", steps=1, params=2)
    tokens = ["opt0.zero_grad", "model0.forward[TGB]", "backward", "opt0.zero_grad", "opt0.step", "sched0.step",
              "model0.eval", "model0.forward[EG]", "model0.forward[ENI]"]
    (run_dir / "rank0" / "events.jsonl").write_text(json.dumps({"kind": "calls", "step": 0, "calls": tokens}) + "\n")
    rows = read_run(run_dir).first.calls
    evidence = {"clearing_call": "opt0.zero_grad"}
    assert blamed("zero-grad-before-step", rows, evidence).nonzero()[0].tolist() == [3]
    assert blamed("eval-with-grad", rows, {}).nonzero()[0].tolist() == [7]
    assert blamed("some-future-loop-rule", rows, {"early_call": "sched0.step"}).nonzero()[0].tolist() == [5]
    assert not blamed("scheduler-before-optimizer", rows, {}).any()  # stepped after the optimizer here


# ---- the command line ----------------------------------------------------------------------
def test_cli_html_default_goes_into_the_run_directory(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=20, params=2)
    result = CliRunner().invoke(main, ["report", str(run_dir), "--html"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file()
    assert str(run_dir / "report.html") in result.output  # the path is printed (stderr is mixed in)


def test_cli_html_comparison_needs_a_file(tmp_path: Path) -> None:
    a = write_synthetic_run(tmp_path / "a", steps=20, params=2)
    b = write_synthetic_run(tmp_path / "b", steps=20, params=2)
    result = CliRunner().invoke(main, ["report", str(a), str(b), "--html"])
    assert result.exit_code == 2 and "needs a FILE" in result.output
    out = tmp_path / "cmp.html"
    result = CliRunner().invoke(main, ["report", str(a), str(b), "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert "comparison of 2 runs" in parse(out.read_text()).joined


def test_cli_format_html_writes_report_html(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=20, params=2)
    result = CliRunner().invoke(main, ["report", str(run_dir), "--format", "html"])
    assert result.exit_code == 0, result.output
    assert parse((run_dir / "report.html").read_text()).all("img")


# ---- long runs -----------------------------------------------------------------------------
def test_long_series_are_summarised_not_drawn_point_by_point() -> None:
    x = np.arange(100_000)
    y = np.ones(100_000)
    y[54_321] = 1e6  # one spike survives the summary
    data = binned(x, y)
    assert len(data.x) <= 1000 and data.hi.max() == 1e6
    norms = np.ones((100_000, 4), dtype=np.float32)
    norms[77_777, 2] = 123.0
    flags = np.zeros_like(norms, dtype=bool)
    flags[99_999, 0] = True
    starts, values, pooled_flags = pooled(norms, flags)
    assert values.shape == (MAX_COLUMNS, 4) and values[:, 2].max() == 123.0 and pooled_flags[-1, 0]


def test_big_run_page_stays_small(tmp_path: Path) -> None:
    """A long run is summarised before drawing, so the page stays far under 10 MB.

    Its speed is measured by bench/report_speed.py (docs/benchmarks.md), not here."""
    run_dir = write_synthetic_run(tmp_path / "big", steps=30_000, params=200, amp=True, steps_per_epoch=5000)
    path = write_html_report([read_run(run_dir)], [[]], tmp_path / "big.html")
    assert path.stat().st_size < 10 * 2**20


# ---- a real recorded run -------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory) -> Path:
    """A real CPU training loop (fp16 GradScaler, eval each epoch) under the recorder."""
    from tests.harness.scenarios import record

    return record("fp16_scaler_growth", tmp_path_factory.mktemp("real") / "run")


def test_real_run_draws_every_figure(recorded_run: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(recorded_run), "--html"])
    assert result.exit_code == 0, result.output
    page = parse((recorded_run / "report.html").read_text(encoding="utf-8"))
    assert [i for i in FIGURE_IDS if i in page.ids()] == FIGURE_IDS
    assert len(page.all("img")) == len(FIGURE_IDS), [t for t in page.text if t.startswith("No ")]
    calls = svg_text(dict(zip([a["id"] for t, a in page.tags if t == "figure"], svgs(page)))["fig-calls"])
    for call in ("zero_grad", "backward", "scale", "update", "GradScaler", "Training step"):
        assert call in calls, call
