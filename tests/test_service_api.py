"""The web service's REST API: uploads, the queue, results, worklist, feedback, refusals, security.

The app runs in-process (FastAPI's TestClient) over a real SQLite store and a real analysis
worker with the shipped model; every refusal is followed by a request that must still succeed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import image_analysed

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from fracsight.service.store import SqliteStore  # noqa: E402
from fracsight.service.web import create_app  # noqa: E402
from fracsight.service.worker import AnalysisWorker  # noqa: E402

TOKEN = "t" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, default_analyser):
    store = SqliteStore(tmp_path_factory.mktemp("service"))
    worker = AnalysisWorker(store, default_analyser, poll_s=0.2)
    worker.start()
    client = TestClient(create_app(store, worker, TOKEN, MAX_UPLOAD))
    yield client, store
    worker.stop()


def _upload(client: TestClient, name: str, data: bytes, expect: int = 202) -> dict:
    response = client.post("/api/images", files={"file": (name, data)}, headers=AUTH)
    assert response.status_code == expect, response.text
    return response.json()


def _wait(client: TestClient, image_id: str, timeout: float = 60.0) -> dict:
    return image_analysed(client, image_id, AUTH, timeout)


def _still_serving(client: TestClient) -> None:
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.get("/api/studies", headers=AUTH).status_code == 200


def _ct_from(dicom: Path, folder: Path) -> bytes:
    import pydicom
    from pydicom.uid import CTImageStorage, generate_uid

    ds = pydicom.dcmread(dicom)
    ds.Modality = "CT"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    # Another instance (the same UID would be the sample itself, acknowledged as a duplicate).
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_health_needs_no_token_and_everything_else_does(service) -> None:
    client, _ = service
    assert client.get("/api/health").status_code == 200
    for method, path in [("get", "/api/studies"), ("get", "/api/feedback.csv"), ("get", "/api/images/abc"),
                         ("post", "/api/images"), ("get", "/api/openapi.json")]:  # fmt: skip
        assert getattr(client, method)(path).status_code == 401, path
        assert getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert getattr(client, method)(path, headers={"Authorization": TOKEN}).status_code == 401
    _still_serving(client)


def test_openapi_describes_the_endpoints(service) -> None:
    client, _ = service
    paths = client.get("/api/openapi.json", headers=AUTH).json()["paths"]
    for path in ("/api/images", "/api/images/{image_id}", "/api/images/{image_id}/overlay.png",
                 "/api/images/{image_id}/image.png", "/api/studies", "/api/studies/{study_key}",
                 "/api/images/{image_id}/feedback", "/api/feedback.csv", "/api/health"):  # fmt: skip
        assert path in paths, path


def test_jpeg_upload_is_analysed_as_predict_analyses_it(
    service, sample_images: list[Path], default_analyser
) -> None:
    client, store = service
    jpeg = next(p for p in sample_images if p.name == "IMG0002472.jpg")
    ack = _upload(client, "any name.jpg", jpeg.read_bytes())
    assert ack["study"] == f"upload-{ack['id']}"
    done = _wait(client, ack["id"])
    assert done["status"] == "done" and done["category"] in ("fracture", "doubt", "no_fracture")
    expected = default_analyser.outcome(jpeg)
    assert done["probability"] == expected.probability
    assert done["model"] == default_analyser.identity.to_dict()
    # The file is kept under a name the service chose, never the upload's.
    record = store.get_image(ack["id"])
    assert "any name" not in record.file and (store.data_dir / record.file).read_bytes() == jpeg.read_bytes()
    assert record.analyses == 1
    # What site monitoring watches in the inputs: no manufacturer in a JPEG, its mean brightness.
    inputs = record.result["inputs"]
    assert inputs["manufacturer"] is None and 0.0 < inputs["brightness"] < 1.0


def test_dicom_upload_fills_the_worklist_from_its_header(service, sample_images: list[Path]) -> None:
    import pydicom

    client, _ = service
    dicom = next(p for p in sample_images if p.suffix == ".dcm")
    header = pydicom.dcmread(dicom, stop_before_pixels=True)
    ack = _upload(client, "x.dcm", dicom.read_bytes())
    assert ack["study"] == header.StudyInstanceUID
    done = _wait(client, ack["id"])
    assert done["status"] == "done" and done["sop_instance_uid"] == header.SOPInstanceUID
    study = client.get(f"/api/studies/{ack['study']}", headers=AUTH).json()
    assert study["patient_id"] == header.PatientID and study["modality"] == header.Modality
    assert [i["id"] for i in study["images"]][-1] == ack["id"]


def test_pictures_the_viewer_needs(service, sample_images: list[Path]) -> None:
    client, _ = service
    jpeg = next(p for p in sample_images if p.name == "IMG0000763.jpg")
    ack = _upload(client, "a.jpg", jpeg.read_bytes())
    done = _wait(client, ack["id"])
    width, height = done["size"]["width"], done["size"]["height"]
    shown = Image.open(io.BytesIO(client.get(f"/api/images/{ack['id']}/image.png", headers=AUTH).content))
    assert shown.mode == "L" and shown.size == (width, height)
    layer = Image.open(io.BytesIO(client.get(f"/api/images/{ack['id']}/overlay.png", headers=AUTH).content))
    assert layer.mode == "RGBA"
    assert abs(layer.size[0] / layer.size[1] - width / height) < 0.01
    alpha = np.asarray(layer)[..., 3]
    assert alpha.max() > 0 and alpha.min() == 0  # coloured where the evidence is, clear elsewhere
    raw = client.get(f"/api/images/{ack['id']}/pixels", headers=AUTH).content
    h, w = np.frombuffer(raw[:8], dtype="<u4")
    assert (int(h), int(w)) == (height, width) and len(raw) == 8 + 2 * height * width
    # The peak lies on the image.
    assert 0 <= done["peak"]["x"] < width and 0 <= done["peak"]["y"] < height


@pytest.mark.parametrize("kind", ["text", "oversized", "empty", "no file field", "not multipart"])
def test_uploads_refused_before_they_are_stored(service, kind: str) -> None:
    client, store = service
    before = sum(store.counts().values())
    if kind == "text":
        refused = _upload(client, "notes.txt", b"patient notes, not an image\n" * 10, expect=415)
        assert refused["error_code"] == "unreadable"  # as `fracsight predict` says of such a file
    elif kind == "oversized":
        big = b"\xff\xd8\xff" + bytes(MAX_UPLOAD + 1)
        _upload(client, "big.jpg", big, expect=413)
    elif kind == "empty":
        _upload(client, "e.jpg", b"", expect=400)
    elif kind == "no file field":
        r = client.post("/api/images", data={"other": "x"}, headers=AUTH)
        assert r.status_code == 400
    else:
        r = client.post("/api/images", content=b"garbage", headers={**AUTH, "Content-Type": "text/plain"})
        assert r.status_code == 400
    assert sum(store.counts().values()) == before
    assert not any((store.data_dir / "incoming").iterdir())
    _still_serving(client)


def test_chunked_oversized_upload_is_cut_off(service) -> None:
    """Without a Content-Length the body is counted as it arrives."""
    client, store = service
    before = sum(store.counts().values())

    def body():
        boundary = (
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="b.jpg"\r\n\r\n\xff\xd8\xff'
        )
        yield boundary
        for _ in range(MAX_UPLOAD // 65536 + 4):
            yield bytes(65536)

    r = client.post(
        "/api/images", content=body(), headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert r.status_code == 413
    assert sum(store.counts().values()) == before
    _still_serving(client)


def test_ct_and_truncated_jpeg_are_kept_and_refused_with_the_reason(
    service, sample_images: list[Path], tmp_path: Path, default_analyser
) -> None:
    client, store = service
    dicom = next(p for p in sample_images if p.suffix == ".dcm")
    ct = _upload(client, "ct.dcm", _ct_from(dicom, tmp_path))
    jpeg = next(p for p in sample_images if p.name == "IMG0001739.jpg").read_bytes()
    cut = _upload(client, "cut.jpg", jpeg[: len(jpeg) // 3])
    ct_done, cut_done = _wait(client, ct["id"]), _wait(client, cut["id"])
    assert ct_done["status"] == "refused" and "CT" in ct_done["error"]
    assert cut_done["status"] == "refused" and "truncated" in cut_done["error"]
    # The error_code `fracsight predict` gives the same files.
    for ack, done in ((ct, ct_done), (cut, cut_done)):
        data = (store.data_dir / store.get_image(ack["id"]).file).read_bytes()
        assert done["error_code"] == default_analyser.outcome(data, "x").code and done["error_code"]
    # Stored (received and kept), never analysed, shown in the worklist as refused.
    for ack in (ct, cut):
        assert (store.data_dir / store.get_image(ack["id"]).file).exists()
    listed = {s["study"]: s for s in client.get("/api/studies", headers=AUTH).json()}
    assert listed[cut["study"]]["category"] is None and listed[cut["study"]]["n_refused"] == 1
    assert client.get(f"/api/images/{cut['id']}/overlay.png", headers=AUTH).status_code == 404
    _still_serving(client)


def test_unknown_and_malformed_ids(service) -> None:
    client, _ = service
    for path in ("/api/images/deadbeef", "/api/images/..%2F..%2Fetc", "/api/images/a b/overlay.png",
                 "/api/studies/nope"):  # fmt: skip
        assert client.get(path, headers=AUTH).status_code == 404, path
    assert client.get("/api/studies?category=bogus", headers=AUTH).status_code == 422
    _still_serving(client)


def test_worklist_order_filters_and_read_status(service, sample_images: list[Path]) -> None:
    client, _ = service
    for p in sample_images:
        if p.suffix == ".jpg":
            _wait(client, _upload(client, p.name, p.read_bytes())["id"])
    studies = client.get("/api/studies", headers=AUTH).json()
    rank = {"fracture": 0, "doubt": 1, "out_of_scope": 2, None: 3, "no_fracture": 4}
    keys = [
        (rank[s["category"]], -(s["probability"] or 0)) for s in studies if s["category"] or s["n_pending"]
    ]
    assert keys == sorted(keys), "suspected fractures first, most probable first"
    first = studies[0]
    r = client.post(f"/api/studies/{first['study']}/read", json={"read": True}, headers=AUTH)
    assert r.status_code == 200
    unread = client.get("/api/studies?read=false", headers=AUTH).json()
    read = client.get("/api/studies?read=true", headers=AUTH).json()
    assert first["study"] in {s["study"] for s in read} and first["study"] not in {s["study"] for s in unread}
    assert all(s["read_by"] == "site-token" for s in read if s["study"] == first["study"])
    for category in ("fracture", "doubt", "no_fracture"):
        listed = client.get(f"/api/studies?category={category}", headers=AUTH).json()
        assert all(s["category"] == category for s in listed)


def test_feedback_is_kept_and_exported_for_evaluate(
    service, sample_images: list[Path], tmp_path: Path
) -> None:
    from fracsight.evaluation.inputs import read_labels, read_predictions

    client, _ = service
    jpeg = next(p for p in sample_images if p.name == "IMG0000001.jpg")
    done = _wait(client, _upload(client, "f.jpg", jpeg.read_bytes())["id"])
    url = f"/api/images/{done['id']}/feedback"
    if done["category"] == "doubt":
        assert client.post(url, json={"agree": True}, headers=AUTH).status_code == 422
        body = {"fracture": False, "note": "no fracture seen"}
    else:
        body = {"agree": False, "note": "disagree"}
    r = client.post(url, json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    # The verdict is the signed-in user's (the site token's built-in administrator here).
    assert r.json()["reader"] == "site-token"
    assert client.post(url, json={"reader": "Dr B", "agree": True}, headers=AUTH).status_code == 403
    assert client.post(url, json={}, headers=AUTH).status_code == 422
    labels_csv = client.get("/api/feedback.csv", headers=AUTH).text
    rows = list(csv.DictReader(io.StringIO(labels_csv)))
    mine = [row for row in rows if row["id"] == done["id"]]
    assert mine and mine[-1]["reader"] == "site-token" and mine[-1]["note"] == body["note"]
    expected = 1 - int(done["category"] == "fracture") if "agree" in body else 0
    assert int(mine[-1]["fractured"]) == expected
    # Both exports are what `fracsight evaluate --predictions --labels` reads.
    (tmp_path / "labels.csv").write_text(labels_csv)
    (tmp_path / "predictions.csv").write_text(client.get("/api/predictions.csv", headers=AUTH).text)
    labels = read_labels(tmp_path / "labels.csv")
    predictions = read_predictions(tmp_path / "predictions.csv")
    assert done["id"] in labels.ids and done["id"] in predictions.ids


def test_a_result_is_never_written_twice(service, sample_images: list[Path]) -> None:
    from fracsight.service.store import Analysis

    client, store = service
    done = _wait(client, _upload(client, "d.jpg", sample_images[0].read_bytes())["id"])
    with pytest.raises(RuntimeError, match="not stored twice"):
        store.finish(done["id"], Analysis(0.5, "doubt", "m", {}, np.zeros((2, 2))))
    assert store.get_image(done["id"]).analyses == 1


def test_worklist_pages_sorts_and_the_change_feed(service, sample_images: list[Path]) -> None:
    client, store = service
    jpegs = [p for p in sample_images if p.suffix == ".jpg"][:3]
    for p in jpegs:
        _wait(client, _upload(client, p.name, p.read_bytes())["id"])
    everything = client.get("/api/studies", headers=AUTH)
    total = int(everything.headers["X-Total-Count"])
    assert total == len(everything.json()) >= 3
    first = client.get("/api/worklist?limit=2", headers=AUTH).json()
    second = client.get("/api/worklist?limit=2&offset=2", headers=AUTH).json()
    assert first["total"] == second["total"] == total
    paged = [s["study"] for s in first["studies"] + second["studies"]]
    assert paged == [s["study"] for s in everything.json()[:4]]
    newest = client.get("/api/worklist?sort=received_at&order=desc&limit=1", headers=AUTH).json()["studies"]
    assert newest[0]["received_at"] == max(s["received_at"] for s in everything.json())
    for bad in ("sort=nope", "order=up", "date_from=2024-1-1", "limit=0", "limit=100000", "offset=-1"):
        assert client.get(f"/api/worklist?{bad}", headers=AUTH).status_code == 422, bad
    # Nothing changed: an empty answer with the same cursor. A new upload: its study, once queued
    # and once analysed, with a cursor that moves on.
    cursor = first["cursor"]
    assert client.get(f"/api/changes?since={cursor}", headers=AUTH).json() == {
        "studies": [], "cursor": cursor, "more": False, "reset": False}  # fmt: skip
    ack = _upload(client, "late.jpg", jpegs[0].read_bytes())
    changed = client.get(f"/api/changes?since={cursor}", headers=AUTH).json()
    assert ack["study"] in [s["study"] for s in changed["studies"]] and changed["cursor"] > cursor
    _wait(client, ack["id"])
    later = client.get(f"/api/changes?since={changed['cursor']}", headers=AUTH).json()
    assert [s["category"] for s in later["studies"] if s["study"] == ack["study"]][-1] is not None
    assert client.get("/api/changes?since=999999999", headers=AUTH).json()["reset"] is True


def test_the_same_dicom_instance_uploaded_twice_is_kept_once(service, sample_images: list[Path]) -> None:
    client, store = service
    data = next(p for p in sample_images if p.suffix == ".dcm").read_bytes()
    first = client.post("/api/images", files={"file": ("a.dcm", data)}, headers=AUTH)
    assert first.status_code in (200, 202)  # an earlier test may have uploaded the sample already
    again = client.post("/api/images", files={"file": ("b.dcm", data)}, headers=AUTH)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["id"] == first.json()["id"]
    study = client.get(f"/api/studies/{again.json()['study']}", headers=AUTH).json()
    kept = store.get_image(first.json()["id"]).info.sop_instance_uid
    assert [i["id"] for i in study["images"] if i["sop_instance_uid"] == kept] == [first.json()["id"]]
    files = list((store.data_dir / "images").rglob("*.dcm"))
    assert len(files) == len({store.get_image(f.stem).id for f in files})  # no file left behind


def _bigtiff(pixels: np.ndarray) -> bytes:
    """A one-strip 8-bit grayscale BigTIFF (8-byte offsets), made by hand: Pillow writes none."""
    import struct

    height, width = pixels.shape
    data = pixels.astype(np.uint8).tobytes()
    entries = [  # (tag, type, count, value): type 3 SHORT, 16 LONG8
        (256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 16, 1, 16), (277, 3, 1, 1), (278, 3, 1, height), (279, 16, 1, len(data)),
    ]  # fmt: skip
    ifd_offset = 16 + len(data)
    out = b"II" + struct.pack("<HHHQ", 43, 8, 0, ifd_offset) + data
    out += struct.pack("<Q", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHQQ", tag, kind, count, value)
    return out + struct.pack("<Q", 0)


def test_uploads_read_every_file_predict_reads(service, sample_images: list[Path]) -> None:
    """An upload is recognised by the same sniffer as predict's reader (fracsight.io.formats): a DICOM
    data set without preamble and file meta, and a BigTIFF, are kept and analysed, not refused."""
    import pydicom
    from pydicom.uid import generate_uid

    client, _ = service
    dicom = next(p for p in sample_images if p.suffix == ".dcm")
    ds = pydicom.dcmread(dicom)
    ds.SOPInstanceUID = generate_uid()  # not a duplicate of the sample other tests upload
    ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
    bare = io.BytesIO()
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(bare, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert bare.getvalue()[128:132] != b"DICM"
    jpeg = next(p for p in sample_images if p.suffix == ".jpg")
    gray = np.asarray(Image.open(jpeg).convert("L"))
    for name, data in (("bare.dcm", bare.getvalue()), ("big.tif", _bigtiff(gray))):
        ack = _upload(client, name, data)
        done = _wait(client, ack["id"])
        assert done["status"] == "done", (name, done)
        assert done["kind"] == ("dicom" if name.endswith(".dcm") else "tiff")


def test_the_page_takes_category_words_and_colours_from_decide(service) -> None:
    """One owner: the API hands the page fracsight.decide's table, in rank order."""
    from fracsight.decide import CATEGORIES, vocabulary

    client, _ = service
    body = client.get("/api/categories", headers=AUTH).json()
    assert body["categories"] == vocabulary()
    assert [c["category"] for c in body["categories"]] == [
        c.value for c in sorted(CATEGORIES, key=lambda c: CATEGORIES[c].rank)
    ]
    assert client.get("/api/categories").status_code == 401
