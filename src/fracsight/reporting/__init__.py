"""Self-contained HTML reports with inline-SVG charts: shared by evaluation and reader studies.

A report is one HTML file with no outside references (see :mod:`fracsight.reporting.html`).
Imports nothing else of fracsight: it draws what it is given (radiographs arrive as pixels read by
:mod:`fracsight.io`), so every part may use it.
"""

from fracsight.reporting.html import (
    GalleryItem,
    Markup,
    NoteKind,
    escape,
    facts,
    figure,
    gallery,
    join,
    note,
    page,
    paragraph,
    row_of,
    section,
    table,
    withheld,
)
from fracsight.reporting.images import open_picture, png_data_uri
from fracsight.reporting.svg import BarSeries, IntervalStyle, LineSeries, MarkedPoint, bar_chart, line_chart

__all__ = [
    "GalleryItem",
    "Markup",
    "NoteKind",
    "escape",
    "facts",
    "figure",
    "gallery",
    "join",
    "note",
    "page",
    "paragraph",
    "row_of",
    "section",
    "table",
    "withheld",
    "open_picture",
    "png_data_uri",
    "BarSeries",
    "IntervalStyle",
    "LineSeries",
    "MarkedPoint",
    "bar_chart",
    "line_chart",
]
