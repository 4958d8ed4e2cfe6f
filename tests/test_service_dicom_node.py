"""The DICOM node in-process on loopback: who may send, what it keeps and refuses, what it sends back.

A real node (pynetdicom SCP, SQLite store, analysis worker with the shipped model, results
stage, sender) between a pynetdicom "modality" and a pynetdicom "PACS" that keeps what it gets.
The real-PACS test (Orthanc, storescu, dciodvfy) is ``test_service_dicom_orthanc.py``.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from dicom_checks import sr_items  # noqa: E402
from dicom_peers import (  # noqa: E402
    DICOM,
    RADIOGRAPHS,
    REFUSED,
    SAMPLE_DX,
    FakePacs,
    Node,
    associate,
    referencing,
    renamed,
    rle_copy,
    send,
    wait_until,
)
from pydicom.uid import generate_uid  # noqa: E402

from fracsight.decide import CATEGORIES, Category, rank  # noqa: E402
from fracsight.explain import CAPTION  # noqa: E402
from fracsight.service import intake  # noqa: E402
from fracsight.service.dicom_results import GSPS_CLASS, SC_CLASS, SCHEME, SR_CLASS  # noqa: E402
from fracsight.service.results_stage import ResultsStage  # noqa: E402
from fracsight.service.sender import resend  # noqa: E402
from fracsight.service.settings import Destination, DicomSettings, Peer  # noqa: E402
from fracsight.service.store import SqliteStore  # noqa: E402

OUT_OF_RESOURCES = 0xA700


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, default_analyser, pacs: FakePacs, dicom_dir: Path):
    running = Node(tmp_path_factory.mktemp("node"), default_analyser, pacs)
    yield running
    running.stop()


def _named(items: list[pydicom.Dataset], meaning: str) -> list[pydicom.Dataset]:
    return [
        i
        for i in items
        if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


def _newest(objects: list[pydicom.Dataset]) -> pydicom.Dataset:
    """The latest version of a study's SR among those received."""
    return max(objects, key=lambda d: int(d.InstanceNumber))


def _image_group(sr: pydicom.Dataset, sop_instance_uid: str) -> pydicom.Dataset:
    """The SR's measurement group about one image: the one whose region lies on it."""
    groups = [
        i for i in _named(sr_items(sr), "Measurement Group")
        if any(r.ReferencedSOPInstanceUID == sop_instance_uid
               for j in sr_items(i) for r in j.get("ReferencedSOPSequence", []))
    ]  # fmt: skip
    assert len(groups) == 1, f"{len(groups)} groups about the image"
    return groups[0]


