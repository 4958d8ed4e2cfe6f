"""``fracsight predict``: probability, category and heat map for radiograph files and folders.

Nothing a file can do stops the batch: files are decoded in worker processes (a crash or
hang costs that file's row), every input gets exactly one row, each row is flushed as it is
done, and the run ends with a closing line on standard error whatever stops it.
Exit codes: 0 every input analysed (heat map written); 1 some refused or a heat map not
written; 2 usage or output error (the results could not be written); 3 fracsight itself
failed (a bug: ``-v`` shows the traceback); 130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from fracsight.cli.predict_output import (
    COLUMNS,
    HEATMAP_NOT_WRITTEN,
    Interrupted,
    OutputError,
    RowWriter,
    SignalGuard,
)
from fracsight.explain import MIN_DISPLAY_SIDE, OVERLAY_MAX_SIDE
from fracsight.io.listing import OVERLAY_SUFFIX, expand_paths, file_identity

if TYPE_CHECKING:
    from fracsight.inference import Analyser

__all__ = ["COLUMNS", "expand_paths", "register", "rows", "run"]

logger = logging.getLogger(__name__)

# Longest heat-map file stem kept whole, in UTF-8 bytes: file systems allow 255 bytes per name,
# and the suffix, a collision number and a hash of the full name must fit beside it.
_MAX_OVERLAY_STEM = 120
# Inputs decoded ahead of the model, which itself sees one image at a time. Each holds its decoded
# pixels until the model is done with it (a 3000 x 3000 radiograph: 36 MB), and up to two windows
# are in memory; measured peak of the process on 128 typical FracAtlas JPEGs: batch 1 0.30 GB,
# 8 0.36 GB, 32 0.41 GB. Beyond 8 nothing gets faster, so 32 is the ceiling.
MAX_BATCH_SIZE = 32
_BATCH_MEMORY = "each holds its decoded pixels, 36 MB for a 3000 x 3000 radiograph"
# Threads that draw and write heat-map pictures beside the model; as many pictures may be waiting
# for one, each holding its radiograph's pixels. Two keep the writing off the model's path on a
# 2-core machine (benchmarks/predict_stages.py measures it).
HEATMAP_WRITERS = 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="analyse radiographs (files or folders, DICOM and images mixed)",
        description="Fracture probability, category and heat map per radiograph. An aid to the "
        "clinician, not a diagnosis. Exit code 0 when every input was analysed (heat map written), "
        "1 when some were refused, 2 for a usage or output error, 3 for an internal error, "
        "130/143 when interrupted (the rows written so far are complete).",
    )
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--model", help="ONNX model with its .card.json beside it (default: the shipped model)")
    p.add_argument("--output", help="write the results CSV here ('-' or default: standard output)")
    p.add_argument("--heatmaps", help="write heat-map overlay PNGs into this folder")
    p.add_argument("--json", action="store_true", help="JSON lines instead of CSV")
    p.add_argument(
        "--overlay-max-side",
        type=_overlay_side,
        default=OVERLAY_MAX_SIDE,
        metavar="N",
        help=f"longer side of the heat-map pictures of larger images, px (default {OVERLAY_MAX_SIDE}; "
        "0: the image's own size). Images twice as large or more are handed over by the decoder "
        "already reduced to it: the same answers and pictures, less memory and time",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=8,
        help=f"images decoded ahead of the model, 1 to {MAX_BATCH_SIZE} (default 8); {_BATCH_MEMORY}",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="CPU threads: the default of the three options below (default: all cores)",
    )
    p.add_argument(
        "--model-threads", type=_positive_int, metavar="N", help="ONNX Runtime threads (default: --threads)"
    )
    p.add_argument(
        "--decoder-processes",
        type=_positive_int,
        metavar="N",
        help="decoder worker processes, files read at once (default: --threads)",
    )
    p.add_argument(
        "--read-ahead-threads",
        type=_positive_int,
        metavar="N",
        help="threads that decode and preprocess the next inputs while the model runs (default: --threads)",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "int8"),
        help="float32: the model itself; int8: its 8-bit copy NAME.int8.onnx (fracsight quantise) "
        "(default: float32, see training/README.md, 8-bit model)",
    )
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


def _overlay_side(text: str) -> int:
    """An argparse type: 0 (the image's own size) or a side of at least :data:`MIN_DISPLAY_SIDE`."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value != 0 and value < MIN_DISPLAY_SIDE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give 0 (the image's own size) or a side of at least {MIN_DISPLAY_SIDE} px"
        )
    return value


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(
            f"{value} is more than {MAX_BATCH_SIZE}: every image decoded ahead stays in memory "
            f"({_BATCH_MEMORY}), and more than 8 is not faster"
        )
    return value


