"""Self-contained HTML pages: one file a clinician can open, archive or e-mail.

Everything a page needs (style, charts, images) is inside the file, and a Content
Security Policy forbids the browser from fetching anything else, so opening a report
never sends a request anywhere (nothing leaks where the report was opened, and the
page looks the same offline, years later).

Text passed to these helpers is escaped; only :class:`Markup` (already-built HTML
from this package) is inserted as is.
"""

from __future__ import annotations

import enum
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Markup",
    "NoteKind",
    "GalleryItem",
    "escape",
    "page",
    "section",
    "paragraph",
    "note",
    "facts",
    "table",
    "gallery",
    "figure",
    "row_of",
    "withheld",
    "join",
]


class Markup(str):
    """A string that is already safe HTML (built by this package), inserted without escaping."""


class NoteKind(str, enum.Enum):
    """How loudly a note speaks: a fact to know, or a warning that limits what a number means."""

    INFO = "info"
    WARNING = "warning"


@dataclass(frozen=True)
class GalleryItem:
    """One image of a gallery: a ``data:`` URI (see :mod:`fracsight.reporting.images`) and its caption."""

    data_uri: str
    caption: str
    alt: str = ""

    def __post_init__(self) -> None:
        if not self.data_uri.startswith("data:image/"):
            raise ValueError(
                f"gallery image {self.caption!r} must be embedded as a data:image/ URI, "
                f"got {self.data_uri[:30]!r}: a report may not reference outside files"
            )


Content = Markup | str | Iterable[Markup | str]