def _inside(point: np.ndarray, polygon: np.ndarray) -> bool:
    """Ray casting: True when ``point`` lies inside the closed ``polygon`` (N x 2)."""
    x, y = point
    inside = False
    for (x0, y0), (x1, y1) in zip(polygon[:-1], polygon[1:], strict=True):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def _dciodvfy_errors(ds: pydicom.Dataset, folder: Path) -> list[str]:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_radiographs_come_back_as_results_in_their_study(node: Node, pacs: FakePacs, tmp_path: Path) -> None:
    sources = [pydicom.dcmread(DICOM / name) for name in RADIOGRAPHS] + [rle_copy(DICOM / "hd_dx_image.dcm")]
    assert send(node.port, sources) == [0x0000] * len(sources)
    records = node.wait_finished([s.SOPInstanceUID for s in sources])
    assert [r.status for r in records] == ["done"] * len(sources), [r.error for r in records]
    assert {r.results for r in records} == {"made"}
    wait_until(lambda: node.store.send_counts()["pending"] == node.store.send_counts()["sending"] == 0,
               60, "results delivered")  # fmt: skip
    scs, srs, states = pacs.of_class(SC_CLASS), pacs.of_class(SR_CLASS), pacs.of_class(GSPS_CLASS)
    validator = shutil.which("dciodvfy")
    for source, record in zip(sources, records, strict=True):
        name = Path(source.filename).name if source.filename else "RLE copy"
        (sc,) = referencing(scs, source.SOPInstanceUID)
        sr = _newest(referencing(srs, source.SOPInstanceUID))
        gsps = referencing(states, source.SOPInstanceUID)
        for made in (sc, sr, *gsps):
            assert made.StudyInstanceUID == source.StudyInstanceUID, name
            assert made.PatientID == source.PatientID and made.PatientName == source.PatientName, name
            assert made.SeriesInstanceUID != source.SeriesInstanceUID, name
            assert made.SeriesDescription.startswith("fracsight AI result"), name
            assert made.Manufacturer == "fracsight"
        assert len(
            {sc.SeriesInstanceUID, sr.SeriesInstanceUID, *(g.SeriesInstanceUID for g in gsps)}
        ) == 2 + len(gsps)
        # The Secondary Capture: burned in, with the caption.
        assert sc.BurnedInAnnotation == "YES" and CAPTION in sc.ImageComments
        assert sc.PhotometricInterpretation == "RGB" and max(sc.Rows, sc.Columns) <= 1024
        assert sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)
        # The study's SR: TID 1500 with, for this image, the finding, the operating points, the model
        # and the peak on it.
        items = sr_items(_image_group(sr, source.SOPInstanceUID))
        assert (
            sr.ContentSequence and sr.ConceptNameCodeSequence[0].CodeValue == "126000"
        )  # Imaging Measurement Report
        (probability,) = [i for i in _named(items, "Probability") if "MeasuredValueSequence" in i][:1]
        assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(
            record.probability, abs=1e-5
        )
        (category,) = _named(items, "fracsight category")
        assert category.ConceptCodeSequence[0].CodeValue == record.category.replace("_", "-")
        assert category.ConceptCodeSequence[0].CodingSchemeDesignator == SCHEME
        assert any(s.CodingSchemeDesignator == SCHEME for s in sr.CodingSchemeIdentificationSequence)
        thresholds = {i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
                      for i in items if i.ConceptNameCodeSequence[0].CodeValue.startswith("op-")}  # fmt: skip
        assert thresholds == pytest.approx(
            {f"op-{k}": v for k, v in record.result["model"]["thresholds"].items()}
        )
        algorithm = [i.TextValue for i in items if "TextValue" in i]
        assert record.model_id in algorithm
        assert any(t.startswith("model sha256 ") and len(t) == len("model sha256 ") + 64 for t in algorithm)
        (point,) = [i for i in items if i.ValueType == "SCOORD"]
        assert point.GraphicType == "POINT"
        x, y = point.GraphicData
        assert 0 <= x <= source.Columns and 0 <= y <= source.Rows, (name, x, y)
        assert (
            point.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            == source.SOPInstanceUID
        )
        assert len(_named(sr_items(sr), "fracsight study category")) == 1, "the study's answer, once"
        # The presentation state: only where the model points at something.
        assert len(gsps) == (record.category in ("fracture", "doubt")), (name, record.category)
        for state in gsps:
            assert state.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
                source.SOPInstanceUID
            )
            assert state.PresentationLUTShape == (
                "INVERSE" if source.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
            )
            texts = [
                t.UnformattedTextValue for a in state.GraphicAnnotationSequence for t in a.TextObjectSequence
            ]
            assert any(CAPTION in t and record.category.replace("_", " ") in t for t in texts)
            graphics = {
                g.GraphicType: g for a in state.GraphicAnnotationSequence for g in a.GraphicObjectSequence
            }
            outline = np.array(graphics["POLYLINE"].GraphicData, dtype=float).reshape(-1, 2)
            assert len(outline) >= 5 and tuple(outline[0]) == tuple(outline[-1])  # a closed polygon
            assert (outline >= 0).all() and (outline[:, 0] <= source.Columns).all()
            assert (outline[:, 1] <= source.Rows).all()
            centre = np.array(graphics["CIRCLE"].GraphicData[:2], dtype=float)
            assert _inside(centre, outline), "the outline holds the peak"
        if validator:
            for made in (sc, sr, *gsps):
                assert _dciodvfy_errors(made, tmp_path) == [], (name, made.SOPClassUID.name)


def test_study_answer_is_its_most_suspicious_image(node: Node, pacs: FakePacs) -> None:
    study = generate_uid()
    names = ["hd_dx_image.dcm", "pljd_RG2_JLSL.dcm", "pljd_RG3_J2KR.dcm"]
    sources = [renamed(DICOM / n, study=study) for n in names]
    assert send(node.port, sources) == [0x0000] * 3
    records = node.wait_finished([s.SOPInstanceUID for s in sources])
    worst = min(records, key=lambda r: (rank(r.category), -r.probability))
    for source in sources:
        wait_until(lambda s=source: referencing(pacs.of_class(SR_CLASS), s.SOPInstanceUID), 30, "the SR")
        (sr,) = referencing(pacs.of_class(SR_CLASS), source.SOPInstanceUID)  # one SR for the study
        items = sr_items(sr)
        (answer,) = _named(items, "fracsight study category")
        assert answer.ConceptCodeSequence[0].CodeValue == CATEGORIES[Category(worst.category)].dicom_code
        assert any("of 3 analysed images" in i.get("TextValue", "") for i in items)
    assert len({r.batch for r in records}) == 1, "one association, one batch"


def test_non_radiographs_and_broken_files_are_kept_and_refused_with_the_reason(
    node: Node, pacs: FakePacs
) -> None:
    before = len(pacs.received)
    sources = [pydicom.dcmread(DICOM / name) for name in REFUSED]
    assert send(node.port, sources) == [0x0000] * len(sources), "kept: acknowledged"
    records = node.wait_finished([s.SOPInstanceUID for s in sources])
    for source, record, reason in zip(sources, records, REFUSED.values(), strict=True):
        assert record.status == "refused" and reason in record.error, (source.filename, record.error)
        assert record.results == "none"
        assert (node.store.data_dir / record.file).stat().st_size > 0
    time.sleep(1.0)
    received = [d for _, d in pacs.received[before:]]
    for source, reason in zip(sources, REFUSED.values(), strict=True):
        assert not [d for d in referencing(received, source.SOPInstanceUID) if d.SOPClassUID != SR_CLASS]
        # The study's SR answers for the refused image too: "not analysed" with the reason.
        wait_until(lambda s=source: referencing(pacs.of_class(SR_CLASS), s.SOPInstanceUID), 30, "the SR")
        sr = _newest(referencing(pacs.of_class(SR_CLASS), source.SOPInstanceUID))
        said = [i.TextValue for i in sr_items(sr) if source.SOPInstanceUID in str(i.get("TextValue", ""))]
        assert len(said) == 1 and "not analysed: " in said[0] and reason in said[0], said
        codes = [i.ConceptCodeSequence[0].CodeValue for i in _named(sr_items(sr), "fracsight category")]
        assert "not-analysed" in codes
    assert associate(node.port, "MODALITY").send_c_echo().Status == 0x0000, "the node goes on"


def test_only_allowed_calling_ae_titles_and_hosts_get_an_association(node: Node) -> None:
    intruder = associate(node.port, "INTRUDER")
    assert intruder.is_rejected and not intruder.is_established
    wrong_host = associate(node.port, "BOUND")  # allowed only from 127.0.0.2
    assert wrong_host.is_rejected
    right_host = associate(node.port, "BOUND", bind_address=("127.0.0.2", 0))
    assert right_host.is_established
    assert right_host.send_c_echo().Status == 0x0000
    right_host.release()
    with pytest.raises(ConnectionRefusedError):
        send(node.port, [DICOM / "hd_dx_image.dcm"], aet="INTRUDER")


