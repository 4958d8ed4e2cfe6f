"""Which files of the folders a user names are inputs: the one walker of ``predict`` and ``batch``.

Files named on the command line are inputs as given (a missing one gets its row saying so).
Folders are walked recursively, several folders at a time (``workers`` threads: on a network file
system each listing waits on the server, so walking in parallel is what keeps a million-file
archive from taking an hour to list), and the files come back sorted by path, so the order never
depends on which listing finished first.

Skipped inside folders: hidden entries, files that are plainly not radiographs (README.md,
CSVs...), fracsight's own results (a CSV or JSON-lines file that starts like one, Parquet parts)
and heat-map overlays (``*.heatmap.png``), and the folders in ``skip_folders`` (a run's heat-map
and results folders). Kept, so that their rows say what they are: broken links, pipes and other
special files, and folders that cannot be read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

__all__ = ["OVERLAY_SUFFIX", "RESULTS_CSV_START", "expand_paths", "file_identity", "is_own_results"]

# Inside folders, files with these suffixes are never radiographs and are skipped; DICOM files
# often have no suffix or an odd one, so everything else is tried (and refused with a reason).
_NOT_IMAGES = frozenset(
    {
        ".md",
        ".txt",
        ".csv",
        ".json",
        ".jsonl",
        ".parquet",
        ".py",
        ".pyc",
        ".html",
        ".xml",
        ".pdf",
        ".zip",
        ".gz",
        ".tgz",
        ".log",
    }
)
# Files that sit beside radiographs but never are one: the index of a DICOM CD/DVD export (an
# image-less DICOM file in every such export) and Windows' thumbnail cache and folder settings.
_NOT_IMAGE_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini"})
# fracsight's own heat-map overlays: skipped inside folders, so a second run does not analyse them.
OVERLAY_SUFFIX = ".heatmap.png"
# How ``predict``'s results files start: its CSV header's first five columns (the same in every
# version; tests check it against ``predict``'s COLUMNS) and a JSON line. One under another name
# (``--output results.dat``) is skipped inside folders too. Image suffixes are not opened to check.
RESULTS_CSV_START = b"path,probability,category,heatmap,error"
_OWN_RESULTS_STARTS = (RESULTS_CSV_START, b'{"path": ', b"PAR1")  # PAR1: a Parquet file
_IMAGE_SUFFIXES = frozenset({".dcm", ".dicom", ".jpg", ".jpeg", ".png", ".tif", ".tiff"})
# Folders listed at once: enough to hide a network file system's latency, few enough for a laptop.
WALK_THREADS = 8


def expand_paths(
    paths: Iterable[str | os.PathLike[str]],
    skip_folders: Iterable[Path | None] = (),
    workers: int = WALK_THREADS,
) -> list[Path]:
    """Files as given; folders walked recursively (``workers`` folders listed at once), each
    folder's files sorted by path. See the module's docstring for what is skipped."""
    skip = {file_identity(Path(p)) for p in skip_folders if p is not None} - {None}
    out: list[Path] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="walk") as pool:
        for raw in paths:
            path = Path(raw)
            if _is_dir(path):
                out += sorted(_walk(path, skip, pool))
            else:
                out.append(path)  # a missing file is reported in its row, not fatal
    return out


def _walk(root: Path, skip: set, pool: ThreadPoolExecutor) -> list[Path]:
    """Every input under ``root``; listings run in ``pool``, the bookkeeping of folders already
    seen (a link loop, a folder reached twice) here, in one thread."""
    seen = {file_identity(root)}
    found: list[Path] = []
    pending: set[Future] = {pool.submit(_list, root)}
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            files, folders = future.result()
            found += files
            for folder, identity in folders:
                if identity not in skip and identity not in seen:  # the heat maps; a link loop
                    seen.add(identity)
                    pending.add(pool.submit(_list, folder))
    return found


def _list(folder: Path) -> tuple[list[Path], list[tuple[Path, tuple[int, int] | None]]]:
    """One folder's input files, and its subfolders with their identities; a folder that cannot be
    read is itself the input (its row says why)."""
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError:
        return [folder], []
    files: list[Path] = []
    folders: list[tuple[Path, tuple[int, int] | None]] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if _is_dir(path):
            folders.append((path, file_identity(path)))
        elif _is_input(path, entry.name.lower()):
            files.append(path)
    return files, folders


def _is_input(path: Path, name: str) -> bool:
    suffix = path.suffix.lower()
    return (
        suffix not in _NOT_IMAGES
        and name not in _NOT_IMAGE_NAMES
        and not name.endswith(OVERLAY_SUFFIX)
        and not (suffix not in _IMAGE_SUFFIXES and is_own_results(path))
    )


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False  # missing, unreadable: the reader says so in its row


def is_own_results(path: Path) -> bool:
    """True for a regular file that starts like fracsight's results (never opens a pipe or device)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as file:
            head = file.read(64)
    except (OSError, ValueError):
        return False
    return head.startswith(_OWN_RESULTS_STARTS)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names, following links; None when it cannot be looked at."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino
