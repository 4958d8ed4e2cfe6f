"""DICOMweb: STOW-RS uploads to the web service, and how the sender reads a STOW-RS answer.

The app runs in-process (FastAPI's TestClient) over a real SQLite store and the real analysis
worker with the shipped model; the instances are the bundled DX radiograph with new UIDs. The
archive side (results delivered by STOW-RS, read back with QIDO-RS) is tested against Orthanc in
tests/test_service_dicom_orthanc.py.
"""

from __future__ import annotations

import io
import json
import secrets
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import image_analysed

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import pydicom  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from fracsight.service.sender import _OUT_OF_RESOURCES  # noqa: E402
from fracsight.service.settings import StowDestination  # noqa: E402
from fracsight.service.store import SqliteStore  # noqa: E402
from fracsight.service.stow import Answer, outcome, read_answer  # noqa: E402
from fracsight.service.web import create_app  # noqa: E402
from fracsight.service.worker import AnalysisWorker  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "fracsight" / "samples" / "hd_dx_image.dcm"
TOKEN = "s" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, default_analyser):
    store = SqliteStore(tmp_path_factory.mktemp("dicomweb"))
    worker = AnalysisWorker(store, default_analyser, poll_s=0.2)
    worker.start()
    client = TestClient(create_app(store, worker, TOKEN, 64 * 1024 * 1024))
    yield client, store
    worker.stop()


def _instance(study: str | None = None) -> tuple[bytes, pydicom.Dataset]:
    ds = pydicom.dcmread(SAMPLE)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), ds


def _multipart(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = secrets.token_hex(8)
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n" for part in parts
    )
    return body + f"--{boundary}--\r\n".encode(), (
        f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    )


def _stow(client: TestClient, parts: list[bytes], path: str = "/dicomweb/studies", **kwargs):
    body, content_type = _multipart(parts, **kwargs)
    return client.post(path, content=body, headers={**AUTH, "Content-Type": content_type})


def _uids(answer: dict, sequence: str) -> dict[str, int | None]:
    """SOP Instance UID -> Failure Reason (None in ReferencedSOPSequence) of a DICOM JSON answer."""
    tag = {"referenced": "00081199", "failed": "00081198"}[sequence]
    items = answer.get(tag, {}).get("Value", [])
    return {
        item["00081155"]["Value"][0]: (item["00081197"]["Value"][0] if "00081197" in item else None)
        for item in items
        if "00081155" in item
    }


def _analysed(client: TestClient, store, uid: str, timeout: float = 90.0) -> dict:
    record = store.find_instance(uid)
    assert record is not None, "the instance was not kept"
    return image_analysed(client, record.id, AUTH, timeout)


def test_stow_rs_upload_is_kept_once_and_analysed(service) -> None:
    client, store = service
    data, ds = _instance()
    answer = _stow(client, [data])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert _uids(answer.json(), "referenced") == {ds.SOPInstanceUID: None}
    assert "00081198" not in answer.json()
    body = _analysed(client, store, ds.SOPInstanceUID)
    assert body["status"] == "done", body
    # the same instance again: acknowledged, not kept twice
    again = _stow(client, [data])
    assert again.status_code == 200
    assert _uids(again.json(), "referenced") == {ds.SOPInstanceUID: None}
    with sqlite3.connect(store.data_dir / "fracsight.db") as db:
        query = "SELECT COUNT(*), MAX(analyses) FROM images WHERE sop_instance_uid = ?"
        assert db.execute(query, (ds.SOPInstanceUID,)).fetchone() == (1, 1)


def test_two_instances_of_one_study_in_one_request(service) -> None:
    client, store = service
    study = generate_uid()
    (first, a), (second, b) = _instance(study), _instance(study)
    answer = _stow(client, [first, second], path=f"/dicomweb/studies/{study}")
    assert answer.status_code == 200, answer.text
    assert set(_uids(answer.json(), "referenced")) == {a.SOPInstanceUID, b.SOPInstanceUID}
    for uid in (a.SOPInstanceUID, b.SOPInstanceUID):
        assert _analysed(client, store, uid)["status"] == "done"


