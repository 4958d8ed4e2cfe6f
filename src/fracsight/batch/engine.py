"""The Ray Data pipeline of ``fracsight batch``: paths -> decode tasks -> model actors (-> heat maps).

* **Decode and preprocess** run as Ray tasks (:func:`decode`): each Ray worker process keeps one
  :class:`~fracsight.inference.Preparer` and so one decoder process
  (:class:`fracsight.io.DecoderPool`): a file that makes a native decoder abort or hang costs that
  file (a ``decoder_failed`` row), never the task.
* **The model** runs in a pool of actors (:class:`ModelActor`), each loading it once and running
  :meth:`Analyser.finish <fracsight.inference.Analyser.finish>` on one image at a time with one
  thread, exactly as ``predict`` does: the probabilities are ``predict``'s to the last digit.
  The model's files travel to the actors through Ray's object store, so on a cluster only the
  inputs (and the heat-map folder) need a file system that every node sees.
* **Heat maps** (optional) are drawn and written by a third stage of tasks (:func:`draw`).

CPU shares: a decode task asks for 0.8 CPU and a model actor for 0.2. The shares are what Ray
counts, not what runs: a decode task spends most of its time waiting on its decoder process, and
an actor is busy only while a prepared image is there to run, so whole CPUs for each would leave
cores idle, or (on a small machine) no room for decoding beside the actors. With these shares one
core holds one decode task and one actor, which keeps both busy (measured in
``benchmarks/batch_speed.py``).

Tasks and actors that die (a lost node, a killed process) are retried by Ray Data (Ray's
defaults: tasks retried, actors restarted, without limit); their rows come back from the retry,
and the driver writes each path once (:mod:`fracsight.batch.results`).
Nothing here logs a file's name or a header value: Ray keeps worker logs on every node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracsight._version import __version__
from fracsight.batch.results import COLUMNS, row_of

__all__ = ["ModelActor", "Plan", "connect", "decode", "draw", "heatmap_target", "pipeline", "RowStream"]

DECODE_CPUS = 0.8
MODEL_CPUS = 0.2
# Inputs per block, at most; each task and each actor call takes one block (``batch_size=None``:
# Ray Data would otherwise bundle blocks up to a batch size). Small enough that a retried task
# repeats little work and rows reach the results steadily, large enough that Ray's cost per task
# (a few ms) stays small.
ROWS_PER_TASK = 16
MODEL_FILE = "model.onnx"
CARD_FILE = "model.card.json"


@dataclass(frozen=True)
class Plan:
    """What every stage needs to know: the model's input side, its files (an object reference),
    its sha256 (checked by each actor), and where heat maps go (None: none drawn)."""

    size: int
    model_files: Any  # ray.ObjectRef to {file name: bytes}
    onnx_sha256: str | None
    heatmaps: str | None = None


def connect(address: str | None, verbose: bool = False) -> bool:
    """Join the cluster at ``address`` ('auto', 'HOST:PORT', 'ray://HOST:PORT'), or start a Ray
    instance on this machine that listens on loopback only. Returns True when it started one."""
    local = address is None
    if not local and address != "auto":
        _check_reachable(address)  # Ray itself would retry a wrong address for minutes, silently
    loopback = local or _is_loopback(address)
    if loopback:
        # Ray 2.60 listens on every interface unless it runs as a single machine, which this
        # variable makes it do: its node address becomes 127.0.0.1 and its servers listen there
        # only (without it Ray turns even an explicit 127.0.0.1 into the machine's outward
        # address). Read when Ray is imported, so set here, and on Ray's constant in case it was.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if local:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray's default, without its warning
    # Never start a Ray instance behind the command's back (Ray Data would, from its threads, if
    # called after the run has left Ray).
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    if not verbose:
        # Ray's C++ core writes its errors to the driver's console; one of them comes with every
        # actor pool of Ray Data (its arguments are in the object store), so they stay off it.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import ray
    from ray._private import auto_init_hook, ray_constants

    auto_init_hook.enable_auto_connect = False  # read when Ray is imported: in case it already was
    if loopback:
        ray_constants.ENABLE_RAY_CLUSTER = False
    if not verbose:  # Ray Data's advice on tuning it is for its own users, not fracsight's
        warnings.filterwarnings("ignore", module=r"ray\.")
    with contextlib.nullcontext() if verbose else _console_silenced():
        ray.init(
            address="local" if local else address,
            include_dashboard=False,
            logging_level=logging.INFO if verbose else logging.ERROR,
            log_to_driver=verbose,
        )
    _quiet_ray_data(verbose)
    return local


@contextlib.contextmanager
def _console_silenced() -> Iterator[None]:
    """Standard error to /dev/null while Ray starts (its C++ core announces its log level there)
    or stops. A failure still raises, with its message, once the console is back."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Raises ConnectionError, in words, when nothing accepts a connection at the address's port."""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except ValueError:
        raise ConnectionError(f"--address {address}: give HOST:PORT, ray://HOST:PORT or auto") from None
    except OSError as exc:
        raise ConnectionError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or type(exc).__name__})"
        ) from None


