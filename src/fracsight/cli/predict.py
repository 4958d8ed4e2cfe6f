"""``fracsight predict``: probability, category and heat map for radiograph files and folders."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from fracsight.inference import Analyser

COLUMNS = ["path", "probability", "category", "heatmap", "error"]
# Inside folders, files with these suffixes are never radiographs and are skipped; DICOM files
# often have no suffix or an odd one, so everything else is tried (and refused with a reason).
_NOT_IMAGES = frozenset(
    {".md", ".txt", ".csv", ".json", ".py", ".pyc", ".html", ".xml", ".pdf", ".zip", ".gz", ".tgz", ".log"}
)
# Files that sit beside radiographs but never are one: the index of a DICOM CD/DVD export (an
# image-less DICOM file in every such export) and Windows' thumbnail cache and folder settings.
_NOT_IMAGE_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini"})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="analyse radiographs (files or folders, DICOM and images mixed)",
        description="Fracture probability, category and heat map per radiograph. An aid to the "
        "clinician, not a diagnosis. Exit code 0 when every input was analysed (heat map written), else 1.",
    )
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--model", help="ONNX model with its .card.json beside it (default: the shipped model)")
    p.add_argument("--output", help="write the results CSV here ('-' or default: standard output)")
    p.add_argument("--heatmaps", help="write heat-map overlay PNGs into this folder")
    p.add_argument("--json", action="store_true", help="JSON lines instead of CSV")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=_positive_int, help="CPU threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (0 or less has no meaning for threads)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given; folders walked recursively in sorted order, skipping hidden files and
    files that are plainly not images (README.md, CSVs...). A broken link is kept, so that
    its row says so instead of the file silently going missing."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(
                p
                for p in path.rglob("*")
                if (p.is_file() or (p.is_symlink() and not p.exists()))
                and p.suffix.lower() not in _NOT_IMAGES
                and p.name.lower() not in _NOT_IMAGE_NAMES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            out.append(path)  # a missing file is reported in its row, not fatal
    return out


def _overlay_name(path: Path, used: set[str]) -> str:
    """A heat-map file name from the input's name, unique within the run even where the file
    system ignores case (Windows, macOS), so one overlay never replaces another."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)
    name, n = f"{stem}.heatmap.png", 1
    while name.casefold() in used:
        n += 1
        name = f"{stem}.{n}.heatmap.png"
    used.add(name.casefold())
    return name


def _heat_dir(raw: str | None) -> Path | None:
    """The heat-map folder, created if needed; checked before any result is written."""
    if not raw:
        return None
    folder = Path(raw)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--heatmaps {raw}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--heatmaps {raw}: cannot create the folder: {exc.strerror or exc}") from exc
    return folder


def _open_output(raw: str | None) -> IO[str]:
    """The results file (its folder created if needed), or standard output for none or '-'."""
    if raw in (None, "-"):
        return sys.stdout
    try:
        Path(raw).parent.mkdir(parents=True, exist_ok=True)
        return open(raw, "w", newline="")
    except OSError as exc:
        raise ValueError(f"--output {raw}: cannot write the results: {exc.strerror or exc}") from exc


def rows(analyser: Analyser, files: list[Path], heat_dir: Path | None) -> Iterator[dict]:
    from fracsight.explain import overlay_image

    used: set[str] = set()
    for (path, finding, error), radiograph in analyser.iter_analyses(files):
        row = {"path": path, "probability": "", "category": "", "heatmap": "", "error": error or ""}
        if finding is not None:
            row["probability"] = f"{finding.probability:.4f}"
            row["category"] = finding.category.value
            if heat_dir is not None and radiograph is not None:
                target = heat_dir / _overlay_name(Path(path), used)
                try:
                    overlay_image(radiograph.pixels, finding).save(target, compress_level=1)
                    row["heatmap"] = str(target)
                except OSError as exc:  # disk full, permissions: this row says so, the batch goes on
                    target.unlink(missing_ok=True)
                    row["error"] = f"analysed, but its heat map could not be written: {exc.strerror or exc}"
        yield row


def _typed(row: dict[str, str]) -> dict[str, object]:
    """A row for JSON: the probability as a number, empty fields as null."""
    record: dict[str, object] = {key: (value or None) for key, value in row.items()}
    if row["probability"]:
        record["probability"] = float(row["probability"])
    return record


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fracsight.inference import Analyser

    files = expand_paths(args.paths)
    if not files:
        raise ValueError("no input files found in " + ", ".join(args.paths))
    # Model and heat-map folder first: a bad --model must not leave an earlier results file empty.
    analyser = Analyser(args.model, threads=args.threads, batch_size=args.batch_size)
    heat_dir = _heat_dir(args.heatmaps)
    out = _open_output(args.output)
    refused = unwritten = done = 0
    started = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", disable=args.no_progress or len(files) < 2, file=sys.stderr)
    try:
        writer = None if args.json else csv.DictWriter(out, fieldnames=COLUMNS)
        if writer:
            writer.writeheader()
        for row in rows(analyser, files, heat_dir):
            refused += bool(row["error"]) and not row["probability"]
            unwritten += bool(row["error"]) and bool(row["probability"])  # analysed, heat map not saved
            if writer:
                writer.writerow(row)
            else:
                out.write(json.dumps(_typed(row)) + "\n")
            done += 1
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        where = "the output" if out is sys.stdout else args.output
        print(
            f"fracsight predict: interrupted after {done} of {len(files)} inputs; "
            f"{where} holds only those rows",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
        if out is not sys.stdout:
            out.close()
    seconds = time.perf_counter() - started
    print(
        f"fracsight predict: {len(files) - refused} analysed, {refused} refused, "
        + (f"{unwritten} heat maps not written, " if unwritten else "")
        + f"{seconds:.1f} s "
        f"({len(files) / max(seconds, 1e-9):.1f} images/s)",
        file=sys.stderr,
    )
    return 1 if refused or unwritten else 0
