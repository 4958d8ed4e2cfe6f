"""Inside a decoder worker process: read one file per job with :func:`read_radiograph`, reply, repeat.

Started by :mod:`fracsight.io.pool` as ``python -c`` with the socket's descriptor, the memory
cap and the log level as arguments (a fresh interpreter: nothing of the caller's state, its
main module or its threads comes along). Before it reads anything the process is made safe
to lose: whatever native code prints goes to /dev/null (GDCM and OpenJPEG print megabytes
about a damaged codestream, and libstdc++ prints the exception that aborts), it dies with
its parent, and its address space is capped so that an allocation a file asks for fails
here as ``MemoryError`` instead of taking the machine's memory. Python warnings and log
records are caught per file: fracsight's own messages (which never quote the file) go
back to the parent, the libraries' are only counted, as they may quote header values.

The messages are small frozen dataclasses, pickled by :class:`multiprocessing.connection.Connection`:
the parent sends a :class:`Job`, the worker answers with one :data:`Reply` (:class:`Decoded`,
:class:`Refused`, :class:`Missing`, :class:`OutOfMemory` or :class:`Failed`), and after a
:class:`Decoded` the pixels follow (:mod:`shared_pixels`: in shared memory, not pickled). Every
reply carries the file's :class:`Note` list (log records to repeat in the parent).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import numpy as np

from fracsight.io import shared_pixels
from fracsight.io.radiograph import RefusedInput
from fracsight.io.read import read_radiograph, read_radiograph_bytes

_OWN_LOGGER = "fracsight"
READY = "ready"  # the worker's first message: its readers are loaded, it takes jobs
# Freed Pillow memory blocks (16 MB each) a worker keeps for its next images once it has been
# asked to reduce one (fracsight.io.reduced makes two float images per large image): a fresh
# 3000 x 3000 float image costs 25-30 ms of page faults and zeroing, a reused one 5-8 ms. At most
# 128 MB stays with an idle worker, within its memory cap; workers that never reduce keep none.
_PILLOW_BLOCKS = 8


@dataclass(frozen=True)
class Job:
    """One file to read: ``path`` (absolute), or the bytes of a file; ``name`` stands for it in messages."""

    name: str
    path: str | None
    data: bytes | None
    max_pixels: int | None
    needed_side: int | None
    model_side: int | None = None  # reduce towards needed_side and this model input (io.reduced)


class Note(NamedTuple):
    """One log record of the worker's, repeated in the parent under the same logger and level."""

    logger: str
    level: int
    message: str


@dataclass(frozen=True)
class Decoded:
    """The file was read; its pixels (``shape``, ``dtype`` as numpy's ``dtype.str``) follow in
    shared memory. ``dicom`` is the header data set, None for other formats or one that would not
    pickle."""

    shape: tuple[int, ...]
    dtype: str
    format: str
    metadata: dict[str, Any]
    dicom: Any
    notes: list[Note]
    model_base: np.ndarray | None = None  # small (the model's size): pickled with the reply


@dataclass(frozen=True)
class Refused:
    """The reader refused the file: ``error`` names the :class:`RefusedInput` subclass, ``reason``
    says why in words a user can act on. The worker stays."""

    error: str
    reason: str
    notes: list[Note]


@dataclass(frozen=True)
class Missing:
    """No such file (or a link to one that is gone). The worker stays."""

    notes: list[Note]


@dataclass(frozen=True)
class OutOfMemory:
    """Decoding needed more memory than the worker's cap; the worker ends after saying so."""

    notes: list[Note]


@dataclass(frozen=True)
class Failed:
    """The reader failed in a way it does not name (``error``: the exception's type only, never its
    message, which may quote the file); the worker ends after saying so."""

    error: str
    notes: list[Note]


# What a worker answers to one Job.
Reply = Decoded | Refused | Missing | OutOfMemory | Failed


def main() -> None:
    """Entry point; ``argv``: the socket's file descriptor, the memory cap (0: none), the log level."""
    descriptor, memory_bytes, log_level = (int(arg) for arg in sys.argv[1:4])
    _warm_up()
    conn = Connection(socket.socket(fileno=descriptor).detach())
    _quiet()
    _cap_memory(memory_bytes)
    conn.send(READY)
    serve(conn, log_level)


