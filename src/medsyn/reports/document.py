"""A report as a list of plain blocks, rendered twice: self-contained HTML and Markdown.

The report builder (:mod:`medsyn.reports.html`) only assembles :class:`Section` objects made of
:class:`Text`, :class:`Note`, :class:`Table`, :class:`Figure`, :class:`Code`, :class:`Items`
and :class:`Details`; :func:`to_html` and :func:`to_markdown` turn the same list into both
formats, so the two versions never disagree. Text is plain: HTML-escaped on output, with
```code``` spans (backticks) and ``**bold**`` as the only markup.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass
class Text:
    text: str


@dataclass
class Note:
    """A visible remark: a section skipped and why, or a caveat the reader must see."""

    text: str


@dataclass
class Items:
    items: list[str]


@dataclass
class Code:
    text: str
    lang: str = ""


@dataclass
class Table:
    """``rows`` of cell strings under ``columns``; ``bold`` holds (row, column) indices."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    bold: set[tuple[int, int]] = field(default_factory=set)
    footnote: str = ""
    css_class: str = ""


@dataclass
class Figure:
    """A PNG written beside the report (``path``), embedded in the HTML as a data URI."""

    path: Path
    caption: str
    alt: str = ""


@dataclass
class Details:
    """Collapsed by default in HTML (``<details>``); a plain sub-heading in Markdown."""

    summary: str
    blocks: list["Block"]


Block = Union[Text, Note, Items, Code, Table, Figure, Details, "Section"]


@dataclass
class Section:
    title: str
    blocks: list[Block]
    anchor: str = ""
    level: int = 2


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]


def slug(text: str, taken: set[str] | None = None) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    if taken is not None:
        base, i = s, 2
        while s in taken:
            s, i = f"{base}-{i}", i + 1
        taken.add(s)
    return s


# ------------------------------------------------------------------------------------- HTML

CSS = """
*{box-sizing:border-box}
body{margin:0;color:#1f2328;background:#fff;line-height:1.45;
 font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:16px 20px 48px}
h1{font-size:1.7rem;margin:.4em 0 .1em} h2{font-size:1.35rem;margin-top:2em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
h3{font-size:1.1rem;margin-top:1.5em} h4{font-size:1rem;margin-top:1.2em}
p,li,td,th,figcaption,summary{overflow-wrap:anywhere}
.subtitle{color:#59636e;margin-top:0}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:.88em;
 background:#f6f8fa;padding:0 .2em;border-radius:3px}
pre{overflow-x:auto;background:#f6f8fa;padding:10px;border-radius:6px;font-size:.8rem;line-height:1.35}
pre code{background:none;padding:0}
.note{border-left:4px solid #bf8700;background:#fff8c5;padding:6px 12px;margin:10px 0;border-radius:0 6px 6px 0}
.table-wrap{overflow-x:auto;max-width:100%;margin:10px 0}
table{border-collapse:collapse;font-size:.88rem;font-variant-numeric:tabular-nums}
.table-caption{font-weight:600;margin:14px 0 2px;font-size:.92rem}
.table-caption+.table-wrap{margin-top:2px}
th,td{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:right;white-space:nowrap;overflow-wrap:normal}
th{background:#f6f8fa;font-weight:600;white-space:normal;min-width:4.5em;vertical-align:bottom}
th.t,td.t{text-align:left}
td.w{white-space:normal;min-width:12em}
table.kv{width:100%}
table.kv td{text-align:left;white-space:normal;overflow-wrap:anywhere}
table.kv td:first-child{color:#59636e;width:12em;overflow-wrap:normal}
.footnote{font-size:.8rem;color:#59636e;margin-top:2px}
figure{margin:14px 0}
figure img{max-width:100%;height:auto;display:block;border:1px solid #eaeef2}
figcaption{font-size:.85rem;color:#59636e;margin-top:4px}
details{margin:8px 0} summary{cursor:pointer;font-weight:600}
nav.toc{background:#f6f8fa;border-radius:6px;padding:8px 14px;margin:12px 0}
nav.toc ul{margin:4px 0;padding-left:1.2em}
nav.toc li{break-inside:avoid}
@media (min-width:900px){nav.toc>ul{columns:3}}
@media (max-width:640px){main{padding:10px 10px 32px} h1{font-size:1.35rem} h2{font-size:1.15rem}
 table{font-size:.8rem} th,td{padding:3px 6px}}
"""


