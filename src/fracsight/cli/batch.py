"""``fracsight batch``: an archive of radiographs on a Ray cluster, results as Parquet, resumable.

The same answers as ``fracsight predict`` (the same decoding, preprocessing and model run, one
image at a time), spread over a Ray cluster with Ray Data (:mod:`fracsight.batch`). Results go to
a folder of Parquet parts, written whole or not at all every ``--part-rows`` rows or
``--part-seconds`` seconds; a run that stops (Ctrl-C, SIGTERM, a lost cluster) is continued by the
same command, which analyses only the inputs without a row. Every input ends with exactly one row.

Exit codes: 0 every input analysed; 1 some refused (or a heat map not written); 2 usage or output
error; 3 the run failed (a lost cluster, or a bug: ``-v`` shows more); 130 / 143 interrupted by
SIGINT / SIGTERM. After 3, 130 and 143 the rows done so far are kept: run the same command again.

Ray is imported only when the command runs, so ``fracsight`` itself does not need it.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from fracsight.cli.options import (
    a_folder_to_write,
    a_model,
    a_number,
    a_whole_number,
    add_precision_option,
    an_existing_file,
)

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

_NAME = "fracsight batch"
_MISSING_EXTRA = (
    "needs Ray Data and pyarrow, the 'cluster' extra: pip install 'fracsight[cluster]' "
    "(or bash scripts/setup.sh cluster)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="analyse an archive on a Ray cluster; results as Parquet, resumable",
        description="Fracture probability and category for every radiograph of an archive, on a Ray "
        "cluster (or on this machine), written to a folder of Parquet parts. Run the same command "
        "again after a stop: only inputs without a row are analysed. The same answers as "
        "'fracsight predict'. An aid to the clinician, not a diagnosis. Exit code 0 when every input "
        "was analysed, 1 when some were refused, 2 for a usage or output error, 3 when the run failed "
        "(a lost cluster; rerun to continue), 130/143 when interrupted (rerun to continue).",
    )
    p.add_argument("paths", nargs="*", help="files or folders (searched recursively)")
    p.add_argument(
        "--output",
        required=True,
        type=a_folder_to_write,
        help="the results folder (e.g. results.parquet): Parquet parts, read as one table by any "
        "Parquet reader; an existing one is continued",
    )
    p.add_argument(
        "--manifest",
        action="append",
        default=[],
        type=an_existing_file("manifest"),
        help="a CSV or Parquet file with a 'path' column naming input files (relative to its folder); "
        "may be given more than once",
    )
    p.add_argument(
        "--address",
        help="the Ray cluster to run on: 'auto' (the one this machine belongs to), HOST:PORT or "
        "ray://HOST:PORT; default: start Ray on this machine, listening on loopback only",
    )
    p.add_argument(
        "--workers",
        type=a_whole_number(1),
        help="model actors, each running the model on one core (default: one per CPU of the cluster)",
    )
    p.add_argument(
        "--model", type=a_model, help="ONNX model with its .card.json beside it (default: the shipped model)"
    )
    add_precision_option(p)
    p.add_argument(
        "--heatmaps",
        type=a_folder_to_write,
        help="write heat-map overlay PNGs under this folder (on a cluster: a folder every node can write)",
    )
    p.add_argument(
        "--part-rows",
        type=a_whole_number(1),
        default=10000,
        help="write a Parquet part every this many rows (default 10000)",
    )
    p.add_argument(
        "--part-seconds",
        type=a_number(0, open_low=True),
        default=60.0,
        help="... or when the oldest row not yet written is this many seconds old (default 60)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The command; every way it ends is an exit code and a closing line, never a traceback."""
    if not (args.paths or args.manifest):
        raise ValueError("give files or folders to analyse, or --manifest FILE")
    missing = [name for name in ("ray", "pyarrow") if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not installed: fracsight batch {_MISSING_EXTRA}")
    from fracsight.batch.inputs import gather
    from fracsight.batch.results import ResultsFolder
    from fracsight.inference import Analyser

    loading = time.perf_counter()
    # A bad model, or --precision int8 without the 8-bit copy or its card, fails here: before the
    # results folder is made or Ray started.
    checked = Analyser(args.model, threads=1, batch_size=1, precision=getattr(args, "precision", None))
    checked.close()
    loading = time.perf_counter() - loading  # counted in the start-up, as Ray's start is
    results = ResultsFolder(args.output)
    heat_dir = _heat_dir(args.heatmaps)
    inputs = gather(args.paths, args.manifest, skip_folders=(results.folder, heat_dir))
    if not inputs:
        raise ValueError("no input files found in " + ", ".join([*args.paths, *args.manifest]))
    have, refused_before, duplicates = results.done({shown for shown, _ in inputs})
    todo = [(shown, real) for shown, real in inputs if shown not in results.written]
    _say(f"{len(inputs)} inputs: {have} already done, {len(todo)} to analyse")
    if duplicates:
        _say(f"warning: {args.output} holds {duplicates} rows for paths that had one already")
    tally = _Tally(len(inputs), have, refused_before)
    if not todo:
        return tally.finish(args.output, seconds=0.0, startup=0.0, analysed=0)
    return _analyse(args, checked, results, todo, heat_dir, tally, loading)


class _Tally:
    """Counts over all the run's inputs, earlier runs' rows included: the summary and exit code."""

    def __init__(self, total: int, have: int, refused: Counter[str]) -> None:
        self.total = total
        self.rows = have
        self.refused = Counter(refused)

    def add(self, row: dict) -> None:
        self.rows += 1
        if row["error_code"] is not None:
            self.refused[row["error_code"]] += 1

    def finish(self, output: str, seconds: float, startup: float, analysed: int) -> int:
        if analysed:
            _say(
                f"this run: {analysed} inputs in {seconds:.1f} s ({analysed / max(seconds, 1e-9):.1f} "
                f"images/s), {startup:.1f} s of it starting Ray"
            )
        codes = ", ".join(f"{code} {n}" for code, n in self.refused.most_common())
        refused = sum(self.refused.values())
        _say(
            f"{self.rows} of {self.total} inputs have their row in {output}: "
            f"{self.rows - refused} analysed, {refused} refused" + (f" ({codes})" if codes else "")
        )
        return 1 if refused else 0


def _analyse(
    args, checked, results, todo: list[tuple[str, str]], heat_dir: Path | None, tally: _Tally, loading: float
) -> int:
    """Run ``todo`` on Ray with the model ``checked`` (the file that runs: float32 or its 8-bit
    copy, with its card), which took ``loading`` seconds to load and check."""
    from tqdm import tqdm

    from fracsight.batch import engine

    started = time.perf_counter() - loading
    verbose = logging.getLogger("fracsight").getEffectiveLevel() <= logging.DEBUG
    engine.connect(args.address, verbose=verbose)
    startup = time.perf_counter() - started
    bar = stream = None
    try:
        import ray

        plan = engine.Plan(
            size=checked.size,
            model_files=ray.put(engine.model_files(checked.model_path)),  # the file that runs, and its card
            onnx_sha256=checked.identity.onnx_sha256,
            heatmaps=str(heat_dir.resolve()) if heat_dir is not None else None,
        )
        stream = engine.RowStream(engine.pipeline(todo, plan, args.workers or engine.cluster_cpus()))
        bar = tqdm(total=len(todo), unit="img", disable=args.no_progress, file=sys.stderr, smoothing=0.1)
        writer = _PartWriter(results, args.part_rows, args.part_seconds, tally, bar)
        signals = _Signals()
        try:
            with signals:
                while not signals.received:
                    try:
                        writer.take(stream.next(timeout=0.25))
                    except StopIteration:
                        break
                    writer.flush_if_due()
                writer.flush()
        except OSError as exc:
            bar.close()
            _say(
                f"stopped after {writer.done} of {len(todo)} inputs: cannot write to {args.output}: "
                f"{exc.strerror or exc}"
            )
            return 2
        except Exception as exc:  # noqa: BLE001 - a lost cluster or a bug: keep the rows, say how to go on
            logger.debug("the run failed", exc_info=True)
            _flush_on_stop(writer)
            bar.close()
            if not signals.received:  # (a Ctrl-C in the terminal may reach Ray's processes too)
                _say(
                    f"the run failed after {writer.done} of {len(todo)} inputs "
                    f"({type(exc).__name__}: {_first_line(exc)}); "
                    f"{args.output} keeps their rows: run the same command to continue"
                )
                return 3
        if signals.received:
            bar.close()
            _say(
                f"interrupted ({signal.Signals(signals.received).name}) after {writer.done} of "
                f"{len(todo)} inputs; {args.output} keeps their rows: run the same command to "
                f"analyse the other {len(todo) - writer.done}"
            )
            return 128 + signals.received
        bar.close()
        return tally.finish(args.output, time.perf_counter() - started, startup, writer.done)
    finally:
        if bar is not None:
            bar.close()
        engine.disconnect(stream, verbose)


class _PartWriter:
    """Rows as they come, each path once, into a part every ``rows`` rows or ``seconds`` seconds."""

    def __init__(self, results, rows: int, seconds: float, tally: _Tally, bar) -> None:
        self.results, self.rows, self.seconds, self.tally, self.bar = results, rows, seconds, tally, bar
        self.buffer: list[dict] = []
        self.buffered: set[str] = set()
        self.oldest: float | None = None
        self.done = 0

    def take(self, block: list[dict] | None) -> None:
        new = 0
        for row in block or ():
            if row["path"] in self.results.written or row["path"] in self.buffered:
                continue  # a retried task's row that was already taken
            self.buffer.append(row)
            self.buffered.add(row["path"])
            self.tally.add(row)
            new += 1
        if new:
            self.done += new
            self.oldest = self.oldest or time.monotonic()
            self.bar.update(new)
            self.bar.set_postfix(refused=sum(self.tally.refused.values()), refresh=False)

    def flush_if_due(self) -> None:
        if self.buffer and (len(self.buffer) >= self.rows or time.monotonic() - self.oldest >= self.seconds):
            self.flush()

    def flush(self) -> None:
        self.results.write(self.buffer)
        self.buffer, self.buffered, self.oldest = [], set(), None


class _Signals:
    """While active, SIGINT and SIGTERM are noted (``received``), not raised: the loop stops at its
    next turn, a part being written is finished, and no exception lands inside Ray's code."""

    def __init__(self) -> None:
        self.received: int = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        try:
            self._previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: signals are not ours to take
            self._previous = {}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, _frame: object) -> None:
        self.received = self.received or signum


def _flush_on_stop(writer: _PartWriter) -> None:
    """Write the rows already done; if the disk refuses, they are analysed again next time."""
    try:
        writer.flush()
    except OSError as exc:
        _say(f"the last {len(writer.buffer)} rows could not be written ({exc.strerror or exc})")


def _heat_dir(raw: str | None) -> Path | None:
    if not raw:
        return None
    folder = Path(raw)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--heatmaps {raw}: cannot create the folder: {exc.strerror or exc}") from exc
    return folder


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _say(text: str) -> None:
    print(f"{_NAME}: {text}", file=sys.stderr, flush=True)
