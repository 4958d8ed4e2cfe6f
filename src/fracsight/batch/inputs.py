"""A batch run's inputs: files and folders named on the command line, and manifests of paths.

Folders are walked as ``predict`` walks them (:func:`fracsight.io.listing.expand_paths`, several
folders listed at once). A manifest is a CSV or Parquet file with a ``path`` column, one file per
row; relative paths are taken from the manifest's folder, and its files are not looked at here
(on a network file system a million ``stat`` calls in one process take longer than the run):
a missing or odd one gets its row from the analysis, as on the command line.

Every input is named by its absolute path (:func:`fracsight.batch.results.display_path`): the
key by which a later run knows it is done. An input named twice is analysed once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fracsight.batch.results import display_path
from fracsight.io.listing import expand_paths

__all__ = ["gather", "read_manifest"]


def gather(
    paths: Iterable[str], manifests: Iterable[str] = (), skip_folders: Iterable[Path | None] = ()
) -> list[tuple[str, str]]:
    """Every input once, in the order given (folders sorted): (absolute path as shown, path to open)."""
    files = [str(p) for p in expand_paths(list(paths), skip_folders=skip_folders)]
    for manifest in manifests:
        files += read_manifest(manifest)
    inputs: dict[str, str] = {}
    for file in files:
        inputs.setdefault(display_path(file), os.path.abspath(file))
    return list(inputs.items())


def read_manifest(manifest: str) -> list[str]:
    """The ``path`` column of a CSV or Parquet manifest; relative paths from the manifest's folder.

    Raises ValueError, naming the file, for a manifest that cannot be read, has no ``path``
    column, or has a row without a path.
    """
    import pyarrow as pa

    where = Path(manifest)
    suffix = where.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"--manifest {manifest}: give a .csv or .parquet file with a 'path' column")
    if not where.is_file():
        raise ValueError(f"--manifest {manifest}: no such file")
    try:
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(
                where,
                convert_options=pcsv.ConvertOptions(
                    column_types={"path": pa.string()}, strings_can_be_null=True
                ),
            )
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(where)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"--manifest {manifest}: cannot be read ({_first_line(exc)})") from None
    if "path" not in table.column_names:
        shown = ", ".join(table.column_names[:10]) or "none"
        raise ValueError(
            f"--manifest {manifest}: has no 'path' column (its columns: {shown}); "
            "give one input file per row in a column named 'path'"
        )
    values = table.column("path").cast(pa.string()).to_pylist()
    missing = [i for i, value in enumerate(values) if not value]
    if missing:
        raise ValueError(
            f"--manifest {manifest}: row {missing[0] + 1} has no path "
            f"({len(missing)} such row{'s' if len(missing) > 1 else ''}); every row must name a file"
        )
    base = where.resolve().parent
    return [str(base / value) for value in values]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