def test_some_failed_is_202_none_kept_is_409(service) -> None:
    client, _ = service
    data, ds = _instance()
    mixed = _stow(client, [data, b"not a DICOM file at all"])
    assert mixed.status_code == 202, mixed.text
    assert _uids(mixed.json(), "referenced") == {ds.SOPInstanceUID: None}
    assert len(mixed.json()["00081198"]["Value"]) == 1
    assert mixed.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert _stow(client, [b"garbage", b"more garbage"]).status_code == 409


def test_an_instance_of_another_study_than_the_url_fails(service) -> None:
    client, _ = service
    data, ds = _instance()
    answer = _stow(client, [data], path=f"/dicomweb/studies/{generate_uid()}")
    assert answer.status_code == 409, answer.text
    assert _uids(answer.json(), "failed") == {ds.SOPInstanceUID: 0xA900}


def test_refusals_by_the_standard(service) -> None:
    client, _ = service
    data, _ = _instance()
    body, content_type = _multipart([data])
    anonymous = {"Content-Type": content_type}
    assert client.post("/dicomweb/studies", content=body, headers=anonymous).status_code == 401
    wrong = {**AUTH, "Authorization": "Bearer " + "x" * 24, "Content-Type": content_type}
    assert client.post("/dicomweb/studies", content=body, headers=wrong).status_code == 401
    json_type = {**AUTH, "Content-Type": "application/dicom+json"}
    assert client.post("/dicomweb/studies", content=b"[]", headers=json_type).status_code == 415
    no_parts = {**AUTH, "Content-Type": 'multipart/related; type="application/dicom"; boundary=abc'}
    assert client.post("/dicomweb/studies", content=b"--abc--\r\n", headers=no_parts).status_code == 400
    assert client.post(
        "/dicomweb/studies/not-a-uid", content=body, headers={**AUTH, "Content-Type": content_type}
    ).status_code == 400
    # a part of another type fails alone
    other = _stow(client, [data], part_type="application/octet-stream")
    assert other.status_code == 409
    assert client.get("/api/health").json()["status"] == "ok"


def test_read_answer_and_outcome_map_like_c_store_statuses() -> None:
    uid = generate_uid()
    stored = pydicom.Dataset()
    item = pydicom.Dataset()
    item.ReferencedSOPInstanceUID = uid
    stored.ReferencedSOPSequence = [item]
    ok = read_answer(200, json.dumps(stored.to_json_dict()).encode(), uid)
    assert outcome(ok, _OUT_OF_RESOURCES)[0] == "delivered"
    failed = pydicom.Dataset()
    bad = pydicom.Dataset()
    bad.ReferencedSOPInstanceUID = uid
    bad.FailureReason = 0xA700
    failed.FailedSOPSequence = [bad]
    full = read_answer(409, json.dumps(failed.to_json_dict()).encode(), uid)
    assert outcome(full, _OUT_OF_RESOURCES)[0] == "retry"
    bad.FailureReason = 0xC000
    refused = read_answer(409, json.dumps(failed.to_json_dict()).encode(), uid)
    assert outcome(refused, _OUT_OF_RESOURCES) == (
        "rejected", "refused by the archive (HTTP 409, failure reason 0xC000)"
    )
    assert outcome(Answer(503, False, None), _OUT_OF_RESOURCES)[0] == "retry"
    assert outcome(Answer(401, False, None), _OUT_OF_RESOURCES)[0] == "retry"
    assert outcome(Answer(415, False, None), _OUT_OF_RESOURCES)[0] == "rejected"
    assert outcome(read_answer(200, b"", uid), _OUT_OF_RESOURCES)[0] == "delivered"
    assert outcome(read_answer(202, b"<html>", uid), _OUT_OF_RESOURCES)[0] == "retry"


