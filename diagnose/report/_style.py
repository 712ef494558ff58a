"""The HTML report's style sheet (kept in Python so it ships without package data).

The page allows exactly this sheet through its Content-Security-Policy hash: no style
attributes, no other sheets. System fonts only.
"""

CSS = """
:root {
  --fg: #1d2330; --muted: #5c6475; --line: #d9dde5; --bg: #f5f6f8; --card: #ffffff;
  --error: #c62828; --warning: #d46b08; --info: #1f6fb2; --ok: #2e7d32;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "DejaVu Sans", Arial, sans-serif;
}
main { max-width: 1240px; margin: 0 auto; padding: 0 20px 40px; }
header.top { background: #1d2330; color: #fff; padding: 16px 20px; }
header.top .inner { max-width: 1240px; margin: 0 auto; display: flex; flex-wrap: wrap; gap: 8px 24px;
  align-items: baseline; }
header.top h1 { font-size: 20px; margin: 0; font-weight: 650; }
header.top .where { font-family: var(--mono); font-size: 13px; color: #c9d1e0; overflow-wrap: anywhere; }
header.top .verdict { margin-left: auto; font-weight: 600; }
h2 { font-size: 19px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 0 0 6px; }
code, pre, .mono { font-family: var(--mono); font-size: 13px; }
code { background: #eef0f4; padding: 0 3px; border-radius: 3px; overflow-wrap: anywhere; }
pre { background: #f0f2f6; border: 1px solid var(--line); border-radius: 4px; padding: 8px 10px;
  overflow-x: auto; white-space: pre-wrap; overflow-wrap: anywhere; margin: 6px 0; }
pre code { background: none; padding: 0; }
a { color: #1f5fa8; }
nav.toc { font-size: 14px; margin: 12px 0 0; display: flex; flex-wrap: wrap; gap: 4px 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 14px 16px;
  margin: 0 0 12px; }
table { border-collapse: collapse; }
table.facts { width: 100%; font-size: 14px; }
table.facts th { text-align: left; color: var(--muted); font-weight: 600; white-space: nowrap;
  padding: 3px 16px 3px 0; vertical-align: top; width: 1%; }
table.facts td { padding: 3px 12px 3px 0; vertical-align: top; overflow-wrap: anywhere; }
table.compare { width: 100%; font-size: 14px; margin-bottom: 8px; }
.card > h3 { margin-top: 14px; }
table.compare th, table.compare td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
  vertical-align: top; overflow-wrap: anywhere; }
table.compare thead th { background: #eef0f4; }
table.compare tbody th { color: var(--muted); font-weight: 600; white-space: nowrap; width: 1%; }
table.kv { font-size: 13px; margin: 4px 0; }
table.kv th { text-align: left; font-weight: 600; color: var(--muted); padding: 2px 14px 2px 0;
  vertical-align: top; white-space: nowrap; font-family: var(--mono); }
table.kv td { padding: 2px 0; font-family: var(--mono); overflow-wrap: anywhere; vertical-align: top; }
.evidence { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 1px 18px;
  font-family: var(--mono); font-size: 13px; margin: 4px 0; }
.evidence .ev { overflow-wrap: anywhere; padding: 1px 0; border-bottom: 1px dotted #e3e6ec; }
.evidence .ev.wide { grid-column: 1 / -1; }
.evidence .k { color: var(--muted); font-weight: 600; }
.badge { display: inline-block; border-radius: 3px; padding: 0 7px; font-size: 12px; font-weight: 700;
  letter-spacing: .03em; text-transform: uppercase; color: #fff; vertical-align: 2px; }
.badge.error, .status.crashed { background: var(--error); }
.badge.warning, .status.interrupted, .status.running { background: var(--warning); }
.badge.info { background: var(--info); }
.status { display: inline-block; border-radius: 3px; padding: 0 8px; color: #fff; font-weight: 700; }
.status.finished { background: var(--ok); }
.finding { border-left: 5px solid var(--info); }
.finding.error { border-left-color: var(--error); }
.finding.warning { border-left-color: var(--warning); }
.finding .head { display: flex; flex-wrap: wrap; gap: 6px 10px; align-items: baseline; }
.finding .num { font-weight: 800; font-size: 16px; }
.finding .title { font-weight: 650; font-size: 16px; flex: 1 1 420px; }
.finding .rule { font-family: var(--mono); font-size: 13px; color: var(--muted); }
.finding .meta { font-size: 13px; color: var(--muted); margin: 2px 0 6px; }
.finding h4 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
  margin: 10px 0 2px; }
.finding p { margin: 4px 0; }
.finding ul { margin: 4px 0; padding-left: 22px; }
.none { color: var(--ok); font-weight: 600; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 12px; }
.columns > div > h3 { margin: 0 0 8px; }
table.ranks thead th { white-space: nowrap; }
figure.plot { margin: 0 0 14px; background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 12px 14px; }
figure.plot:target { outline: 3px solid #ffb300; }
.finding:target { outline: 3px solid #ffb300; }
figure.plot img { display: block; width: 100%; height: auto; }
figure.plot figcaption { font-size: 14px; color: var(--muted); margin-top: 6px; }
figure.plot .missing { font-style: italic; color: var(--muted); margin: 4px 0; }
.shown { font-size: 13px; margin-top: 4px; }
details { margin: 6px 0; }
summary { cursor: pointer; color: var(--muted); font-weight: 600; }
ul.notes { font-size: 13px; font-family: var(--mono); color: var(--muted); }
footer { max-width: 1240px; margin: 0 auto; padding: 10px 20px 30px; font-size: 12px; color: var(--muted); }
@media print { figure.plot, .card { break-inside: avoid; } }
"""
