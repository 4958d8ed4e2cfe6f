"""Small CSV helpers shared by the reads and AI-predictions loaders.

Both files come from spreadsheets and other tools, so column names are matched
case-insensitively against a few accepted spellings, and problems are reported with
the file's own line numbers (header = line 1) so a user can find the cell.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from fracsight.reader_study.errors import BadValue, MissingColumn, ReaderStudyError

# How many offending rows an error message lists before summarising the rest.
EXAMPLES_SHOWN = 5


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header (lower-cased, stripped) and rows of a CSV file; raise if it has no data rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            raw_header = next(reader)
        except StopIteration:
            raise ReaderStudyError(
                f"{path}: the file is empty (a header row and data rows are needed)"
            ) from None
        header = [name.strip().lower() for name in raw_header]
        rows = []
        for values in reader:
            if not any(value.strip() for value in values):
                continue
            rows.append(
                {name: (values[i].strip() if i < len(values) else "") for i, name in enumerate(header)}
            )
    if not rows:
        raise ReaderStudyError(f"{path}: the file has a header but no data rows")
    return header, rows


def find_column(header: Sequence[str], aliases: Sequence[str], path: Path, *, required: bool) -> str | None:
    """The first of ``aliases`` present in ``header``; raise MissingColumn if required and absent."""
    for alias in aliases:
        if alias in header:
            return alias
    if required:
        raise MissingColumn(
            f"{path}: no column named {' or '.join(repr(a) for a in aliases)} "
            f"(columns present: {', '.join(header)})"
        )
    return None


def line_list(lines: Sequence[object]) -> str:
    """'4, 9, 12' or '4, 9, 12, 15, 20 and 7 more' for error messages."""
    shown = ", ".join(str(n) for n in lines[:EXAMPLES_SHOWN])
    rest = len(lines) - EXAMPLES_SHOWN
    return f"{shown} and {rest} more" if rest > 0 else shown


def cell_list(cells: Sequence[tuple[int, str]]) -> str:
    """ "line 3: 'x', line 8: 'y'" (with "and N more" past the first few) for error messages."""
    shown = ", ".join(f"line {line}: {text!r}" for line, text in cells[:EXAMPLES_SHOWN])
    rest = len(cells) - EXAMPLES_SHOWN
    return f"{shown} and {rest} more" if rest > 0 else shown


def parse_numbers(values: Sequence[str], column: str, path: Path, *, what: str) -> list[float]:
    """Parse finite numbers; raise BadValue naming every non-numeric cell's line and value."""
    parsed: list[float] = []
    bad: list[tuple[int, str]] = []
    for row_index, text in enumerate(values):
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            bad.append((row_index + 2, text))
        parsed.append(number)
    if bad:
        raise BadValue(
            f"{path}: column {column!r} has {len(bad)} value(s) that are not finite numbers "
            f"({cell_list(bad)}); {what}"
        )
    return parsed


def parse_binary(values: Sequence[str], column: str, path: Path, *, what: str) -> list[int]:
    """Parse 0/1 cells (also '0.0', '1.0'); raise BadValue naming every other cell."""
    numbers = parse_numbers(values, column, path, what=what)
    bad_lines = [i + 2 for i, v in enumerate(numbers) if v not in (0.0, 1.0)]
    if bad_lines:
        raise BadValue(
            f"{path}: column {column!r} has {len(bad_lines)} value(s) other than 0 or 1 "
            f"(lines {line_list(bad_lines)}); {what}"
        )
    return [int(v) for v in numbers]