def test_the_node_announces_its_maximum_pdu_size(node: Node) -> None:
    """Senders split a radiograph into PDUs of the size the node announces: 128 KiB by default, so
    a 7 MB image is 55 PDUs, not 430 of pynetdicom's default 16 KiB (each handled in Python)."""
    assoc = associate(node.port, "MODALITY")
    try:
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == node.settings.max_pdu_bytes == 131072
    finally:
        assoc.release()


def test_an_instance_sent_twice_is_kept_and_analysed_once(node: Node) -> None:
    ds = renamed(DICOM / "hd_dx_image.dcm")
    assert send(node.port, [ds]) == [0x0000]
    assert send(node.port, [ds]) == [0x0000], "acknowledged again: the PACS must not retry forever"
    (record,) = node.wait_finished([ds.SOPInstanceUID])
    rows = (
        node.store._connection()
        .execute("SELECT COUNT(*) AS n FROM images WHERE sop_instance_uid = ?", (ds.SOPInstanceUID,))
        .fetchone()
    )
    assert rows["n"] == 1 and record.analyses == 1


def test_own_results_routed_back_are_not_analysed(node: Node, pacs: FakePacs) -> None:
    if not pacs.of_class(SC_CLASS):
        ds = renamed(DICOM / "hd_dx_image.dcm")
        assert send(node.port, [ds]) == [0x0000]
        node.wait_finished([ds.SOPInstanceUID])
        pacs.wait_for(1, SC_CLASS)
    sc = pacs.of_class(SC_CLASS)[0]
    sc.file_meta = pydicom.dataset.FileMetaDataset()
    sc.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sc.file_meta.MediaStorageSOPClassUID = sc.SOPClassUID
    sc.file_meta.MediaStorageSOPInstanceUID = sc.SOPInstanceUID
    assert send(node.port, [sc], aet="PACS") == [0x0000]
    assert node.record(sc.SOPInstanceUID) is None