def _is_loopback(address: str) -> bool:
    """Whether a Ray address ('HOST:PORT', 'ray://HOST:PORT') names this machine's loopback."""
    import ipaddress

    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def disconnect(stream: RowStream | None = None, verbose: bool = False) -> None:
    """Stop the pipeline (``stream``) and leave Ray (stopping it if this run started it). The
    console is silenced meanwhile: as Ray Data stops its actors, Ray reports each task it cut
    short, after the command's own closing line."""
    import ray

    with contextlib.nullcontext() if verbose else _console_silenced():
        if stream is not None:
            stream.close()
        ray.shutdown()


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _quiet_ray_data(verbose: bool) -> None:
    """Ray Data's own progress bars and its INFO lines on the console would mix with ours."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    if not verbose:
        for handler in logging.getLogger("ray.data").handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
                handler.addFilter(_not_about_progress_bars)


def _not_about_progress_bars(record: logging.LogRecord) -> bool:
    """Ray Data warns that its progress bars are off: they are, for ours."""
    return not record.getMessage().startswith("Progress bars disabled")


def model_files(model_path: Path) -> dict[str, bytes]:
    """The model and its card, as the actors receive them."""
    from fracsight.model_card import card_path

    return {MODEL_FILE: model_path.read_bytes(), CARD_FILE: card_path(model_path).read_bytes()}


def pipeline(inputs: list[tuple[str, str]], plan: Plan, workers: int):
    """The dataset of result rows (plus heat-map columns until drawn) for ``inputs``, (path as
    shown, path to open) pairs; nothing runs until the driver iterates it (:class:`RowStream`)."""
    import ray

    items = [{"path": shown, "raw": os.fsencode(real)} for shown, real in inputs]
    blocks = max(1, -(-len(items) // ROWS_PER_TASK))
    workers = min(workers, blocks)  # an actor with no block to run would only cost its start
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    dataset = dataset.map_batches(
        decode,
        fn_kwargs={"size": plan.size, "keep_pixels": plan.heatmaps is not None},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=DECODE_CPUS,
    )
    dataset = dataset.map_batches(
        ModelActor,
        fn_constructor_kwargs={"plan": plan, "version": __version__},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=MODEL_CPUS,
        compute=ray.data.ActorPoolStrategy(size=workers),
    )
    if plan.heatmaps is not None:
        dataset = dataset.map_batches(
            draw,
            fn_kwargs={"folder": plan.heatmaps, "size": plan.size},
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=DECODE_CPUS,
        )
    return dataset


class RowStream:
    """The dataset's rows, a block at a time as they are done (in no particular order), iterated
    in a background thread so that the driver waits with a timeout: it notices Ctrl-C and writes
    a part on time while the cluster is busy, and no signal handler ever runs inside Ray's code.
    :meth:`close` stops the iteration (Ray Data then stops the pipeline) before Ray is left."""

    _END = object()

    def __init__(self, dataset) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(dataset,), name="fracsight-rows", daemon=True)
        self._thread.start()

    def _run(self, dataset) -> None:
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
                if not self._put(batch.select(COLUMNS).to_pylist()):
                    return  # leaving the loop closes Ray Data's iterator, which stops the pipeline
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver, which says what happened
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def next(self, timeout: float) -> list[dict[str, Any]] | None:
        """The next block's rows; None if none came within ``timeout`` seconds. Raises
        StopIteration at the end, and what the pipeline raised if it failed."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking rows and wait (up to ``timeout_s``) until the pipeline has stopped; rows
        not taken yet are not written, and the next run analyses their inputs."""
        self._stop.set()
        self._thread.join(timeout_s)


# --- inside the Ray workers -------------------------------------------------------------------

_PREPARERS: dict[int, Any] = {}
_QUIET = False


def _quiet_worker() -> None:
    """A worker's logs stay on its node: keep file names and header values out of them (a
    library's warning may quote a header value; fracsight's warnings name the file)."""
    global _QUIET
    if not _QUIET:
        warnings.simplefilter("ignore")
        logging.getLogger("fracsight").setLevel(logging.ERROR)
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
        _QUIET = True


def _preparer(size: int):
    """This worker process's Preparer, with one decoder process, kept between tasks."""
    from fracsight.inference import Preparer

    if size not in _PREPARERS:
        _PREPARERS[size] = Preparer(size, workers=1, reduce_pixels=True)  # as predict decodes
    return _PREPARERS[size]