def test_stow_destination_settings(tmp_path: Path) -> None:
    assert str(StowDestination("http://127.0.0.1:8042/dicom-web/")) == "http://127.0.0.1:8042/dicom-web"
    for bad in ("ftp://host/x", "http://user:pw@host/dicom-web", "https:///dicom-web", "http://h:99999/x"):
        with pytest.raises(ValueError):
            StowDestination(bad)
    token = tmp_path / "token"
    token.write_text("Bearer abc.def\n")
    assert StowDestination.auth_from_file(token) == "Bearer abc.def"
    token.write_text("basic orthanc:secret\n")
    assert StowDestination.auth_from_file(token) == "Basic b3J0aGFuYzpzZWNyZXQ="
    token.write_text("just-a-token")
    assert StowDestination.auth_from_file(token) == "Bearer just-a-token"
    with pytest.raises(ValueError, match="clear text"):
        StowDestination("http://192.0.2.1/dicom-web", "Bearer x")
    assert StowDestination("http://127.0.0.1/dicom-web", "Bearer x").authorization == "Bearer x"
    assert "Bearer" not in repr(StowDestination("https://192.0.2.1/dicom-web", "Bearer x"))


def test_fracsight_s_own_results_coming_back_are_acknowledged_not_kept(service) -> None:
    pytest.importorskip("highdicom")
    from fracsight.service.dicom_results import MANUFACTURER, SC_CLASS

    client, store = service
    _, ds = _instance()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SC_CLASS
    ds.Manufacturer = MANUFACTURER
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    answer = _stow(client, [out.getvalue()])
    assert answer.status_code == 200, answer.text
    assert _uids(answer.json(), "referenced") == {ds.SOPInstanceUID: None}
    assert store.find_instance(ds.SOPInstanceUID) is None


def test_forward_stow_options(tmp_path: Path) -> None:
    pytest.importorskip("pynetdicom")
    from fracsight.cli import build_parser
    from fracsight.cli.dicom_node import dicom_settings
    from fracsight.cli.serve import service_settings

    def node(*options: str):
        args = build_parser().parse_args(["dicom-node", "--data", str(tmp_path), *options])
        return dicom_settings(args, args.port)

    auth = tmp_path / "auth"
    auth.write_text("Basic pacs:secret\n")
    settings = node("--allow", "MODALITY", "--forward-stow", "https://192.0.2.1/dicom-web/",
                    "--forward-stow-auth", str(auth))  # fmt: skip
    assert isinstance(settings.forward, StowDestination)
    assert str(settings.forward) == "https://192.0.2.1/dicom-web"
    assert settings.forward.authorization.startswith("Basic ")
    with pytest.raises(ValueError, match="one destination"):
        node("--allow", "M", "--forward", "PACS@127.0.0.1:4242", "--forward-stow", "http://127.0.0.1/dw")
    with pytest.raises(ValueError, match="go with --forward-stow"):
        node("--allow", "M", "--forward-stow-auth", str(auth))
    with pytest.raises(ValueError, match="no calling AE title"):
        node("--forward-stow", "http://127.0.0.1/dicom-web")  # who sends by C-STORE must be named
    with pytest.raises(ValueError, match="--forward-tls needs"):
        node("--allow", "M", "--forward-stow", "http://127.0.0.1/dicom-web", "--forward-tls")
    with pytest.raises(ValueError, match="give --dicom-port too"):
        service_settings(build_parser().parse_args(
            ["serve", "--data", str(tmp_path), "--forward-stow", "http://127.0.0.1/dicom-web"]))  # fmt: skip
    served = build_parser().parse_args(["serve", "--data", str(tmp_path), "--dicom-port", "11112",
                                        "--dicom-allow", "M", "--forward-stow", "http://127.0.0.1:8042/dicom-web"])
    assert str(service_settings(served).dicom.forward) == "http://127.0.0.1:8042/dicom-web"