# Nothing may be loaded from outside the page: inline styles and data: images only.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_STYLE = """
:root { --ink: #1d2327; --muted: #5a6470; --line: #d5dbe1; --bg-soft: #f4f6f8;
  --warn-bg: #fff4e0; --warn-line: #e69f00; --info-bg: #eaf3fb; --info-line: #0072b2; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); margin: 0; background: #fff; line-height: 1.45; font-size: 15px; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; }
header.page { border-bottom: 3px solid var(--ink); margin-bottom: 18px; padding-bottom: 10px; }
header.page h1 { margin: 0 0 4px; font-size: 26px; }
header.page p.subtitle { margin: 0; color: var(--muted); }
section { margin: 26px 0; }
h2 { font-size: 20px; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin: 0 0 10px; }
h3 { font-size: 16px; margin: 16px 0 6px; }
p { margin: 6px 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 8px 0;
  background: var(--bg-soft); padding: 10px 14px; border-radius: 6px; }
dl.facts dt { font-weight: 600; color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 14px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; }
th { background: var(--bg-soft); text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.withheld { color: var(--muted); font-style: italic; }
.note { border-left: 4px solid; padding: 6px 10px; margin: 8px 0; border-radius: 0 4px 4px 0; }
.note.warning { background: var(--warn-bg); border-color: var(--warn-line); }
.note.info { background: var(--info-bg); border-color: var(--info-line); }
figure { margin: 10px 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
.gallery figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px;
  background: var(--bg-soft); }
.gallery img { width: 100%; height: auto; display: block; border-radius: 3px; }
.gallery figcaption { font-size: 12px; overflow-wrap: anywhere; }
footer.page { margin-top: 36px; border-top: 1px solid var(--line); padding-top: 8px; color: var(--muted);
  font-size: 13px; }
@media print { main { max-width: none; padding: 0; } section { break-inside: avoid-page; } }
"""


def escape(text: object) -> Markup:
    """Escape any value for HTML text or attributes (Markup passes through unchanged)."""
    if isinstance(text, Markup):
        return text
    return Markup(html.escape(str(text), quote=True))


def join(parts: Content) -> Markup:
    """Concatenate content pieces, escaping those that are plain text."""
    if isinstance(parts, str):
        return escape(parts)
    return Markup("".join(escape(part) for part in parts))


def _attr_id(element_id: str | None) -> str:
    return f' id="{escape(element_id)}"' if element_id else ""


def page(title: str, body: Content, subtitle: str | None = None, footer: Content | None = None) -> str:
    """A complete HTML document with the shared style and a no-network Content Security Policy."""
    head = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
    )
    sub = f'<p class="subtitle">{escape(subtitle)}</p>' if subtitle else ""
    foot = f'<footer class="page">{join(footer)}</footer>' if footer is not None else ""
    return (
        f'{head}<body>\n<main>\n<header class="page"><h1>{escape(title)}</h1>{sub}</header>\n'
        f"{join(body)}\n{foot}\n</main>\n</body>\n</html>\n"
    )


def section(title: str, content: Content, element_id: str | None = None, level: int = 2) -> Markup:
    """A titled part of a page (``level`` 2 for main sections, 3 for sub-sections)."""
    if level not in (2, 3, 4):
        raise ValueError(f"section level {level} is not one of 2, 3, 4")
    return Markup(
        f"<section{_attr_id(element_id)}><h{level}>{escape(title)}</h{level}>{join(content)}</section>\n"
    )


def paragraph(text: Content) -> Markup:
    return Markup(f"<p>{join(text)}</p>\n")


def note(text: Content, kind: NoteKind = NoteKind.INFO) -> Markup:
    """A highlighted remark; warnings are for anything that limits what a number can be trusted for."""
    kind = NoteKind(kind)
    return Markup(f'<div class="note {kind.value}" role="note">{join(text)}</div>\n')


def facts(items: Sequence[tuple[str, Content]], element_id: str | None = None) -> Markup:
    """A two-column list of labelled facts (what data, which model, when)."""
    rows = "".join(f"<dt>{escape(label)}</dt><dd>{join(value)}</dd>" for label, value in items)
    return Markup(f'<dl class="facts"{_attr_id(element_id)}>{rows}</dl>\n')


Cell = Markup | str | int | float | None


def _cell(value: Cell, header: bool = False) -> str:
    tag = "th" if header else "td"
    if value is None:
        return f"<{tag}></{tag}>"
    if isinstance(value, bool):
        return f"<{tag}>{'yes' if value else 'no'}</{tag}>"
    if isinstance(value, int | float) and not header:
        return f'<{tag} class="num">{escape(value)}</{tag}>'
    return f"<{tag}>{escape(value)}</{tag}>"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    caption: str | None = None,
    element_id: str | None = None,
    row_headers: bool = True,
    css_class: str | None = None,
) -> Markup:
    """A table; with ``row_headers`` the first cell of each row is a row header."""
    width = len(headers)
    for index, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"table row {index} has {len(row)} cells, the header has {width}")
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    head = "<tr>" + "".join(f'<th scope="col">{escape(h)}</th>' for h in headers) + "</tr>"
    body = []
    for row in rows:
        cells = [_cell(value, header=row_headers and i == 0) for i, value in enumerate(row)]
        if row_headers and cells:
            cells[0] = cells[0].replace("<th>", '<th scope="row">', 1)
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{escape(css_class)}"' if css_class else ""
    return Markup(
        f"<table{_attr_id(element_id)}{cls}>{cap}<thead>{head}</thead><tbody>{''.join(body)}</tbody></table>\n"
    )


def withheld(text: str) -> Markup:
    """A table cell for a value deliberately not shown (too few cases), saying why."""
    return Markup(f'<span class="withheld">{escape(text)}</span>')


def gallery(items: Sequence[GalleryItem], element_id: str | None = None, empty_text: str = "") -> Markup:
    """A grid of embedded images with captions; ``empty_text`` is shown when there are none."""
    if not items:
        return paragraph(empty_text) if empty_text else Markup("")
    figures = "".join(
        f'<figure><img src="{escape(item.data_uri)}" alt="{escape(item.alt or item.caption)}">'
        f"<figcaption>{escape(item.caption)}</figcaption></figure>"
        for item in items
    )
    return Markup(f'<div class="gallery"{_attr_id(element_id)}>{figures}</div>\n')


def figure(content: Markup, caption: str | None = None, element_id: str | None = None) -> Markup:
    """Wrap a chart (inline SVG) with its caption."""
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return Markup(f"<figure{_attr_id(element_id)}>{content}{cap}</figure>\n")


def row_of(parts: Sequence[Markup]) -> Markup:
    """Lay charts side by side (wrapping on narrow screens)."""
    return Markup('<div class="charts">' + "".join(parts) + "</div>\n")
