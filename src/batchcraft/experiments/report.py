"""Turn experiment result records into ``summary.md`` and a self-contained ``index.html``.

Every number in the report comes from the result JSON files; nothing is written by hand.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchcraft.utils.bench import machine_description
from batchcraft.utils.io import write_text

__all__ = ["render_html", "render_markdown", "write_report"]


def _metrics_table(result: dict[str, Any]) -> str:
    rows = ["| quantity | measured | paper |", "|---|---|---|"]
    for m in result.get("metrics", []):
        rows.append(f"| {m['name']} | {m['formatted']} | {m.get('paper') or '—'} |")
    return "\n".join(rows) + "\n"


def _machine_line() -> str:
    m = machine_description()
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    return f"{m['cpu']} ({m['cores']} cores, {m['threads']} torch threads{gpu}), torch {m['torch']}"


def render_markdown(records: Sequence[dict[str, Any]]) -> str:
    """The report as Markdown (plots referenced by relative path)."""
    total = sum(float(r.get("seconds", 0.0)) for r in records)
    out = [
        "# batchcraft reproduction report",
        "",
        f"Machine: {_machine_line()}. Total time: {total / 60:.1f} min.",
        "",
        "| experiment | paper | verdict | time |",
        "|---|---|---|---|",
    ]
    for r in records:
        verdict = r["result"]["verdict"] if r.get("status") == "ok" else "failed"
        out.append(
            f"| [{r['name']}](#{r['name']}) | {r['paper']} | {verdict} | {r.get('seconds', 0):.0f} s |"
        )
    for r in records:
        out += [
            "",
            f"## {r['name']}",
            "",
            f"**Paper:** {r['paper']}  ",
            f"**Claim:** {r['claim']}  ",
        ]
        mode = "quick" if r.get("quick") else "full"
        out.append(f"**Setting:** {mode}, seeds {r.get('seeds')}, {r.get('seconds', 0):.1f} s  ")
        if r.get("command"):
            out.append(f"**Command:** `{r['command']}`  ")
        if r.get("status") != "ok":
            out += ["", f"**Failed:** {r.get('error', 'unknown error')}"]
            continue
        res = r["result"]
        out += ["", f"**Verdict: {res['verdict']}.** {res['summary']}", "", _metrics_table(res)]
        if res.get("setting"):
            out += [f"What ran: {res['setting']}", ""]
        if r.get("full_setting"):
            out += [f"Full setting (`--full`): {r['full_setting']}", ""]
        for t in res.get("tables", []):
            out += [t, ""]
        for p in res.get("plots", []):
            out += [f"![{p}]({r['name']}/{p})", ""]
    return "\n".join(out) + "\n"


def _md_inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return text


def _md_table_to_html(md: str) -> str:
    lines = [ln.strip() for ln in md.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<pre>{html.escape(md)}</pre>"
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head, body = cells[0], cells[2:]
    th = "".join(f"<th>{_md_inline(c)}</th>" for c in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{_md_inline(c)}</td>" for c in row) + "</tr>" for row in body
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
td:last-child{white-space:nowrap}th{background:#f3f3f3}code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
.v-reproduced{color:#0a7d27;font-weight:600}.v-partly{color:#a66a00;font-weight:600}
.v-not{color:#b3261e;font-weight:600}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
section{border-top:1px solid #ddd;margin-top:1.5em}
"""


def _verdict_class(v: str) -> str:
    return {"reproduced": "v-reproduced", "partly": "v-partly"}.get(v, "v-not")


def render_html(records: Sequence[dict[str, Any]], out: Path) -> str:
    """The report as one self-contained HTML page (plots embedded as base64 PNG)."""
    total = sum(float(r.get("seconds", 0.0)) for r in records)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>batchcraft reproduction report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>batchcraft reproduction report</h1>",
        f"<p>Machine: {html.escape(_machine_line())}. Total time: {total / 60:.1f} min.</p>",
        "<table><thead><tr><th>experiment</th><th>paper</th><th>verdict</th><th>time</th></tr></thead><tbody>",
    ]
    for r in records:
        v = r["result"]["verdict"] if r.get("status") == "ok" else "failed"
        parts.append(
            f"<tr><td><a href='#{r['name']}'>{html.escape(r['name'])}</a></td><td>{html.escape(r['paper'])}</td>"
            f"<td class='{_verdict_class(v)}'>{html.escape(v)}</td><td>{r.get('seconds', 0):.0f} s</td></tr>"
        )
    parts.append("</tbody></table>")
    for r in records:
        parts.append(f"<section id='{html.escape(r['name'])}'><h2>{html.escape(r['name'])}</h2>")
        parts.append(
            f"<p><b>Paper:</b> {html.escape(r['paper'])}<br><b>Claim:</b> {_md_inline(r['claim'])}<br>"
        )
        mode = "quick" if r.get("quick") else "full"
        parts.append(f"<b>Setting:</b> {mode}, seeds {r.get('seeds')}, {r.get('seconds', 0):.1f} s")
        if r.get("command"):
            parts.append(f"<br><b>Command:</b> <code>{html.escape(r['command'])}</code>")
        parts.append("</p>")
        if r.get("status") != "ok":
            parts.append(
                f"<p class='v-not'>Failed: {html.escape(str(r.get('error')))}</p></section>"
            )
            continue
        res = r["result"]
        parts.append(
            f"<p><span class='{_verdict_class(res['verdict'])}'>Verdict: {html.escape(res['verdict'])}.</span> "
            f"{_md_inline(res['summary'])}</p>"
        )
        parts.append(_md_table_to_html(_metrics_table(res)))
        if res.get("setting"):
            parts.append(f"<p>What ran: {_md_inline(res['setting'])}</p>")
        if r.get("full_setting"):
            parts.append(
                f"<p>Full setting (<code>--full</code>): {_md_inline(r['full_setting'])}</p>"
            )
        for t in res.get("tables", []):
            parts.append(_md_table_to_html(t))
        for p in res.get("plots", []):
            png = out / r["name"] / p
            if png.exists():
                b64 = base64.b64encode(png.read_bytes()).decode("ascii")
                parts.append(f"<img alt='{html.escape(p)}' src='data:image/png;base64,{b64}'>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: Path, records: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``out/summary.md`` and ``out/index.html``; returns both paths."""
    md = write_text(out / "summary.md", render_markdown(records))
    page = write_text(out / "index.html", render_html(records, out))
    return md, page