def test_an_upload_over_the_limit_is_refused_with_413(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "small")
    client = TestClient(create_app(store, None, TOKEN, 4096))
    data, ds = _instance()
    answer = _stow(client, [data])
    assert answer.status_code == 413, answer.text
    assert store.find_instance(ds.SOPInstanceUID) is None


class _Archive:
    """A DICOMweb archive on loopback that answers each STOW-RS request with the next scripted answer
    (HTTP status, Failure Reason or None: stored), noting what it was sent."""

    def __init__(self, answers: list[tuple[int, int | None]]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.answers = answers
        self.requests: list[dict] = []
        archive = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as archives do

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                archive.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, reason = archive.answers.pop(0)
                start = body.index(b"\r\n\r\n") + 4
                ds = pydicom.dcmread(io.BytesIO(body[start:]), stop_before_pixels=True)
                item = pydicom.Dataset()
                item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
                answer = pydicom.Dataset()
                if reason is None:
                    answer.ReferencedSOPSequence = [item]
                else:
                    item.FailureReason = reason
                    answer.FailedSOPSequence = [item]
                content = json.dumps(answer.to_json_dict()).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_sender_maps_stow_rs_answers_to_delivered_retry_and_refused(tmp_path: Path) -> None:
    pytest.importorskip("pynetdicom")
    from fracsight.service.sender import Sender, resend
    from fracsight.service.sends import NewSend, insert_sends
    from fracsight.service.settings import DicomSettings, Peer

    store = SqliteStore(tmp_path / "node")
    client = TestClient(create_app(store, None, TOKEN, 64 * 1024 * 1024))
    data, source = _instance()
    assert _stow(client, [data]).status_code == 200
    image = store.find_instance(source.SOPInstanceUID)
    # first 503 then 200 for the SC; 409 with 0xC000 (refused), then 409 with 0xA700 (retried) for the SR
    archive = _Archive([(503, None), (409, 0xC000), (200, None), (409, 0xA700), (200, None)])
    files = []
    for kind in ("sc", "sr"):
        result, ds = _instance(source.StudyInstanceUID)
        (store.data_dir / f"{kind}.dcm").write_bytes(result)
        files.append(NewSend(image.id, archive.url, kind, f"{kind}.dcm", ds.SOPClassUID, ds.SOPInstanceUID))
    try:
        settings = DicomSettings(
            allow=(Peer("MODALITY"),),
            forward=StowDestination(archive.url, "Bearer archive-token"),
            retry_base_s=0.01,
            retry_max_s=0.01,
        )
        with store._connection() as db:
            insert_sends(db, files, "2026-12-07T00:00:00")
        sender = Sender(store, settings)
        assert sender.run_once() == 2
        states = {s.kind: s for s in store.sends(image_id=image.id)}
        assert states["sc"].status == "pending" and "HTTP 503" in states["sc"].last_error
        assert states["sr"].status == "rejected" and "0xC000" in states["sr"].last_error
        time.sleep(0.05)
        assert sender.run_once() == 1  # the SC again; the refused SR waits for a resend
        assert {s.kind: s.status for s in store.sends(image_id=image.id)} == {"sc": "sent", "sr": "rejected"}
        resend(store, settings, deadline_s=10)  # answered 0xA700: out of resources, retried ...
        deadline = time.monotonic() + 10
        while archive.answers and time.monotonic() < deadline:
            time.sleep(0.05)
            Sender(store, settings).run_once()  # ... and then stored
        assert {s.kind: s.status for s in store.sends(image_id=image.id)} == {"sc": "sent", "sr": "sent"}
        assert not archive.answers
    finally:
        archive.close()
    assert all(r["path"] == "/dicom-web/studies" for r in archive.requests)
    first = archive.requests[0]["headers"]
    assert first["Authorization"] == "Bearer archive-token"
    assert first["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')
    assert first["Accept"] == "application/dicom+json"