def _decoded_schema(keep_pixels: bool):
    import pyarrow as pa

    fields = [
        ("path", pa.string()),
        ("image", pa.binary()),
        ("scale", pa.float64()),
        ("pad_x", pa.int32()),
        ("pad_y", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("study_uid", pa.string()),
        ("series_uid", pa.string()),
        ("sop_uid", pa.string()),
        ("error_code", pa.string()),
        ("error", pa.string()),
        ("decode_ms", pa.float64()),
        ("preprocess_ms", pa.float64()),
        ("body_part", pa.string()),
    ]
    if keep_pixels:
        fields += [("pixels", pa.binary()), ("pixels_height", pa.int32()), ("pixels_width", pa.int32())]
    return pa.schema(fields)


def decode(batch, size: int, keep_pixels: bool):
    """A Ray task: each input decoded (in the worker's decoder process) and made model input, or
    refused with its reason. The model input travels as float32 bytes, unchanged."""
    import pyarrow as pa

    _quiet_worker()
    preparer = _preparer(size)
    out: list[dict[str, Any]] = []
    for shown, raw in zip(batch.column("path").to_pylist(), batch.column("raw").to_pylist(), strict=True):
        item = preparer.prepare(os.fsdecode(raw))
        row: dict[str, Any] = {"path": shown, **item.ids.to_record()}
        if item.refusal is not None:
            row.update(error_code=item.refusal.code, error=item.refusal.reason)
        else:
            box = item.letterbox
            row.update(
                image=np.ascontiguousarray(item.image, dtype=np.float32).tobytes(),
                scale=box.scale,
                pad_x=box.pad_x,
                pad_y=box.pad_y,
                height=box.height,
                width=box.width,
                decode_ms=item.timings_ms["decode"],
                preprocess_ms=item.timings_ms["preprocess"],
                body_part=item.body_part,
            )
            if keep_pixels:
                pixels = item.radiograph.pixels
                row.update(
                    pixels=np.ascontiguousarray(pixels, dtype=np.float32).tobytes(),
                    pixels_height=pixels.shape[0],
                    pixels_width=pixels.shape[1],
                )
        out.append(row)
    return pa.Table.from_pylist(out, schema=_decoded_schema(keep_pixels))


class ModelActor:
    """A Ray actor: the model loaded once, then one image at a time, as ``predict`` runs it."""

    def __init__(self, plan: Plan, version: str) -> None:
        import ray

        from fracsight.inference import Analyser

        if version != __version__:
            raise RuntimeError(
                f"this Ray worker has fracsight {__version__} but the run was started with {version}: "
                "install the same fracsight on every node"
            )
        _quiet_worker()
        self.plan = plan
        with tempfile.TemporaryDirectory(prefix="fracsight-model-") as folder:
            for name, data in ray.get(plan.model_files).items():
                (Path(folder) / name).write_bytes(data)
            self.analyser = Analyser(Path(folder) / MODEL_FILE, threads=1, batch_size=1)
        if self.analyser.identity.onnx_sha256 != plan.onnx_sha256:
            raise RuntimeError("the model the actor received differs from the one the run was started with")

    def __call__(self, batch):
        import pyarrow as pa

        from fracsight.finding import Finding, Refusal, SourceIds
        from fracsight.inference import Prepared
        from fracsight.preprocess import Letterbox

        size = self.plan.size
        out: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            item = Prepared(row["path"])
            if row["error_code"] is not None:
                item.refusal = Refusal(row["path"], row["error_code"], row["error"])
            else:
                item.image = _array(row["image"], size, size)
                item.letterbox = Letterbox(
                    size, row["scale"], row["pad_x"], row["pad_y"], row["height"], row["width"]
                )
                item.ids = SourceIds(row["study_uid"], row["series_uid"], row["sop_uid"])
                item.timings_ms = {"decode": row["decode_ms"], "preprocess": row["preprocess_ms"]}
                item.body_part = row["body_part"]
            outcome = self.analyser.finish(item)
            result = row_of({**outcome.to_record(), "heatmap": None})
            if self.plan.heatmaps is not None:
                drawable = isinstance(outcome, Finding)
                result.update(
                    heat=outcome.heatmap.astype(np.float32).tobytes() if drawable else None,
                    heat_height=outcome.heatmap.shape[0] if drawable else None,
                    heat_width=outcome.heatmap.shape[1] if drawable else None,
                    scale=row["scale"],
                    pad_x=row["pad_x"],
                    pad_y=row["pad_y"],
                    pixels=row["pixels"],
                    pixels_height=row["pixels_height"],
                    pixels_width=row["pixels_width"],
                )
            out.append(result)
        return pa.Table.from_pylist(out, schema=_result_schema(self.plan.heatmaps is not None))


def _result_schema(with_heatmap_inputs: bool):
    import pyarrow as pa

    from fracsight.batch.results import schema

    result = schema()
    if with_heatmap_inputs:
        for name, kind in (
            ("heat", pa.binary()),
            ("heat_height", pa.int32()),
            ("heat_width", pa.int32()),
            ("scale", pa.float64()),
            ("pad_x", pa.int32()),
            ("pad_y", pa.int32()),
            ("pixels", pa.binary()),
            ("pixels_height", pa.int32()),
            ("pixels_width", pa.int32()),
        ):
            result = result.append(pa.field(name, kind))
    return result


def heatmap_target(folder: str | Path, shown: str) -> Path:
    """Where an input's heat-map picture goes: ``FOLDER/xx/NAME~HASH.heatmap.png``, ``HASH`` from
    the input's absolute path, so names never collide across folders, nodes or runs, and ``xx``
    (the hash's first two digits) keeps any one folder to a few thousand pictures per million."""
    import hashlib

    from fracsight.io.listing import OVERLAY_SUFFIX

    digest = hashlib.sha256(shown.encode("utf-8")).hexdigest()
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(shown))
    name = name.encode()[:100].decode(errors="ignore")
    return Path(folder) / digest[:2] / f"{name}~{digest[:12]}{OVERLAY_SUFFIX}"


