"""The one way the service works off a queue in the background: a thread that calls ``run_once``.

The analysis worker, the DICOM results stage and the sender each own a queue in the store. They
share the same life: take back what a crash left half done (:meth:`QueueLoop.resume`), work
while there is work, sleep until woken or until :meth:`QueueLoop.idle_wait` passes, finish the item
in hand on :meth:`QueueLoop.stop`, and never let an error end the thread (the store or the disk
may fail for a while; the loop logs it and tries again after ``retry_s``).
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class QueueLoop:
    """Base of the service's background workers; subclasses give :meth:`run_once` and ``name``."""

    name = "fracsight-queue"

    def __init__(self, poll_s: float, retry_s: float | None = None) -> None:
        self.poll_s = poll_s
        self.retry_s = poll_s if retry_s is None else retry_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Work off what is due now; returns how much was done (0: nothing, sleep)."""
        raise NotImplementedError

    def resume(self) -> None:
        """Before the thread starts: queue again what a crash or a kill left half done."""

    def idle_wait(self) -> float:
        """Seconds to sleep when there was nothing to do (a wake ends the sleep sooner)."""
        return self.poll_s

    def finish_in_hand(self) -> None:
        """After the loop ends on :meth:`stop`: finish what was taken from the queue ahead."""

    def start(self) -> None:
        self.resume()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def wake(self, *_: object) -> None:
        """Something was queued: look now rather than after the idle wait."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the item in hand (its result is written), then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except OSError as exc:  # a full or failing disk: say so in one line, it is not a bug
                log.error(
                    "%s: %s; trying again in %.0f s",
                    self.name,
                    exc.strerror or type(exc).__name__,
                    self.retry_s,
                )
                self._stop.wait(self.retry_s)
                continue
            except Exception:  # noqa: BLE001 - the store failing must not end the thread for good
                log.exception("%s: unexpected error; trying again in %.0f s", self.name, self.retry_s)
                self._stop.wait(self.retry_s)
                continue
            if not worked:
                self._wake.wait(self.idle_wait())
                self._wake.clear()
        self.finish_in_hand()
