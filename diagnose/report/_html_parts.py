"""Pieces of the HTML report built from run data: text, evidence, findings, run facts.

Every string that comes from a run (names, config values, paths, exception texts, rule
output) goes through `esc` (html.escape, quotes included) before it touches the page;
nothing here builds markup by formatting unescaped data. Attribute values are either
escaped or made by this code (`finding-3`, `fig-loss`).
"""
from __future__ import annotations

import html
import json
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diagnose.rules._base import Finding

MAX_VALUE_CHARS = 400
"""A longer evidence or config value is cut, with a note."""


def esc(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value), quote=True)


def number(value: Any) -> str:
    """Numbers for people: 4 significant digits, thousands separators for big integers."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "null"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def _compact(value: Any, depth: int = 0) -> str:
    """Nested evidence as short JSON-like text: numbers to 4 significant digits, strings
    bare at the top level and quoted inside containers."""
    if isinstance(value, str):
        return value if depth == 0 else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (bool, int, float)) or value is None:
        return number(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        flat = all(isinstance(v, (int, float, str, bool)) or v is None for v in value)
        return "[" + ", ".join(v if flat and isinstance(v, str) else _compact(v, depth + 1) for v in value) + "]"
    return str(value)


def value_text(value: Any) -> str:
    """An evidence/config value as one line of plain text (escape it before use)."""
    text = _compact(value)
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + f"… ({len(text) - MAX_VALUE_CHARS} more characters)"
    return text


_INLINE_CODE = re.compile(r"`([^`\n]+)`")


def inline(text: str) -> str:
    """Escaped text with `backticks` as <code> (escaping first, so code cannot inject)."""
    return _INLINE_CODE.sub(r"<code>\1</code>", esc(text))


def prose(text: str) -> str:
    """A rule's explanation or fix as HTML: paragraphs, `- ` lists, and code blocks
    (``` fences, or lines indented by 4 spaces or more)."""
    out: list[str] = []
    lines = text.strip("\n").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre><code>" + esc("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
        elif line.startswith("    ") and line.strip():
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            block = "\n".join(lines[i:j]).rstrip()
            indent = min(len(x) - len(x.lstrip()) for x in block.splitlines() if x.strip())
            out.append("<pre><code>" + esc("\n".join(x[indent:] for x in block.splitlines())) + "</code></pre>")
            i = j
        elif line.lstrip().startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith(("- ", "* ")):
                item = lines[i].lstrip()[2:]
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and not lines[i].lstrip().startswith(("- ", "* ")) \
                        and not lines[i].startswith("    "):
                    item += " " + lines[i].strip()
                    i += 1
                items.append(f"<li>{inline(item)}</li>")
            out.append("<ul>" + "".join(items) + "</ul>")
        elif not line.strip():
            i += 1
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].startswith("    ") \
                    and not lines[j].lstrip().startswith(("- ", "* ", "```")):
                j += 1
            out.append("<p>" + inline(" ".join(x.strip() for x in lines[i:j])) + "</p>")
            i = j
    return "".join(out)


def evidence_grid(items: dict[str, Any]) -> str:
    """Evidence as a grid of `key value` cells, several per row; long values get a row."""
    cells = []
    for key, value in items.items():
        text = value_text(value)
        wide = " wide" if len(text) + len(str(key)) > 44 else ""
        cells.append(f'<div class="ev{wide}"><span class="k">{esc(key)}</span> <span class="v">{esc(text)}</span></div>')
    return f'<div class="evidence">{"".join(cells)}</div>'


def kv_table(items: dict[str, Any], css: str = "kv") -> str:
    """A two-column table of escaped keys and values."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(value_text(v))}</td></tr>" for k, v in items.items())
    return f'<table class="{css}">{rows}</table>'


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as dotted keys (`optim.lr`); other values as they are."""
    if not isinstance(config, dict):
        return {prefix or "value": config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def command_text(command: Sequence[str] | None) -> str:
    """The command line as a shell would show it."""
    if not command:
        return "?"
    return shlex.join(str(c) for c in command)


# ---- findings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Numbered:
    """A finding with its label (`#2`, or `B#2` in a comparison), anchor and figure."""

    label: str
    anchor: str
    finding: Finding
    figure: str | None
    """Key of the figure that shows it (`loss`, ...), None when no figure does."""
    figure_anchor: str | None = None


def steps_text(finding: Finding) -> str:
    if finding.steps is None:
        return "not tied to steps"
    first, last = finding.steps
    return f"step {first:,}" if first == last else f"steps {first:,}–{last:,} ({last - first + 1:,} steps)"


def finding_card(item: Numbered, figure_titles: dict[str, str], show_rank: bool = False) -> str:
    """One finding: severity, title, rule, steps, evidence, explanation, fix, figure link.
    `show_rank`: name the rank (a distributed run)."""
    f = item.finding
    severity = f.severity.label
    meta = [f'<span class="rule">{esc(f.rule)}</span>', esc(steps_text(f))]
    if f.rank is not None and show_rank:
        meta.append(f"rank {esc(f.rank)}")
    elif isinstance(f.evidence.get("ranks"), list):
        meta.append("ranks " + esc(", ".join(str(r) for r in f.evidence["ranks"])))
    link = ""
    if item.figure_anchor:
        where = ("the calls it blames are outlined there" if item.figure == "calls"
                 else "its steps are shaded there" if f.steps else "")
        link = (f'<p class="shown">Shown in <a href="#{esc(item.figure_anchor)}">'
                f'{esc(figure_titles.get(item.figure or "", "its figure"))}</a>'
                + (f" ({esc(where)})" if where else "") + "</p>")
    parts = [
        f'<article class="card finding {esc(severity)}" id="{esc(item.anchor)}">',
        '<div class="head">',
        f'<span class="num">{esc(item.label)}</span>',
        f'<span class="badge {esc(severity)}">{esc(severity)}</span>',
        f'<span class="title">{esc(f.title)}</span>',
        "</div>",
        f'<div class="meta">{" · ".join(meta)}</div>',
    ]
    if f.evidence:
        parts.append("<h4>Evidence</h4>" + evidence_grid(f.evidence))
    if f.explanation:
        parts.append("<h4>Why it matters</h4>" + prose(f.explanation))
    if f.fix:
        parts.append("<h4>Fix</h4>" + prose(f.fix))
    parts.append(link + "</article>")
    return "".join(parts)
