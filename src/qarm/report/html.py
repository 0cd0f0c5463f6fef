"""HTML building blocks of the report: every piece of text goes through :func:`esc`.

The page is one self-contained file: inline CSS, plots as ``data:image/png;base64`` images, and a
tiny inline script that only records, on load, how many images failed to decode (a marker a
headless browser can read back).
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable, Sequence

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #1d2330;
       background: #f5f6f8; line-height: 1.45; }
header { background: #1f3b57; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 26px; }
header p { margin: 0; opacity: .85; }
nav { background: #fff; border-bottom: 1px solid #d8dce3; padding: 8px 32px; position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 18px; color: #1f3b57; text-decoration: none; font-weight: 600; font-size: 14px; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 24px 40px 24px; }
section { background: #fff; border: 1px solid #d8dce3; border-radius: 6px; padding: 6px 22px 18px 22px; margin-top: 18px; }
h2 { color: #1f3b57; border-bottom: 2px solid #e3e7ee; padding-bottom: 4px; }
h3 { color: #33475b; margin-bottom: 6px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 12px 0; font-size: 14px; }
th, td { border: 1px solid #d8dce3; padding: 4px 10px; text-align: left; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { background: #eaf6ea; }
figure { margin: 10px 0 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eceff3; }
figcaption { font-size: 13px; color: #5a6473; margin-top: 2px; }
.note { background: #fff8e1; border-left: 4px solid #f0b429; padding: 8px 12px; margin: 10px 0; }
.error { background: #fdecea; border-left: 4px solid #d93025; padding: 8px 12px; margin: 10px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0; }
.card { background: #f3f6fa; border: 1px solid #dde3ea; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card .v { font-size: 20px; font-weight: 700; color: #1f3b57; }
.card .k { font-size: 12px; color: #5a6473; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #1f3b57; }
pre { background: #f3f6fa; padding: 10px; overflow-x: auto; font-size: 12px; }
code { background: #eef1f5; padding: 0 3px; border-radius: 3px; }
"""

# Counts images that failed to decode once the page has loaded; a headless browser reads the marker.
CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (im) { return !im.complete || im.naturalWidth === 0; }).length;
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(broken));
});
"""


def esc(value: Any) -> str:
    """Any value as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table: ints with thousands separators, floats to ``digits`` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return str(value)


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "–"
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None and not math.isnan(std) else f"{mean:.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None,
          highlight: Sequence[bool] | None = None) -> str:
    """An HTML table; cells are escaped; ``numeric[j]`` right-aligns column j; ``highlight[i]`` marks row i."""
    rows = list(rows)
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    out = ['<div class="scroll"><table><thead><tr>', *(f"<th>{esc(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = ' class="best"' if highlight is not None and highlight[i] else ""
        out.append(f"<tr{cls}>")
        for j, cell in enumerate(row):
            text = cell if isinstance(cell, str) else fmt(cell)
            out.append(f'<td class="num">{esc(text)}</td>' if j < len(numeric) and numeric[j] else f"<td>{esc(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def cards(items: Sequence[tuple[str, Any]]) -> str:
    """Headline figures as a row of small cards (label, value)."""
    body = "".join(f'<div class="card"><div class="v">{esc(v if isinstance(v, str) else fmt(v))}</div>'
                   f'<div class="k">{esc(k)}</div></div>' for k, v in items)
    return f'<div class="cards">{body}</div>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def error_box(text: str) -> str:
    return f'<p class="error">{esc(text)}</p>'


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def h3(text: str) -> str:
    return f"<h3>{esc(text)}</h3>"


def details(summary: str, body_html: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body_html}</details>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def section(anchor: str, title: str, body_html: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body_html}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are (anchor, title, body html)."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style><script>{CHECK_SCRIPT}</script></head>"
            f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main></body></html>\n")
