"""Where ``fracsight predict`` writes its rows, so that none is lost: flushed one by one, cut
back to the last whole row when the disk fails, and finished cleanly on SIGINT or SIGTERM.

A path that is not valid UTF-8 (a name from another system's encoding) is written with
Python's surrogate escapes: the CSV holds the name's original bytes, JSON the \\udcXX escapes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from fracsight.decide import Category
from fracsight.finding import HEATMAP_NOT_WRITTEN as _HEATMAP_NOT_WRITTEN
from fracsight.finding import ROW_COLUMNS, record_row

COLUMNS = list(ROW_COLUMNS)  # the CSV's columns: one result row, as fracsight.finding defines it
# error_code of an analysed input whose heat-map picture could not be written (exit code 1).
HEATMAP_NOT_WRITTEN = _HEATMAP_NOT_WRITTEN


class OutputError(ValueError):
    """The results could not be written; the message names the output and the system's reason."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``signum`` is which (exit code 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RowWriter:
    """CSV or JSON lines to a file or standard output, one flushed row at a time."""

    def __init__(self, target: str | None, as_json: bool) -> None:
        self.name = "standard output" if target in (None, "-") else str(target)
        self._as_json = as_json
        self._whole = 0  # bytes of the file up to the end of the last whole row
        self._out = self._open(target)
        self._csv = None if as_json else csv.DictWriter(self._out, fieldnames=COLUMNS)
        if self._csv is not None:
            self._write(lambda: self._csv.writeheader())

    def write(self, record: dict[str, Any]) -> None:
        """One input's record (a Finding's or Refusal's ``to_record()`` and its heat map): JSON lines
        as it is, CSV flattened to :data:`COLUMNS`."""
        if self._csv is not None:
            self._write(lambda: self._csv.writerow(csv_row(record)))
        else:
            self._write(lambda: self._out.write(json.dumps(record) + "\n"))

    def close(self) -> None:
        """Close a results file (standard output stays open); a failure here is an OutputError too."""
        if self._out is sys.stdout:
            return
        try:
            self._out.close()
        except OSError as error:
            self._cut_back()
            raise OutputError(self._failure(error)) from error

    def _open(self, target: str | None) -> IO[str]:
        if target in (None, "-"):
            if hasattr(sys.stdout, "reconfigure"):
                sys.stdout.reconfigure(errors="surrogateescape")
            return sys.stdout
        try:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            return open(target, "w", newline="", encoding="utf-8", errors="surrogateescape")
        except OSError as error:
            raise OutputError(self._failure(error)) from error

    def _write(self, emit: Callable[[], object]) -> None:
        try:
            emit()
            self._out.flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            self._cut_back()
            raise OutputError(self._failure(error)) from error
        self._whole = self._position()

    def _position(self) -> int:
        try:
            return os.lseek(self._out.fileno(), 0, os.SEEK_CUR)
        except (OSError, ValueError, AttributeError):
            return 0

    def _cut_back(self) -> None:
        """Drop the part of a row that reached the file before the write failed."""
        if self._out is sys.stdout:
            return
        try:
            os.ftruncate(self._out.fileno(), self._whole)
        except (OSError, ValueError):
            pass

    def _failure(self, error: OSError) -> str:
        shown = "--output -" if self.name == "standard output" else f"--output {self.name}"
        return f"{shown}: cannot write the results: {error.strerror or type(error).__name__}"


def csv_row(record: dict[str, Any]) -> dict[str, str]:
    """A record as a CSV row (:func:`fracsight.finding.record_row` cut to :data:`COLUMNS`):
    probability with four decimals (empty for an image out of scope: it is not scored), empty cells
    for what does not apply."""
    row = record_row(record)
    probability = row["probability"]
    if row["category"] == Category.OUT_OF_SCOPE.value:
        probability = None  # not an answer for this image: the JSON record keeps it for research
    row["probability"] = None if probability is None else f"{probability:.4f}"
    return {column: "" if row[column] is None else str(row[column]) for column in COLUMNS}


class SignalGuard:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted`, except inside :meth:`hold`
    (a row being written): there the signal waits, and :meth:`raise_pending` raises it after."""

    def __init__(self) -> None:
        self._holding = False
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():  # only there can signals be handled
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextmanager
    def hold(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def raise_pending(self) -> None:
        if self._pending is not None:
            raise Interrupted(self._pending)

    def _handle(self, signum: int, _frame: object) -> None:
        if self._holding:
            self._pending = signum
            return
        raise Interrupted(signum)
