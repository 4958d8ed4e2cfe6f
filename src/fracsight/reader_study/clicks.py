"""Reading times and localisation from a reader study's ``clicks.csv`` (as ``fracsight serve`` exports it).

Published fracture-AI reader studies report, besides ROC, how long a read took with and without
the AI and whether the reader pointed at the fracture. Per modality: the reads, the median time
per read (and per reader), and, over reads of fractured cases called "fracture" whose clicked image
has a fracture box, the share of clicks inside a box (``hit`` in the export).

What the times measure (as the study page records them): from the moment the case's images are
shown to the reader to the submission of the read, per read, in milliseconds.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from fracsight.reader_study.table import find_column, read_rows

TIME_MEANING = (
    "time_ms of each read in the clicks CSV: from the case's images shown on the study page to the "
    "read submitted"
)
CLICK_MEANING = (
    "a click marks the suspected site on an image (in its pixels); scored against the fracture boxes "
    "over reads of fractured cases called fracture whose clicked image has a box (hit: inside a box)"
)


def _quartiles(values: list[float]) -> tuple[float, float] | None:
    """(Q1, Q3), inclusive method (Q1 = Q3 = the value for one read); None without reads."""
    if not values:
        return None
    if len(values) == 1:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def summarise_clicks(path: str | Path) -> dict[str, Any]:
    """Per modality: reads, median seconds per read (overall and per reader) with its quartiles
    and range, the reads with a click, and localisation."""
    path = Path(path)
    header, rows = read_rows(path)
    modality = find_column(header, ("modality", "arm"), path, required=True)
    reader = find_column(header, ("reader",), path, required=True)
    time_col = find_column(header, ("time_ms",), path, required=True)
    hit_col = find_column(header, ("hit",), path, required=False)
    truth_col = find_column(header, ("truth",), path, required=False)
    call_col = find_column(header, ("call",), path, required=False)
    x_col = find_column(header, ("x",), path, required=False)
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r[modality] for r in rows):
        mine = [r for r in rows if r[modality] == name]
        seconds = [int(r[time_col]) / 1000 for r in mine]
        by_reader = {}
        for who in dict.fromkeys(r[reader] for r in mine):
            by_reader[who] = statistics.median(int(r[time_col]) / 1000 for r in mine if r[reader] == who)
        scored = [
            r for r in mine
            if hit_col and r[hit_col] != "" and (not truth_col or r[truth_col] == "1")
            and (not call_col or r[call_col] == "1")
        ]  # fmt: skip
        hits = sum(int(r[hit_col]) for r in scored) if hit_col else 0
        quartiles = _quartiles(seconds)
        out[name] = {
            "reads": len(mine),
            "readers": len(by_reader),
            "median_seconds": statistics.median(seconds) if seconds else None,
            "iqr_seconds": list(quartiles) if quartiles else None,
            "range_seconds": [min(seconds), max(seconds)] if seconds else None,
            "clicked": sum(r[x_col] != "" for r in mine) if x_col else None,
            "median_seconds_by_reader": by_reader,
            "localised": {"scored": len(scored), "hits": hits,
                          "rate": hits / len(scored) if scored else None},  # fmt: skip
        }
    return out


def describe(summary: dict[str, Any]) -> list[str]:
    """One line per modality, for the command's printed summary."""
    lines = []
    for name, s in summary.items():
        where = s["localised"]
        located = (f"{where['hits']}/{where['scored']} clicks in the fracture box" if where["scored"]
                   else "no click scored against a fracture box")  # fmt: skip
        time = f"median {s['median_seconds']:.1f} s a read" if s["median_seconds"] is not None else "no times"
        lines.append(f"Reading {name}: {s['reads']} reads, {time}; {located}")
    return lines
