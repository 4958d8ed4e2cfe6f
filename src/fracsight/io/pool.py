"""Decoder worker processes: a file that crashes, hangs or floods a native decoder costs one row.

GDCM, OpenJPEG and libjpeg run on untrusted bytes, and some damage makes them abort the
whole process (a C++ exception that escapes Python), loop, or allocate gigabytes. So
:class:`DecoderPool` reads each file in a worker process (:mod:`fracsight.io.worker`):
a worker that dies or runs past the time limit takes only its current file, which is
refused with :class:`DecoderFailed` and not retried; the next file gets a new worker.
``predict``, and any service that receives files, reads through one pool::

    with DecoderPool() as pool:
        radiograph = pool.read("wrist.dcm")          # or pool.read_bytes(data, "upload 17")

It returns what :func:`read_radiograph` returns and raises what it raises. A worker is a
fresh interpreter (``python -c``, not :mod:`multiprocessing`, so the caller's main module is
never re-run and its threads never forked) that starts in about 0.3 s, on first use and
after a crash; the pixels come back in shared memory (:mod:`shared_pixels`). Thread-safe:
up to ``workers`` reads run at once, the others wait.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from fracsight.io import limits, shared_pixels
from fracsight.io.radiograph import NotARadiograph, Radiograph, RefusedInput, UnreadableImage
from fracsight.io.truncation import TruncatedImage
from fracsight.io.worker import READY, Decoded, Failed, Job, Missing, OutOfMemory, Refused, Reply

logger = logging.getLogger(__name__)

_REFUSALS: dict[str, type[RefusedInput]] = {
    cls.__name__: cls for cls in (RefusedInput, UnreadableImage, NotARadiograph, TruncatedImage)
}
_STOP_WAIT_S = 5.0
# A worker that has not said it is ready after this long is broken, not slow (it takes 0.3 s).
_START_TIMEOUT_S = 60.0
# ``-c`` puts the working directory first on sys.path: dropped, so that a folder named like a
# module where fracsight is run cannot replace it in the worker.
_WORKER_CODE = "import sys; sys.path.pop(0); from fracsight.io.worker import main; main()"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds fracsight/


class DecoderFailed(UnreadableImage):
    """The decoder process died or ran past its time on this file; the batch goes on without it."""

    code = "decoder_failed"


class _Lost(Exception):
    """The worker is gone or stopped; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Worker:
    """One worker process and the parent's end of its socket; used by one thread at a time."""

    def __init__(self, memory_bytes: int | None) -> None:
        ours, theirs = socket.socketpair()
        level = logging.getLogger("fracsight").getEffectiveLevel()
        arguments = [str(theirs.fileno()), str(memory_bytes or 0), str(level)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, *arguments],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_worker_environment(),
            start_new_session=True,  # Ctrl-C in the terminal is for the parent, which stops us
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.healthy = True
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        """The worker says it is ready once its readers are loaded; if it dies first, say why."""
        try:
            ready = self.conn.poll(_START_TIMEOUT_S) and self.conn.recv() == READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.stop()
            error = (self.process.stderr.read() if self.process.stderr else b"").decode(errors="replace")
            last = error.strip().splitlines()[-1:] or [f"exit code {self.process.returncode}"]
            raise RuntimeError(f"the decoder worker process could not start: {last[0]}")
        if self.process.stderr:
            self.process.stderr.close()  # it writes to /dev/null from now on

    def run(self, job: Job, timeout_s: float) -> tuple[Reply, np.ndarray | None]:
        """The reply to ``job`` and, for a decoded image, its pixels; _Lost if the worker fails."""
        deadline = time.monotonic() + timeout_s
        try:
            self.conn.send(job)
            self._wait(deadline, timeout_s)
            reply: Reply = self.conn.recv()
            pixels = None
            if isinstance(reply, Decoded):
                self._wait(deadline, timeout_s)
                pixels = shared_pixels.receive(self.conn, reply.shape, np.dtype(reply.dtype))
            else:
                self.healthy = isinstance(reply, (Refused, Missing))  # the others end the worker
        except (EOFError, OSError) as error:
            raise _Lost(self._ending()) from error
        return reply, pixels

    def _wait(self, deadline: float, timeout_s: float) -> None:
        if not self.conn.poll(max(0.0, deadline - time.monotonic())):
            raise _Lost(f"it ran past the {timeout_s:g} s limit and was stopped")

    def _ending(self) -> str:
        """How the process ended, in words."""
        try:
            code = self.process.wait(_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            return "its connection broke"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown signal"
            return f"its process was killed by signal {-code} ({name})"
        return f"its process ended (exit code {code})"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()

    def stop(self) -> None:
        """Kill the process (it may be stuck in native code), reap it and close the socket."""
        self.kill()
        try:
            self.process.wait(_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()


def _worker_environment() -> dict[str, str]:
    """The caller's environment, with this fracsight first on the path and one thread per library."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


class DecoderPool:
    """Up to ``workers`` decoder processes, started on demand; see the module's docstring.

    ``timeout_s`` bounds the time per file, ``memory_bytes`` what a worker may allocate on top
    of what it holds at start (None: no cap).
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = limits.DECODE_TIMEOUT_S,
        memory_bytes: int | None = limits.WORKER_MEMORY_BYTES,
    ) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._slots = threading.BoundedSemaphore(self.workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._running: set[_Worker] = set()
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_all, self._idle, self._running)

    def read(
        self,
        path: str | os.PathLike[str],
        max_pixels: int | None = None,
        needed_side: int | None = None,
        name: str | None = None,
        model_side: int | None = None,
    ) -> Radiograph:
        """:func:`~fracsight.io.read_radiograph` in a worker process; ``name`` stands for the file in
        every message (default: its path). With ``model_side`` the worker hands back the image
        already reduced (:mod:`fracsight.io.reduced`): less to pass to this process."""
        shown = str(Path(path))
        job = Job(name or shown, os.path.abspath(shown), None, max_pixels, needed_side, model_side)
        return self._run(job)

    def read_bytes(
        self,
        data: bytes,
        name: str,
        max_pixels: int | None = None,
        needed_side: int | None = None,
        model_side: int | None = None,
    ) -> Radiograph:
        """:func:`~fracsight.io.read_radiograph_bytes` in a worker process."""
        return self._run(Job(name, None, bytes(data), max_pixels, needed_side, model_side))

    def start(self) -> None:
        """Start every worker now rather than at the first files (a service's first images would
        otherwise wait for a process start and its decoders' loading)."""
        with self._lock:
            missing = self.workers - len(self._idle) - len(self._running)
            closed = self._closed
        if closed:
            return
        started = [_Worker(self.memory_bytes) for _ in range(max(0, missing))]
        with self._lock:
            self._idle.extend(started)

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for measuring their memory)."""
        with self._lock:
            workers = [*self._idle, *self._running]
        return [worker.process.pid for worker in workers if worker.alive()]

    def close(self) -> None:
        """Stop every worker; reads still running end with DecoderFailed. The pool can't be reused."""
        with self._lock:
            self._closed = True
            idle, running = list(self._idle), list(self._running)
            self._idle.clear()
        for worker in idle:
            worker.stop()
        for worker in running:  # their threads notice the end of the socket and close it
            worker.kill()

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, job: Job) -> Radiograph:
        with self._slots:
            worker = self._take(job.name)
            try:
                reply, pixels = worker.run(job, self.timeout_s)
            except _Lost as lost:
                worker.healthy = False
                raise DecoderFailed(
                    job.name, f"the decoder failed on this file: {lost.reason}; not retried"
                ) from None
            finally:
                self._give_back(worker)
        for note in reply.notes:
            logging.getLogger(note.logger).log(note.level, "%s", note.message)
        return self._result(job, reply, pixels)

    def _take(self, name: str) -> _Worker:
        with self._lock:
            if self._closed:
                raise DecoderFailed(name, "the decoder pool was closed before this file was read")
            worker = self._idle.pop() if self._idle else None
        if worker is None or not worker.alive():
            if worker is not None:
                worker.stop()
            worker = _Worker(self.memory_bytes)
        with self._lock:
            self._running.add(worker)
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._running.discard(worker)
            keep = worker.healthy and not self._closed
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.stop()

    def _result(self, job: Job, reply: Reply, pixels: np.ndarray | None) -> Radiograph:
        if isinstance(reply, Decoded):
            return Radiograph(
                pixels=pixels,
                source=job.name,
                format=reply.format,
                metadata=reply.metadata,
                dicom=reply.dicom,
                model_base=reply.model_base,
            )
        if isinstance(reply, Refused):
            raise _REFUSALS.get(reply.error, UnreadableImage)(job.name, reply.reason)
        if isinstance(reply, Missing):
            raise FileNotFoundError(f"{job.name}: no such file")
        if isinstance(reply, OutOfMemory):
            limit = f"{self.memory_bytes / (1 << 30):.1f} GiB" if self.memory_bytes else "the machine's"
            raise UnreadableImage(
                job.name, f"decoding needs more memory than a decoder may use ({limit}); refused"
            )
        if isinstance(reply, Failed):
            raise UnreadableImage(job.name, f"could not be read: the reader failed ({reply.error})")
        raise TypeError(f"a decoder worker answered with a {type(reply).__name__}, not a reply")


def _stop_all(idle: list[_Worker], running: set[_Worker]) -> None:
    for worker in [*idle, *running]:
        worker.kill()