def draw(batch, folder: str, size: int):
    """A Ray task: each analysed input's heat-map overlay written (whole or not at all), its row
    saying where, or why not (``heatmap_not_written``); the pixels are dropped here."""
    import pyarrow as pa

    from fracsight.batch.results import schema
    from fracsight.decide import Category
    from fracsight.finding import Finding, SourceIds, write_heatmap
    from fracsight.model_card import ModelIdentity
    from fracsight.preprocess import Letterbox
    from fracsight.safety import Scope

    _quiet_worker()
    out: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        if row["heat"] is not None and row["pixels"] is not None:
            finding = Finding(
                probability=row["probability"],
                category=Category(row["category"]),
                heatmap=_array(row["heat"], row["heat_height"], row["heat_width"]),
                letterbox=Letterbox(
                    size, row["scale"], row["pad_x"], row["pad_y"], row["height"], row["width"]
                ),
                model=ModelIdentity(row["model_id"], row["model_version"], row["onnx_sha256"], {}),
                source=row["path"],
                ids=SourceIds(row["study_uid"], row["series_uid"], row["sop_uid"]),
                scope=Scope(row["ood_score"], row["category"] == Category.OUT_OF_SCOPE.value,
                            row["scope_reason"], row["region"]),  # fmt: skip
            )
            pixels = _array(row["pixels"], row["pixels_height"], row["pixels_width"])
            target = heatmap_target(folder, row["path"])
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # write_heatmap says why the picture could not be written
            row.update(write_heatmap(finding, pixels, target))
        out.append({column: row[column] for column in COLUMNS})
    return pa.Table.from_pylist(out, schema=schema())


def _array(data: bytes, height: int, width: int) -> np.ndarray:
    """float32 pixels sent as bytes, back as a (read-only) array: the same values, bit for bit."""
    return np.frombuffer(data, dtype=np.float32).reshape(height, width)
