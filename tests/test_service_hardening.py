"""The service against hostile clients: connections that stop sending are dropped, and DICOM
uploads with stretched elements put no patient data in the log or in any answer.

The stretched uploads are mutants of the bundled DX sample: the 2-byte value length of a UI,
PN or LO element is set so that its value runs over the following elements (and the patient's
name and ID in them). pydicom then warns quoting those bytes; the service must withhold that.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from conftest import SAMPLES_DIR  # noqa: E402

TOKEN = "hardening-test-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
SAMPLE = SAMPLES_DIR / "hd_dx_image.dcm"
# (group, element, VR) of elements stretched; the file is explicit VR little endian.
STRETCHED = [
    (0x0002, 0x0003, b"UI"),  # Media Storage SOP Instance UID (file meta)
    (0x0008, 0x0018, b"UI"),  # SOP Instance UID
    (0x0008, 0x0080, b"LO"),  # Institution Name
    (0x0008, 0x0090, b"PN"),  # Referring Physician's Name, just before the patient's
    (0x0008, 0x103E, b"LO"),  # Series Description
    (0x0010, 0x0010, b"PN"),  # Patient's Name
    (0x0010, 0x0020, b"LO"),  # Patient ID
    (0x0020, 0x000D, b"UI"),  # Study Instance UID
]


def _patient_values() -> list[str]:
    """What must never be seen: the sample's patient name (its parts) and patient ID."""
    import pydicom

    header = pydicom.dcmread(SAMPLE, stop_before_pixels=True)
    name, patient_id = str(header.PatientName), str(header.PatientID)
    assert name and patient_id
    return [name, *[part for part in name.split("^") if len(part) > 3], patient_id]


def stretched_mutants() -> list[tuple[str, bytes]]:
    """(label, file) for each element and stretched length: over the patient's name, to the end
    of the data set, and a few bytes too long."""
    data = SAMPLE.read_bytes()
    name_at = data.index(b"Dog^AVeryGood")
    mutants = []
    for group, element, vr in STRETCHED:
        at = data.index(struct.pack("<HH", group, element) + vr)
        value = at + 8
        (length,) = struct.unpack("<H", data[at + 6 : value])
        over_name = name_at - value + 20 if name_at > value else length + 40
        for new in sorted({over_name, 0xFFFF, length + 7}):
            mutated = data[: at + 6] + struct.pack("<H", min(new, 0xFFFF)) + data[value:]
            mutants.append((f"({group:04X},{element:04X}) {vr.decode()} {length}->{new}", mutated))
    return mutants


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _closed_within(port: int, payload: bytes, limit: float) -> float:
    """Seconds until the service closes a connection that sent ``payload`` and then nothing."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(limit + 5)
        sock.sendall(payload)
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(4096):  # until the service closes it
            received += chunk
        return time.monotonic() - started


@pytest.mark.slow
def test_connections_that_stop_sending_are_dropped(tmp_path: Path) -> None:
    from fracsight.service.server import Service
    from fracsight.service.settings import ServiceSettings

    settings = ServiceSettings(
        data_dir=tmp_path / "data", port=0, token=TOKEN, http_head_timeout_s=1.0, http_body_idle_s=1.0,
        http_keep_alive_s=1.0,
    )  # fmt: skip
    service = Service(settings)
    service.start()
    try:
        port = service.port
        head = b"POST /api/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        cases = {
            "silent after connecting": b"",
            "half a request line": b"GET /api/hea",
            "headers never ended": b"GET /api/health HTTP/1.1\r\nHost: x\r\n",
            "upload stopped halfway": head + b"Authorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"a.jpg\"\r\n\r\n\xff\xd8\xff",
            "idle after a response": b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n",
        }  # fmt: skip
        for what, payload in cases.items():
            assert _closed_within(port, payload, 1.0) < 4.0, what
        # A slow sender is not a stopped one: a head sent in pieces within the limit is answered.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for piece in (b"GET /api/he", b"alth HTTP/1.1\r\n", b"Host: x\r\n\r\n"):
                sock.sendall(piece)
                time.sleep(0.2)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert httpx.get(f"{service.url}/api/health").json()["status"] == "ok"
    finally:
        service.stop()


@pytest.mark.slow
def test_stretched_dicom_puts_no_patient_data_in_log_or_answers(
    tmp_path: Path, default_analyser, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process (every log record at DEBUG, every warning) and a real ``fracsight -v serve``
    (its whole standard error): the patient's name and ID appear nowhere, nor in any answer
    but the worklist's patient columns, which exist to show them."""
    from fastapi.testclient import TestClient

    from fracsight.service.store import SqliteStore
    from fracsight.service.web import create_app
    from fracsight.service.worker import AnalysisWorker

    secrets = _patient_values()
    mutants = stretched_mutants()
    assert len(mutants) >= 20
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    answers: list[str] = []
    store = SqliteStore(tmp_path / "in-process")
    worker = AnalysisWorker(store, default_analyser, poll_s=0.1)
    worker.start()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            client = TestClient(create_app(store, worker, TOKEN, 4 * 1024 * 1024))
            answers += _upload_all(client, "", mutants)
    finally:
        worker.stop()
    said = [r.getMessage() for r in caplog.records] + [str(w.message) for w in seen]
    assert any("withheld" in line for line in said), "the capture did not see pydicom's messages"

    data, port = tmp_path / "served", _free_port()
    log_file = tmp_path / "serve.log"
    with open(log_file, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "fracsight", "-v", "serve", "--data", str(data), "--port", str(port)],
            env={**os.environ, "FRACSIGHT_API_TOKEN": TOKEN},
            stdout=err,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, log_file.read_text()
                time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30) as client:
            answers += _upload_all(client, base, mutants)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    served_log = log_file.read_text(errors="replace")
    assert "GET /api/images/{image_id}" in served_log  # the log was captured, at DEBUG
    for secret in secrets:
        for line in said:
            assert secret not in line, f"{secret!r} in the log: {line[:200]!r}"
        assert secret not in served_log, f"{secret!r} in fracsight serve's log"
        for answer in answers:
            assert secret not in answer, f"{secret!r} in an answer: {answer[:200]!r}"


def _upload_all(client, base: str, mutants: list[tuple[str, bytes]]) -> list[str]:
    """Upload every mutant, wait for each to be analysed or refused; every answer's text."""
    answers, ids = [], []
    for label, data in mutants:
        r = client.post("/api/images", files={"file": ("m.dcm", data)}, headers=HEADERS)
        answers.append(r.text)
        # 200: the same instance (by SOP Instance UID) was uploaded already: acknowledged, kept once
        assert r.status_code in (200, 202, 415), (label, r.status_code)
        if r.status_code == 202:
            ids.append(r.json()["id"])
    deadline = time.monotonic() + 180
    for image_id in ids:
        while True:
            r = client.get(f"/api/images/{image_id}", headers=HEADERS)
            if r.json()["status"] not in ("queued", "analysing"):
                break
            assert time.monotonic() < deadline, "mutants not analysed in time"
            time.sleep(0.1)
        answers.append(r.text)
        for picture in ("overlay.png", "image.png"):  # refusals say why in text
            shown = client.get(f"/api/images/{image_id}/{picture}", headers=HEADERS)
            if shown.status_code != 200:
                answers.append(shown.text)
    for path in ("/api/predictions.csv", "/api/feedback.csv", "/api/health"):
        answers.append(client.get(path, headers=HEADERS).text)
    return answers
