"""The sender: delivers queued result objects to their destination by C-STORE (or STOW-RS), with retries.

A thread claims due sends from the store, opens one association per destination and sends
each file. Delivered: ``sent``. Not delivered because the destination could not be reached,
rejected the association, went away mid-way or was out of resources: due again after a wait
that doubles from :attr:`DicomSettings.retry_base_s` to :attr:`DicomSettings.retry_max_s`, for
as long as it takes (a PACS down for the night gets its results in the morning). Refused by
the destination with a failure status: ``rejected``, kept until a resend
(:func:`resend`, ``fracsight dicom-node --resend``, or the worklist's resend action), since
the same object would be refused again. Every outcome is logged with the image id, the object
kind and the destination; never patient data. A destination that is a URL (``--forward-stow``) is
a DICOMweb archive: the same queue, batches, retries and resends, over STOW-RS
(:mod:`fracsight.service.stow`), HTTP statuses and failure reasons mapped to the same outcomes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from itertools import groupby

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS, code_to_category

from fracsight.service.loop import QueueLoop
from fracsight.service.sends import STALE_CLAIM_S, Send
from fracsight.service.settings import Destination, DicomSettings, StowDestination
from fracsight.service.store import Store, now

log = logging.getLogger(__name__)

BATCH = 32  # sends claimed (and sent over one association per destination) at a time
# Storage's "Refused: Out of Resources" (A7xx): the destination may take the result later, so it is
# retried; any other failure is a refusal, kept for --resend.
_OUT_OF_RESOURCES = frozenset(
    code for code, (_, words) in STORAGE_SERVICE_CLASS_STATUS.items() if words == "Refused: Out of Resources"
)


def delivered(code: int) -> bool:
    """A C-STORE status the destination kept the result with: Success, or a Warning (PS3.4 B.2.3:
    coercion, elements discarded, ... the object is stored)."""
    return code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING)


def worth_retrying(code: int) -> bool:
    """A failure that may pass later (out of resources); any other failure is the destination's
    refusal, kept until ``--resend``."""
    return code in _OUT_OF_RESOURCES


class Sender(QueueLoop):
    """Works off the send queue in a thread until :meth:`stop`; :meth:`wake` when something is queued."""

    name = "fracsight-sender"

    def __init__(
        self,
        store: Store,
        settings: DicomSettings,
        clock: Callable[[], float] = time.time,
        poll_s: float = 1.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        super().__init__(poll_s)

    def resume(self) -> None:
        requeued = self.store.requeue_sending()
        if requeued:
            log.info("resuming: %d interrupted sends queued again", requeued)

    def idle_wait(self) -> float:
        """Until the next send is due (a retry's backoff), at most ``poll_s``."""
        due = self.store.next_send_due()
        if due is None:
            return self.poll_s
        return min(self.poll_s, max(0.05, due - self.clock()))

    def run_once(self) -> int:
        """Send everything due now (one association per destination); returns how many were tried."""
        claimed = self.store.claim_sends(BATCH, now=self.clock())
        for destination, sends in groupby(
            sorted(claimed, key=lambda s: (s.destination, s.id)), key=lambda s: s.destination
        ):
            self._deliver(destination, list(sends))
        return len(claimed)

    # -- one destination -----------------------------------------------------------------

    def _deliver(self, destination: str, sends: list[Send]) -> None:
        if destination.startswith(("http://", "https://")):
            self._deliver_stow(destination, sends)
            return
        try:
            target = Destination.parse(destination)
        except ValueError as exc:
            for send in sends:
                self._rejected(send, str(exc))
            return
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.settings.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.connection_timeout = 10
        for sop_class in sorted({s.sop_class_uid for s in sends}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        connected: list[bool] = []
        try:
            tls = self.settings.tls
            assoc = ae.associate(
                target.host,
                target.port,
                ae_title=target.aet,
                evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True))],
                tls_args=(tls.client_context(), target.host) if self.settings.forward_tls and tls else None,
            )
        except Exception as exc:  # noqa: BLE001 - a bad address is a failed attempt, retried later
            for send in sends:
                self._failed(send, f"could not connect ({type(exc).__name__})")
            return
        if not assoc.is_established:
            reason = _association_failure(assoc, bool(connected))
            for send in sends:
                self._failed(send, reason)
            return
        try:
            for index, send in enumerate(sends):
                if not assoc.is_established:
                    for rest in sends[index:]:
                        self._failed(rest, "the association ended before this object was sent")
                    break
                self._send_one(assoc, send)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send_one(self, assoc, send: Send) -> None:
        path = self.store.data_dir / send.file
        try:
            dataset = pydicom.dcmread(path)
        except FileNotFoundError:
            self._rejected(send, "the result file is missing from the data folder")
            return
        except Exception as exc:  # noqa: BLE001 - a damaged result file cannot be sent, ever
            self._rejected(send, f"the result file could not be read ({type(exc).__name__})")
            return
        try:
            status = assoc.send_c_store(dataset)
        except Exception as exc:  # noqa: BLE001 - e.g. no accepted presentation context
            self._rejected(send, f"not sent: {type(exc).__name__}: {_first_line(exc)}")
            return
        code = int(status.Status) if status and "Status" in status else None
        if code is None:
            self._failed(send, "no answer from the destination (connection lost or timed out)")
        elif delivered(code):
            self.store.send_succeeded(send.id, now())
            log.info("a result (%s) delivered to %s", send.kind, send.destination)
        elif worth_retrying(code):
            self._failed(send, f"destination out of resources (status 0x{code:04X})")
        else:
            self._rejected(send, f"refused by the destination (status 0x{code:04X})")

    # -- a DICOMweb archive (STOW-RS) ------------------------------------------------------

    def _deliver_stow(self, destination: str, sends: list[Send]) -> None:
        """Each object posted in turn over one kept-alive connection; its answer mapped as a C-STORE
        status is (:func:`fracsight.service.stow.outcome`)."""
        from fracsight.service.stow import StowClient, outcome

        forward = self.settings.forward
        try:  # the configured archive's credentials; a send queued for another URL goes without
            target = forward if isinstance(forward, StowDestination) and str(forward) == destination else (
                StowDestination(destination)
            )
        except ValueError as exc:
            for send in sends:
                self._rejected(send, str(exc))
            return
        client = StowClient(target)
        try:
            for index, send in enumerate(sends):
                try:
                    data = (self.store.data_dir / send.file).read_bytes()
                except FileNotFoundError:
                    self._rejected(send, "the result file is missing from the data folder")
                    continue
                except OSError as exc:
                    self._rejected(send, f"the result file could not be read ({type(exc).__name__})")
                    continue
                try:
                    answer = client.post(data, send.sop_instance_uid)
                except OSError as exc:
                    reason = f"archive not reachable or no answer ({type(exc).__name__})"
                    for rest in sends[index:]:  # the next would most likely fail the same way now
                        self._failed(rest, reason)
                    return
                result, reason = outcome(answer, _OUT_OF_RESOURCES)
                if result == "delivered":
                    self.store.send_succeeded(send.id, now())
                    log.info("a result (%s) delivered to %s by STOW-RS", send.kind, send.destination)
                elif result == "retry":
                    self._failed(send, reason)
                else:
                    self._rejected(send, reason)
        finally:
            client.close()

    def _failed(self, send: Send, reason: str) -> None:
        wait = min(self.settings.retry_max_s, self.settings.retry_base_s * 2 ** min(send.attempts, 30))
        self.store.send_failed(send.id, reason, self.clock() + wait)
        log.warning(
            "a result (%s) not delivered to %s (attempt %d): %s; next try in %.1f s",
            send.kind, send.destination, send.attempts + 1, reason, wait,
        )  # fmt: skip

    def _rejected(self, send: Send, reason: str) -> None:
        self.store.send_rejected(send.id, reason)
        log.error(
            "a result (%s) not delivered to %s: %s; kept, sent again on --resend",
            send.kind, send.destination, reason,
        )  # fmt: skip


def _association_failure(assoc, connected: bool) -> str:
    if not connected:
        return "destination not reachable (connection refused or timed out)"
    if assoc.is_rejected:
        return "association rejected by the destination (is fracsight's AE title configured there?)"
    return "association aborted by the destination, or no answer to the request"


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


def resend(store: Store, settings: DicomSettings, deadline_s: float = 120.0) -> dict[str, int]:
    """Send every undelivered result now (also those the destination refused); one pass, then the
    counts of the send queue. A running node's sender may take some of them: each is sent once."""
    store.requeue_sending(older_than_s=STALE_CLAIM_S)
    due = store.resend_undelivered()
    log.info("resending %d undelivered results", due)
    sender = Sender(store, settings)
    stop_at = time.monotonic() + deadline_s
    while time.monotonic() < stop_at and sender.run_once():
        pass
    return store.send_counts()
