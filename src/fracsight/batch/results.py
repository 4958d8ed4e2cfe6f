"""The results of ``fracsight batch``: a folder of Parquet parts, one row per input, never a half part.

``results.parquet/`` holds ``part-<run>-<n>.parquet`` files; every Parquet reader takes the folder
as one table (``pyarrow.parquet.read_table``, ``pandas.read_parquet``, DuckDB, Spark). A part is
written under a hidden temporary name, flushed to disk and renamed, so a part is in the folder
whole or not at all, whatever stops the run; hidden leftovers of a stopped run are removed at the
next start (Parquet readers skip names that start with ``.`` anyway).

A run first reads the ``path`` column of the parts already there: those inputs are done and are
not analysed again, so the same command continues a stopped run. The writer never writes a path
twice, so every input ends with exactly one row.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fracsight._version import __version__
from fracsight.finding import ROW_COLUMNS, ROW_DETAIL_COLUMNS, record_row
from fracsight.io.durable import fsync_folder

__all__ = ["COLUMNS", "ResultsFolder", "display_path", "row_of", "schema"]

# The columns, in order: a result row as predict's CSV has it (``path`` absolute), then where the
# heat map peaks and the image's size (as ``predict --json`` gives them), then the timings in ms.
COLUMNS = [*ROW_COLUMNS, *ROW_DETAIL_COLUMNS]
_FLOATS = {"probability", "ood_score", "peak_x", "peak_y", "decode_ms", "preprocess_ms", "model_ms"}
_INTEGERS = {"width", "height"}
_PART_GLOB = "part-*.parquet"


def schema():
    """The Parquet schema: ``probability`` a float64 holding the model's full-precision answer."""
    import pyarrow as pa

    def kind(column: str):
        return pa.float64() if column in _FLOATS else pa.int32() if column in _INTEGERS else pa.string()

    return pa.schema([pa.field(column, kind(column)) for column in COLUMNS])


def display_path(path: str) -> str:
    """An absolute path as the results show it: file names that are not UTF-8 (bytes from another
    system's encoding, held as surrogate escapes) get ``\\xNN`` escapes, since Parquet text is UTF-8."""
    return os.path.abspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def row_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A Finding's or Refusal's ``to_record()`` (with ``heatmap``) as one row of :data:`COLUMNS`."""
    return record_row(record)


class ResultsFolder:
    """The ``--output`` folder: what earlier runs wrote (:meth:`done`) and new parts (:meth:`write`).

    Raises ValueError for an output that is a file or cannot be made; OSError from :meth:`write`
    means the disk refused a part (its rows are not in the folder and are analysed next time).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(
                f"--output {folder}: is a file; fracsight batch writes a folder of Parquet parts"
            )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--output {folder}: cannot create the folder: {exc.strerror or exc}") from exc
        for leftover in self.folder.glob(".part-*.tmp"):  # a part a stopped run did not finish
            leftover.unlink(missing_ok=True)
        # Unique per run (two runs in one second, even in one process, never share a name).
        self._run = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        self._parts = 0
        self.written: set[str] = set()

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob(_PART_GLOB))

    def done(self, wanted: set[str]) -> tuple[int, Counter[str], int]:
        """Reads the parts already in the folder: how many of ``wanted`` have a row, their refusals
        by code, and how many rows were duplicates (a path in two parts; none if only fracsight
        wrote here). Every path read, wanted or not, is never written again by this run."""
        import pyarrow.parquet as pq

        refused: Counter[str] = Counter()
        have = duplicates = 0
        for part in self.parts():
            try:
                table = pq.read_table(part, columns=["path", "error_code"])
            except Exception as exc:  # noqa: BLE001 - pyarrow's errors share no useful base class
                raise ValueError(
                    f"{part}: cannot be read ({type(exc).__name__}); move it out of the folder and "
                    "run again: its inputs will be analysed again"
                ) from None
            for path, code in zip(
                table.column("path").to_pylist(), table.column("error_code").to_pylist(), strict=True
            ):
                if path in self.written:
                    duplicates += 1
                    continue
                self.written.add(path)
                if path in wanted:
                    have += 1
                    if code is not None:
                        refused[code] += 1
        return have, refused, duplicates

    def write(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Write the rows whose path has no row yet as one new part; returns how many were written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        fresh, seen = [], set()
        for row in rows:
            if row["path"] not in self.written and row["path"] not in seen:
                seen.add(row["path"])
                fresh.append(row)
        if not fresh:
            return 0
        table = pa.Table.from_pylist(fresh, schema=schema()).replace_schema_metadata(
            {"created_by": f"fracsight {__version__} batch"}
        )
        self._parts += 1
        name = f"part-{self._run}-{self._parts:05d}.parquet"
        temporary = self.folder / f".{name}.tmp"
        try:
            with open(temporary, "wb") as file:
                pq.write_table(table, file, compression="zstd")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.folder / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self.written |= seen  # in the folder now, even if making the rename durable fails below
        fsync_folder(self.folder)
        return len(fresh)