def serve(conn: Connection, log_level: int) -> None:
    """A worker's life: read jobs from ``conn`` until the parent closes it or a file breaks us."""
    capture = _Capture(log_level)
    root = logging.getLogger()
    root.handlers[:] = [capture]
    root.setLevel(log_level)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        reply, pixels, healthy = _read(job, capture)
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError):
            conn.send(replace(reply, dicom=None))  # a DICOM header that will not pickle stays here
        if pixels is not None:
            shared_pixels.send(conn, pixels)
        if not healthy:
            return  # after a MemoryError or an unexpected error, the next file gets a fresh process


def _read(job: Job, capture: _Capture) -> tuple[Reply, np.ndarray | None, bool]:
    capture.start()
    if job.model_side:
        from PIL import Image

        Image.core.set_blocks_max(_PILLOW_BLOCKS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if job.data is None:
                path = job.path or job.name
                radiograph = read_radiograph(path, job.max_pixels, job.needed_side, job.model_side)
            else:
                radiograph = read_radiograph_bytes(
                    job.data, job.name, job.max_pixels, job.needed_side, job.model_side
                )
        except RefusedInput as refusal:
            notes = _notes(job, capture, caught)
            return Refused(type(refusal).__name__, refusal.reason, notes), None, True
        except FileNotFoundError:
            return Missing(_notes(job, capture, caught)), None, True
        except MemoryError:
            return OutOfMemory(_notes(job, capture, caught)), None, False
        except Exception as error:  # noqa: BLE001 - reported by type; the process is replaced
            return Failed(type(error).__name__, _notes(job, capture, caught)), None, False
    pixels = np.ascontiguousarray(radiograph.pixels)
    notes = _notes(job, capture, caught)
    reply = Decoded(
        pixels.shape,
        pixels.dtype.str,
        radiograph.format,
        radiograph.metadata,
        radiograph.dicom,
        notes,
        radiograph.model_base,
    )
    return reply, pixels, True


def _notes(job: Job, capture: _Capture, caught: list[warnings.WarningMessage]) -> list[Note]:
    """The worker's log records for ``job``, naming the file by ``job.name`` only: where the caller
    gave a name for a path (the service names a stored image without its id), the path is replaced."""
    notes = capture.notes(job.name, caught)
    if job.path is None or job.path == job.name:
        return notes
    return [Note(n.logger, n.level, n.message.replace(job.path, job.name)) for n in notes]


def _warm_up() -> None:
    """Load the decoders now, so that the first file does not pay for it (Pillow's plug-ins, GDCM)."""
    from PIL import Image

    Image.init()
    try:
        import pydicom.pixels.decoders.gdcm  # noqa: F401 - imports python-gdcm when installed
    except ImportError:
        pass


class _Capture(logging.Handler):
    """Keeps fracsight's log records of the current file and counts everyone else's."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.own: list[Note] = []
        self.withheld: Counter[str] = Counter()

    def start(self) -> None:
        self.own, self.withheld = [], Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == _OWN_LOGGER or record.name.startswith(_OWN_LOGGER + "."):
            self.own.append(Note(record.name, record.levelno, record.getMessage()))
        else:
            self.withheld[record.name.split(".")[0]] += 1

    def notes(self, name: str, caught: list[warnings.WarningMessage]) -> list[Note]:
        """Our own records as they were, and one neutral line for what the libraries said."""
        withheld = self.withheld + Counter(
            (w.filename.rsplit("site-packages/", 1)[-1].split("/")[0] or "python") for w in caught
        )
        notes = list(self.own)
        if withheld:
            sources = ", ".join(f"{count} from {source}" for source, count in sorted(withheld.items()))
            notes.append(
                Note(
                    "fracsight.io.worker",
                    logging.DEBUG,
                    f"{name}: library warnings withheld ({sources}): they may quote the file's contents",
                )
            )
        return notes


def _quiet() -> None:
    """Leave Ctrl-C to the parent and send anything native code prints to /dev/null."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        import gdcm

        gdcm.Trace.WarningOff()
        gdcm.Trace.ErrorOff()
        gdcm.Trace.DebugOff()
    except ImportError:
        pass


def _cap_memory(extra_bytes: int | None) -> None:
    """Cap the address space at what the process holds now plus ``extra_bytes`` (Linux)."""
    if not extra_bytes:
        return
    try:
        import resource

        with open("/proc/self/statm") as statm:
            current = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = current + extra_bytes
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, OSError, ValueError):
        pass  # no /proc or no RLIMIT_AS: the time limit still stops a runaway file