def _refuse_output_among_inputs(output: str | None, files: list[Path]) -> None:
    """An --output that is one of the inputs would overwrite a radiograph with the results (a
    results file of an earlier run is not among the inputs: folders skip it)."""
    if output in (None, "-"):
        return
    target = file_identity(Path(output))
    if target is not None and any(file_identity(f) == target for f in files):
        raise ValueError(
            f"--output {output}: is one of the inputs; refusing to overwrite it with the results"
        )


def _overlay_name(path: Path, used: set[str]) -> str:
    """A heat-map file name from the input's name, unique within the run even where the file
    system ignores case (Windows, macOS), so one overlay never replaces another. Long names keep
    their start and a hash of the whole name, so the file system accepts them (255 bytes)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)
    if len(stem.encode()) > _MAX_OVERLAY_STEM:
        digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:12]
        kept = stem.encode()[: _MAX_OVERLAY_STEM - 13].decode(errors="ignore")
        stem = f"{kept}~{digest}"
    name, n = f"{stem}{OVERLAY_SUFFIX}", 1
    while name.casefold() in used:
        n += 1
        name = f"{stem}.{n}{OVERLAY_SUFFIX}"
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


def rows(
    analyser: Analyser, files: list[Path], heat_dir: Path | None, overlay_max_side: int = OVERLAY_MAX_SIDE
) -> Iterator[dict]:
    """One record per input, in input order: its Finding's or Refusal's ``to_record()``, plus where
    its heat map went (a picture whose longer side is at most ``overlay_max_side``; 0: the pixels'
    own size).

    Heat maps are drawn and written by :data:`HEATMAP_WRITERS` threads while the model goes on to
    the next inputs (drawing, PNG compression and the model release the GIL); a record comes once
    its picture is written or has failed (one failed picture costs only its own row's heat map).
    """
    from fracsight.finding import Finding, write_heatmap

    used: set[str] = set()
    waiting: deque[tuple[dict, Future | None]] = deque()
    writers = ThreadPoolExecutor(HEATMAP_WRITERS, thread_name_prefix="heatmap") if heat_dir else None
    try:
        for outcome, radiograph in analyser.iter_outcomes(files):
            record = {**outcome.to_record(), "heatmap": None}
            job = None
            if isinstance(outcome, Finding) and heat_dir and writers and radiograph is not None:
                target = heat_dir / _overlay_name(Path(outcome.source), used)
                job = writers.submit(write_heatmap, outcome, radiograph.pixels, target, overlay_max_side)
            waiting.append((record, job))
            # Give every record whose picture is done; wait only when more pictures are pending
            # than there are writers (each holds its radiograph's pixels).
            while waiting and (
                waiting[0][1] is None or waiting[0][1].done() or len(waiting) > HEATMAP_WRITERS
            ):
                yield _with_heatmap(*waiting.popleft())
        while waiting:
            yield _with_heatmap(*waiting.popleft())
    finally:  # stopped early (a signal, a closed pipe): finish the pictures begun, start no other
        if writers is not None:
            writers.shutdown(wait=True, cancel_futures=True)


def _with_heatmap(record: dict, job: Future | None) -> dict:
    """``record`` with where its heat map went, or why it is not there (``write_heatmap``'s fields)."""
    if job is not None:
        record.update(job.result())
    return record


def run(args: argparse.Namespace) -> int:
    """The command; every way it can end is an exit code and one closing line, never a traceback."""
    try:
        with SignalGuard() as guard:
            return _run(args, guard)
    except Interrupted as stop:  # while the model loaded; the batch loop says how far it got
        _closing_line(f"interrupted ({stop}) before any input was analysed")
        return 128 + stop.signum
    except (ValueError, FileNotFoundError, RuntimeError, BrokenPipeError):
        raise  # usage and output errors (2), closed pipe (141): cli.main says so in one line
    except Exception as exc:  # noqa: BLE001 - a bug must not look like "some inputs refused" (1)
        logger.debug("internal error", exc_info=True)
        print(
            f"fracsight predict: internal error ({type(exc).__name__}); run with -v for the traceback",
            file=sys.stderr,
        )
        return 3


def analyser_for(args: argparse.Namespace) -> Analyser:
    """The model of ``--model`` with the CPU knobs given (each unset one defaults to ``--threads``).

    Images are decoded no larger than the model and the overlay pictures need (the longer of the
    model's input and ``--overlay-max-side``; in full with 0): predict shows no pixel at a larger
    size, and a 3000 x 3000 radiograph then costs a quarter of the memory and copying."""
    from fracsight.inference import Analyser

    overlay_side = getattr(args, "overlay_max_side", OVERLAY_MAX_SIDE)
    return Analyser(
        args.model,
        threads=args.threads,
        batch_size=args.batch_size,
        decode_side=overlay_side or None,
        model_threads=args.model_threads,
        decoder_processes=args.decoder_processes,
        read_ahead=args.read_ahead_threads,
        precision=getattr(args, "precision", None),
        reduce_pixels=True,
    )


def _run(args: argparse.Namespace, guard: SignalGuard) -> int:
    files = expand_paths(args.paths, skip_folders=(Path(args.heatmaps) if args.heatmaps else None,))
    if not files:
        raise ValueError("no input files found in " + ", ".join(args.paths))
    _refuse_output_among_inputs(args.output, files)
    # Model and heat-map folder first: a bad --model must not leave an earlier results file empty.
    analyser = analyser_for(args)
    try:
        heat_dir = _heat_dir(args.heatmaps)
        writer = RowWriter(args.output, args.json)
        side = getattr(args, "overlay_max_side", OVERLAY_MAX_SIDE)
        return _write_rows(analyser, files, heat_dir, writer, guard, args.no_progress, side)
    finally:
        analyser.close()  # stops the decoder processes at once, even mid-file


def _write_rows(
    analyser: Analyser,
    files: list[Path],
    heat_dir: Path | None,
    writer: RowWriter,
    guard: SignalGuard,
    quiet: bool,
    overlay_max_side: int = OVERLAY_MAX_SIDE,
) -> int:
    from tqdm import tqdm

    refused = unwritten = done = 0
    started = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", disable=quiet or len(files) < 2, file=sys.stderr)
    produced = rows(analyser, files, heat_dir, overlay_max_side)
    try:
        for row in produced:
            refused += "probability" not in row
            unwritten += row.get("error_code") == HEATMAP_NOT_WRITTEN
            with guard.hold():
                writer.write(row)
            done += 1
            bar.update(1)
            guard.raise_pending()
        writer.close()
    except (Interrupted, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
        bar.close()
        _close_quietly(writer)
        _closing_line(
            f"interrupted after {done} of {len(files)} inputs ({signal.Signals(signum).name}); "
            f"{writer.name} holds only those rows"
        )
        return 128 + signum
    except OutputError as error:
        bar.close()
        _closing_line(f"stopped after {done} of {len(files)} inputs: {error}")
        return 2
    finally:
        bar.close()
        produced.close()
    seconds = time.perf_counter() - started
    _closing_line(
        f"{len(files) - refused} analysed, {refused} refused, "
        + (f"{unwritten} heat maps not written, " if unwritten else "")
        + f"{seconds:.1f} s ({len(files) / max(seconds, 1e-9):.1f} images/s)"
    )
    return 1 if refused or unwritten else 0


def _close_quietly(writer: RowWriter) -> None:
    try:
        writer.close()
    except OutputError:
        pass


def _closing_line(text: str) -> None:
    print(f"fracsight predict: {text}", file=sys.stderr)