#: cells that read as numbers (right-aligned): 12.3, −4, 1,234, 0.21 ± 0.03 (+1 ∞), < 0.001, –, ∞
_NUMERIC = re.compile(r"^\s*(<\s*)?[-−+]?([\d.,]+(e[-+]?\d+)?|∞|–)(\s*±\s*[\d.,]+(e[-+]?\d+)?)?(\s*\(\+\d+ ∞\))?(\s*†)?\s*$")


def _numeric_columns(t: Table) -> list[bool]:
    """A column of numbers (all but the first, every cell numeric) is right-aligned, header included."""
    n_cols = max([len(t.columns), *[len(r) for r in t.rows]])
    if t.css_class == "kv":
        return [False] * n_cols
    return [j > 0 and all(j >= len(r) or bool(_NUMERIC.match(str(r[j]))) for r in t.rows) for j in range(n_cols)]


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _block_html(b: Block, level: int, anchors: set[str]) -> str:
    if isinstance(b, Text):
        return f"<p>{_inline_html(b.text)}</p>"
    if isinstance(b, Note):
        return f'<p class="note">{_inline_html(b.text)}</p>'
    if isinstance(b, Items):
        return "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Code):
        cls = f' class="language-{html.escape(b.lang)}"' if b.lang else ""
        return f"<pre><code{cls}>{html.escape(b.text)}</code></pre>"
    if isinstance(b, Table):
        cls = f' class="{html.escape(b.css_class)}"' if b.css_class else ""
        # the caption sits above the scrolling box, so that it wraps at the page's width on a phone
        parts = [f'<p class="table-caption">{_inline_html(b.caption)}</p>'] if b.caption else []
        parts.append(f'<div class="table-wrap"><table{cls}>')
        numeric = _numeric_columns(b)
        if b.columns:
            heads = [f"<th>{_inline_html(c)}</th>" if numeric[j] else f'<th class="t">{_inline_html(c)}</th>'
                     for j, c in enumerate(b.columns)]
            parts.append("<thead><tr>" + "".join(heads) + "</tr></thead>")
        parts.append("<tbody>")
        for i, row in enumerate(b.rows):
            cells = []
            for j, c in enumerate(row):
                inner = _inline_html(str(c))
                if (i, j) in b.bold:
                    inner = f"<strong>{inner}</strong>"
                cls = "" if numeric[j] else (' class="t w"' if len(str(c)) > 40 else ' class="t"')
                cells.append(f"<td{cls}>{inner}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table></div>")
        if b.footnote:
            parts.append(f'<p class="footnote">{_inline_html(b.footnote)}</p>')
        return "".join(parts)
    if isinstance(b, Figure):
        data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
        alt = html.escape(b.alt or b.caption)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"<figcaption>{_inline_html(b.caption)}</figcaption></figure>")
    if isinstance(b, Details):
        inner = "".join(_block_html(x, level + 1, anchors) for x in b.blocks)
        return f"<details><summary>{_inline_html(b.summary)}</summary>{inner}</details>"
    if isinstance(b, Section):
        return _section_html(b, anchors)
    raise TypeError(f"unknown report block {type(b).__name__}")


def _section_html(s: Section, anchors: set[str]) -> str:
    h = min(max(s.level, 2), 6)
    anchor = s.anchor or slug(s.title, anchors)
    body = "".join(_block_html(b, h, anchors) for b in s.blocks)
    return f'<section id="{html.escape(anchor)}"><h{h}>{_inline_html(s.title)}</h{h}>{body}</section>'