def test_a_disk_that_cannot_take_the_instance_gets_out_of_resources(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = node.store.counts()
    images = sorted((node.store.data_dir / "images").rglob("*"))

    class Usage:
        free = 1000

    monkeypatch.setattr(intake.shutil, "disk_usage", lambda _: Usage)
    ds = renamed(DICOM / "hd_dx_image.dcm")
    assert send(node.port, [ds]) == [OUT_OF_RESOURCES]
    monkeypatch.undo()

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(intake.os, "fsync", full)
    assert send(node.port, [ds]) == [OUT_OF_RESOURCES]
    monkeypatch.undo()
    assert node.store.counts() == counts and node.record(ds.SOPInstanceUID) is None
    assert sorted((node.store.data_dir / "images").rglob("*")) == images, "nothing half-kept"
    assert not list((node.store.data_dir / "incoming").iterdir())
    assert send(node.port, [ds]) == [0x0000], "sent again once there is room: kept"


def test_results_wait_for_a_pacs_that_is_down_and_reach_it_when_it_is_back(
    node: Node, pacs: FakePacs
) -> None:
    port = pacs.port
    pacs.stop()
    try:
        ds = renamed(DICOM / "hd_dx_image.dcm")
        assert send(node.port, [ds]) == [0x0000]
        (record,) = node.wait_finished([ds.SOPInstanceUID])
        wait_until(lambda: all(s.attempts >= 2 for s in node.store.sends(image_id=record.id)), 30, "retries")
        sends = node.store.sends(image_id=record.id)
        assert {s.status for s in sends} <= {"pending", "sending"}
        assert all("not reachable" in (s.last_error or "") for s in sends), [s.last_error for s in sends]
        entry = next(s for s in node.store.studies() if record.id in s["images"])
        assert entry["n_undelivered"] == len(sends) >= 2
    finally:
        pacs.start(port)
    wait_until(lambda: {s.status for s in node.store.sends(image_id=record.id)} == {"sent"}, 30, "delivery")
    assert referencing(pacs.of_class(SR_CLASS), ds.SOPInstanceUID)


def test_a_result_the_pacs_refuses_is_kept_until_resent(node: Node, pacs: FakePacs) -> None:
    pacs.status[SR_CLASS] = 0xA900  # "data set does not match SOP class"
    try:
        ds = renamed(DICOM / "hd_dx_image.dcm")
        assert send(node.port, [ds]) == [0x0000]
        (record,) = node.wait_finished([ds.SOPInstanceUID])
        wait_until(
            lambda: "rejected" in {s.status for s in node.store.sends(image_id=record.id)}, 30, "refusal"
        )
        time.sleep(1.5)
        (refused,) = [s for s in node.store.sends(image_id=record.id) if s.kind == "sr"]
        assert refused.status == "rejected" and refused.attempts == 1, "not retried on its own"
        assert "0xA900" in refused.last_error
    finally:
        del pacs.status[SR_CLASS]
    counts = resend(node.store, node.settings)
    assert counts["rejected"] == 0
    assert {s.status for s in node.store.sends(image_id=record.id)} == {"sent"}
    assert referencing(pacs.of_class(SR_CLASS), ds.SOPInstanceUID)


def test_results_are_made_after_a_restart_between_analysis_and_results(
    tmp_path: Path, default_analyser, pacs: FakePacs, monkeypatch: pytest.MonkeyPatch, dicom_dir: Path
) -> None:
    monkeypatch.setattr(ResultsStage, "run_once", lambda self: 0)
    first = Node(tmp_path, default_analyser, pacs)
    try:
        ds = renamed(DICOM / "pljd_RG3_J2KR.dcm")
        assert send(first.port, [ds]) == [0x0000]
        wait_until(lambda: first.record(ds.SOPInstanceUID).status == "done", 60, "analysis")
    finally:
        first.stop()
    assert first.record(ds.SOPInstanceUID).results == "pending"
    monkeypatch.undo()
    second = Node(tmp_path, default_analyser, pacs)
    try:
        (record,) = second.wait_finished([ds.SOPInstanceUID])
        assert record.results == "made" and record.analyses == 1
        wait_until(lambda: referencing(pacs.of_class(SR_CLASS), ds.SOPInstanceUID), 30, "the SR")
    finally:
        second.stop()


def test_without_a_destination_images_are_only_kept_and_analysed(tmp_path: Path, default_analyser) -> None:
    plain = Node(tmp_path, default_analyser, None)
    try:
        ds = renamed(SAMPLE_DX)
        assert send(plain.port, [ds]) == [0x0000]
        wait_until(lambda: plain.record(ds.SOPInstanceUID).status == "done", 60, "analysis")
        assert plain.record(ds.SOPInstanceUID).results is None and plain.store.sends() == []
    finally:
        plain.stop()


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="--allow"):
        DicomSettings()
    assert DicomSettings(forward=Destination.parse("PACS@127.0.0.1:4242")).allow == (
        Peer("PACS", "127.0.0.1"),
    )
    for text in ("PACS@127.0.0.1", "PACS", "@host:1", "PACS@host:0", "A" * 17 + "@h:1"):
        with pytest.raises(ValueError):
            Destination.parse(text)
    with pytest.raises(ValueError, match="IP address"):
        Peer.parse("PACS@pacs.example")
    assert Peer.parse("PACS@127.0.0.2").admits("PACS", "127.0.0.2")
    assert not Peer.parse("PACS@127.0.0.2").admits("PACS", "127.0.0.1")
    assert not Peer.parse("PACS").admits("OTHER", "127.0.0.1")


