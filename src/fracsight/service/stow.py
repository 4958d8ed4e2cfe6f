"""STOW-RS client (DICOM PS3.18 10.5): the sender's way to a DICOMweb archive instead of C-STORE.

One HTTP(S) connection per batch of sends (kept alive between requests, as one association is for
C-STORE), one ``POST {base}/studies`` per result object, each a ``multipart/related;
type="application/dicom"`` body with the Part 10 file as it was written. The answer is read as
PS3.18 10.5.3 says: the HTTP status, and the instance's place in the response's
ReferencedSOPSequence (stored, possibly with a warning) or FailedSOPSequence (with its Failure
Reason, a storage status). :func:`outcome` turns that into the sender's three outcomes: delivered,
retry later, refused (kept for ``--resend``). Standard library only (http.client): the runtime
install needs no HTTP client package.
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import pydicom

from fracsight.service.settings import StowDestination

TIMEOUT_S = 30.0
DICOM_JSON = "application/dicom+json"
# HTTP statuses after which the same request may pass later: the archive busy, down, timing out,
# or not (yet) configured for us (unknown path, credentials): as a C-STORE association that is
# refused or aborted, retried with the backoff. 400, 409 (without an out-of-resources reason),
# 413, 415, ... are the archive's refusal of this object: kept until a resend.
_RETRIED = frozenset({401, 403, 404, 407, 408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Answer:
    """What the archive said about one posted instance."""

    http_status: int
    stored: bool  # listed in ReferencedSOPSequence (or a 200 without a body saying otherwise)
    failure: int | None  # the FailedSOPSequence's Failure Reason for it, if listed there
    warning: int | None = None


def outcome(answer: Answer, out_of_resources: frozenset[int]) -> tuple[str, str]:
    """``("delivered" | "retry" | "rejected", reason)`` for an answer, as the C-STORE statuses map:
    stored (with or without warning) is delivered; out of resources (A7xx) or an HTTP status that
    may pass later is retried; any other failure is a refusal."""
    status = answer.http_status
    if answer.failure is not None:
        reason = f"refused by the archive (HTTP {status}, failure reason 0x{answer.failure:04X})"
        return ("retry" if answer.failure in out_of_resources else "rejected"), reason
    if answer.stored and status in (200, 202):
        return "delivered", ""
    if status in _RETRIED or status >= 500:
        return "retry", f"not stored: the archive answered HTTP {status}"
    if status in (200, 202):  # success without the instance in the answer: not proof it was stored
        return "retry", f"the archive answered HTTP {status} without listing the object"
    return "rejected", f"refused by the archive (HTTP {status})"


class StowClient:
    """One connection to a DICOMweb archive; :meth:`post` one Part 10 file at a time."""

    def __init__(self, target: StowDestination, timeout_s: float = TIMEOUT_S) -> None:
        self.target = target
        parts = urlsplit(target.studies_url)
        self.path = parts.path or "/"
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=str(target.ca) if target.ca else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self.connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout_s, context=context
            )
        else:
            self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)

    def post(self, data: bytes, sop_instance_uid: str) -> Answer:
        """Store one instance; OSError (connection refused, reset, timeout, TLS) when no answer came."""
        boundary = "fracsight-" + secrets.token_hex(16)
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"),
                data,
                f"\r\n--{boundary}--\r\n".encode("ascii"),
            ]
        )
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": DICOM_JSON,
            "Content-Length": str(len(body)),
        }
        if self.target.authorization:
            headers["Authorization"] = self.target.authorization
        try:
            self.connection.request("POST", self.path, body=body, headers=headers)
            response = self.connection.getresponse()
            content = response.read()
        except http.client.HTTPException as exc:  # a garbled answer: as no answer
            self.close()
            raise OSError(f"no valid HTTP answer ({type(exc).__name__})") from None
        except OSError:
            self.close()
            raise
        return read_answer(response.status, content, sop_instance_uid)

    def close(self) -> None:
        self.connection.close()


def read_answer(status: int, content: bytes, sop_instance_uid: str) -> Answer:
    """The instance's fate in a STOW-RS response body (DICOM JSON); a body that is not DICOM JSON
    leaves only the HTTP status to go by."""
    try:
        dataset = pydicom.Dataset.from_json(json.loads(content.decode("utf-8"))) if content.strip() else None
    except Exception:  # noqa: BLE001 - an archive's odd body: the status still says something
        dataset = None
    if dataset is None:
        return Answer(status, stored=status == 200, failure=None)
    for item in dataset.get("FailedSOPSequence", []):
        if str(item.get("ReferencedSOPInstanceUID", "")) == sop_instance_uid:
            reason = item.get("FailureReason")
            return Answer(status, stored=False, failure=int(reason) if reason is not None else 0xC000)
    for item in dataset.get("ReferencedSOPSequence", []):
        if str(item.get("ReferencedSOPInstanceUID", "")) == sop_instance_uid:
            warning = item.get("WarningReason")
            return Answer(status, True, None, int(warning) if warning is not None else None)
    return Answer(status, stored=status == 200 and "FailedSOPSequence" not in dataset, failure=None)