def _assign_anchors(sections: list[Section], taken: set[str]) -> None:
    for s in sections:
        if not s.anchor:
            s.anchor = slug(s.title, taken)
        else:
            taken.add(s.anchor)
        _assign_anchors([b for b in s.blocks if isinstance(b, Section)], taken)


def _toc(sections: list[Section]) -> str:
    def items(secs: list[Section]) -> str:
        out = []
        for s in secs:
            sub = [b for b in s.blocks if isinstance(b, Section)]
            inner = f"<ul>{items(sub)}</ul>" if sub and s.level < 3 else ""
            out.append(f'<li><a href="#{html.escape(s.anchor)}">{_inline_html(s.title)}</a>{inner}</li>')
        return "".join(out)

    return f'<nav class="toc"><strong>Contents</strong><ul>{items(sections)}</ul></nav>'


def to_html(doc: Document) -> str:
    """One self-contained page: CSS inline, every image a data URI, no script, no external link."""
    anchors: set[str] = set()
    _assign_anchors(doc.sections, anchors)
    body = "".join(_section_html(s, set()) for s in doc.sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{_inline_html(doc.title)}</h1><p class=\"subtitle\">{_inline_html(doc.subtitle)}</p>"
        f"{_toc(doc.sections)}{body}</main></body></html>\n"
    )


# --------------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _block_md(b: Block, level: int, rel_to: Path) -> str:
    if isinstance(b, Text):
        return b.text + "\n"
    if isinstance(b, Note):
        return f"> **Note:** {b.text}\n"
    if isinstance(b, Items):
        return "".join(f"- {i}\n" for i in b.items)
    if isinstance(b, Code):
        return f"```{b.lang}\n{b.text.rstrip()}\n```\n"
    if isinstance(b, Table):
        out = []
        if b.caption:
            out.append(f"*{b.caption}*\n")
        cols = b.columns or [""] * (len(b.rows[0]) if b.rows else 1)
        out.append("| " + " | ".join(_md_cell(c) for c in cols) + " |")
        numeric = _numeric_columns(b)
        out.append("|" + "|".join("---:" if j < len(numeric) and numeric[j] else "---" for j in range(len(cols))) + "|")
        for i, row in enumerate(b.rows):
            cells = [f"**{_md_cell(c)}**" if (i, j) in b.bold else _md_cell(c) for j, c in enumerate(row)]
            out.append("| " + " | ".join(cells) + " |")
        if b.footnote:
            out.append(f"\n{b.footnote}")
        return "\n".join(out) + "\n"
    if isinstance(b, Figure):
        try:
            rel = Path(b.path).resolve().relative_to(rel_to.resolve())
        except ValueError:
            rel = Path(b.path)
        return f"![{b.alt or b.caption}]({rel.as_posix()})\n\n*{b.caption}*\n"
    if isinstance(b, Details):
        head = "#" * min(level + 1, 6)
        return f"{head} {b.summary}\n\n" + "\n".join(_block_md(x, level + 1, rel_to) for x in b.blocks)
    if isinstance(b, Section):
        return _section_md(b, rel_to)
    raise TypeError(f"unknown report block {type(b).__name__}")


def _section_md(s: Section, rel_to: Path) -> str:
    level = min(max(s.level, 2), 6)
    return f"{'#' * level} {s.title}\n\n" + "\n".join(_block_md(b, level, rel_to) for b in s.blocks)


def to_markdown(doc: Document, rel_to: Path) -> str:
    """The same content as Markdown; figures are links relative to ``rel_to`` (the report's folder)."""
    parts = [f"# {doc.title}\n", f"{doc.subtitle}\n"]
    parts += [_section_md(s, rel_to) for s in doc.sections]
    return "\n".join(parts)