def test_cli_without_allowed_peers_says_what_to_give(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fracsight.cli import main

    assert main(["dicom-node", "--data", str(tmp_path)]) == 2
    assert "--allow" in capsys.readouterr().err
    assert main(["dicom-node", "--data", str(tmp_path), "--forward", "nonsense"]) == 2
    assert "AET@HOST:PORT" in capsys.readouterr().err
    assert main(["serve", "--data", str(tmp_path), "--forward", "PACS@127.0.0.1:4242"]) == 2
    assert "--dicom-port" in capsys.readouterr().err


def test_an_older_store_gets_the_new_columns(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    db = store._connection()
    db.execute("DROP INDEX images_results")
    for column in ("batch", "results", "results_at"):
        db.execute(f"ALTER TABLE images DROP COLUMN {column}")
    store.close()
    reopened = SqliteStore(tmp_path)
    columns = {r["name"] for r in reopened._connection().execute("PRAGMA table_info(images)")}
    assert {"batch", "results", "results_at"} <= columns


def test_serve_with_a_dicom_port_puts_received_images_in_its_worklist(
    tmp_path: Path, pacs: FakePacs, dicom_dir: Path
) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from fracsight.service.server import Service
    from fracsight.service.settings import ServiceSettings

    token = "t" * 24
    dicom = DicomSettings(
        port=0, allow=(Peer("MODALITY"),), forward=Destination("PACS", "127.0.0.1", pacs.port)
    )
    service = Service(ServiceSettings(data_dir=tmp_path, port=0, token=token, dicom=dicom))
    service.start()
    try:
        ds = renamed(DICOM / "hd_dx_image.dcm")
        assert send(service.dicom.port, [ds]) == [0x0000]
        auth = {"Authorization": f"Bearer {token}"}

        def study() -> dict | None:
            found = httpx.get(f"{service.url}/api/studies", headers=auth).json()
            return next((s for s in found if s["study_instance_uid"] == ds.StudyInstanceUID), None)

        wait_until(lambda: (study() or {}).get("category") is not None, 60, "the worklist entry")
        (image_id,) = study()["images"]

        def delivered() -> bool:
            image = httpx.get(f"{service.url}/api/images/{image_id}", headers=auth).json()
            return image["results"] == "made" and {d["status"] for d in image["deliveries"]} == {"sent"}

        wait_until(delivered, 30, "the results delivered")
        image = httpx.get(f"{service.url}/api/images/{image_id}", headers=auth).json()
        assert image["source"] == "dicom" and {d["kind"] for d in image["deliveries"]} >= {"sc", "sr"}
        assert study()["n_undelivered"] == 0
        assert httpx.post(f"{service.url}/api/sends/resend", headers=auth).json()["due_now"] == 0
        assert httpx.get(f"{service.url}/api/health").json()["sends"]["sent"] >= 2
    finally:
        service.stop()


def test_results_not_written_for_a_full_disk_are_made_later(
    node: Node, pacs: FakePacs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fracsight.service import results_stage

    failures = []
    write = results_stage._write

    def full_once(dataset, target) -> None:
        if not failures:
            failures.append(target)
            raise OSError(errno.ENOSPC, "No space left on device")
        write(dataset, target)

    monkeypatch.setattr(results_stage, "RETRY_S", 0.2)
    monkeypatch.setattr(results_stage, "_write", full_once)
    ds = renamed(DICOM / "hd_dx_image.dcm")
    assert send(node.port, [ds]) == [0x0000]
    (record,) = node.wait_finished([ds.SOPInstanceUID])
    assert failures and record.results == "made"
    wait_until(lambda: referencing(pacs.of_class(SR_CLASS), ds.SOPInstanceUID), 30, "the SR")


def test_an_image_still_queued_keeps_waiting_for_its_results(tmp_path: Path, default_analyser) -> None:
    from fracsight.service.store import StudyInfo

    store = SqliteStore(tmp_path)
    settings = DicomSettings(allow=(Peer("MODALITY"),), forward=Destination("PACS", "127.0.0.1", 1))
    store.open_batch("b1", "MODALITY")
    info = StudyInfo(study_key="s1", study_instance_uid="s1")
    for image_id in ("a1", "a2"):
        store.add_image(
            image_id, "dicom", f"images/{image_id}.dcm", "dicom", 1, info, batch="b1", wants_results=True
        )
    store.claim_next()
    store.refuse("a1", "not a radiograph")
    ResultsStage(store, default_analyser, settings).make("s1")
    assert store.get_image("a1").results == "none"
    assert store.get_image("a2").results == "pending", "queued: its results come once it is analysed"
