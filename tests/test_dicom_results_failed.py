"""A result that cannot be made is a visible state, and is made again after a fix.

Result making is broken on purpose (the builder raises for one image; for another it makes the
SC and SR but not the presentation state): the first image shows ``results: failed`` with its
reason in ``GET /api/images/{id}`` of a running ``serve --dicom-port``, the second too while its SC
and SR reach the PACS; the log names neither image nor patient. After the fix, the worklist's
resend action and ``fracsight dicom-node --resend`` make them again and deliver them. The store's
``results_error`` column is added to an older database.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from dicom_peers import DICOM, FakePacs, Node, referencing, renamed, send, wait_until  # noqa: E402

from fracsight.service import results_stage  # noqa: E402
from fracsight.service.dicom_results import GSPS_CLASS, SC_CLASS, SR_CLASS, ResultObjects  # noqa: E402
from fracsight.service.settings import Destination, DicomSettings, Peer  # noqa: E402
from fracsight.service.store import SqliteStore  # noqa: E402


@pytest.fixture()
def pacs():
    server = FakePacs().start()
    yield server
    server.stop()


def _break(monkeypatch: pytest.MonkeyPatch, raising: str, without_gsps: str) -> None:
    """The builder raises for the instance ``raising`` and makes no presentation state for
    ``without_gsps`` (as highdicom would on a header it cannot read)."""
    build = results_stage.build_results

    def broken(source, *args, **kwargs) -> ResultObjects:
        if source.SOPInstanceUID == raising:
            raise KeyError("StudyTime")
        objects = build(source, *args, **kwargs)
        if source.SOPInstanceUID == without_gsps:
            return ResultObjects(objects.sc, objects.sr, None, {"gsps": "AttributeError (WindowWidth)"})
        return objects

    monkeypatch.setattr(results_stage, "build_results", broken)


def test_failed_results_show_in_the_api_and_the_resend_action_makes_them(
    tmp_path: Path, pacs: FakePacs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    dicom_dir: Path,
) -> None:  # fmt: skip
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from fracsight.service.server import Service
    from fracsight.service.settings import ServiceSettings

    lost = renamed(DICOM / "hd_dx_image.dcm", PatientName="Secret^Patient", PatientID="SECRET-ID")
    partial = renamed(DICOM / "pljd_RG3_J2KR.dcm")
    _break(monkeypatch, raising=lost.SOPInstanceUID, without_gsps=partial.SOPInstanceUID)
    token = "t" * 24
    forward = Destination("PACS", "127.0.0.1", pacs.port)
    dicom = DicomSettings(port=0, allow=(Peer("MODALITY"),), forward=forward, batch_idle_s=1.0,
                          study_quiet_s=1.0, retry_base_s=0.2, retry_max_s=0.5)  # fmt: skip
    service = Service(ServiceSettings(data_dir=tmp_path, port=0, token=token, dicom=dicom))
    service.start()
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with caplog.at_level(logging.INFO):
            assert send(service.dicom.port, [lost, partial]) == [0x0000, 0x0000]
            store = service.store

            def image(ds) -> dict:
                record = store.find_instance(ds.SOPInstanceUID)
                return httpx.get(f"{service.url}/api/images/{record.id}", headers=auth).json()

            def failed() -> bool:
                return image(lost).get("results") == "failed" and image(partial).get("results") == "failed"

            wait_until(failed, 90, "results failed")
            assert image(lost)["status"] == "done", "analysed: the failure is the results', not the analysis'"
            assert "KeyError" in image(lost)["results_error"] and "StudyTime" in image(lost)["results_error"]
            assert image(partial)["results_error"] == "gsps: AttributeError (WindowWidth)"
            # what could be made of the second image is delivered all the same
            wait_until(lambda: referencing(pacs.of_class(SR_CLASS), partial.SOPInstanceUID), 30, "its SR")
            assert referencing(pacs.of_class(SC_CLASS), partial.SOPInstanceUID)
            assert not referencing(pacs.of_class(GSPS_CLASS), partial.SOPInstanceUID)
            # the study's SR is made apart from the image's objects: it still tells the answer
            wait_until(lambda: referencing(pacs.of_class(SR_CLASS), lost.SOPInstanceUID), 30, "its SR")
            assert not referencing(pacs.of_class(SC_CLASS), lost.SOPInstanceUID)
        ids = {store.find_instance(ds.SOPInstanceUID).id for ds in (lost, partial)}
        logged = "\n".join(r.getMessage() for r in caplog.records)
        for secret in ("Secret", "SECRET-ID"):
            assert secret not in logged, f"the log names {secret!r}"
        stage = "\n".join(r.getMessage() for r in caplog.records if r.name == results_stage.__name__)
        assert "could not be made" in stage
        for secret in (*ids, lost.SOPInstanceUID, partial.SOPInstanceUID):
            assert secret not in stage, f"the results stage's log names {secret!r}"

        monkeypatch.undo()  # the fix
        answer = httpx.post(f"{service.url}/api/sends/resend", headers=auth).json()
        assert answer["remade"] == 2

        def made() -> bool:
            return all(image(ds).get("results") == "made" for ds in (lost, partial))

        wait_until(made, 60, "the results made again")
        assert "results_error" not in image(lost)
        wait_until(lambda: referencing(pacs.of_class(GSPS_CLASS), partial.SOPInstanceUID), 30, "the GSPS")
        wait_until(lambda: referencing(pacs.of_class(SR_CLASS), lost.SOPInstanceUID), 30, "the SR")
        assert referencing(pacs.of_class(SC_CLASS), lost.SOPInstanceUID)
        record = store.find_instance(partial.SOPInstanceUID)
        kinds = sorted(s.kind for s in store.sends(image_id=record.id))
        assert kinds == ["gsps", "sc", "sr"], "what was queued before is not queued twice"
    finally:
        service.stop()


def test_dicom_node_resend_makes_failed_results_after_a_fix(
    tmp_path: Path, default_analyser, pacs: FakePacs, monkeypatch: pytest.MonkeyPatch, dicom_dir: Path
) -> None:
    from fracsight.cli import main

    ds = renamed(DICOM / "hd_dx_image.dcm")
    _break(monkeypatch, raising=ds.SOPInstanceUID, without_gsps="")
    node = Node(tmp_path, default_analyser, pacs)
    try:
        assert send(node.port, [ds]) == [0x0000]
        (record,) = node.wait_finished([ds.SOPInstanceUID])
    finally:
        node.stop()
    assert record.results == "failed" and record.to_api()["results"] == "failed"
    assert record.to_api()["results_error"] == "all: KeyError (StudyTime)"
    assert [s.kind for s in node.store.sends(image_id=record.id)] == ["sr"], "the study's SR only"
    monkeypatch.undo()
    forward = f"PACS@127.0.0.1:{pacs.port}"
    assert main(["dicom-node", "--data", str(tmp_path), "--allow", "MODALITY", "--forward", forward,
                 "--resend"]) == 0  # fmt: skip
    again = SqliteStore(tmp_path).get_image(record.id)
    assert again.results == "made" and again.results_error is None
    assert {s.status for s in SqliteStore(tmp_path).sends(image_id=record.id)} == {"sent"}
    assert referencing(pacs.of_class(SR_CLASS), ds.SOPInstanceUID)
    assert referencing(pacs.of_class(SC_CLASS), ds.SOPInstanceUID)


def test_an_older_store_gets_the_results_error_column(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store._connection().execute("ALTER TABLE images DROP COLUMN results_error")
    store.close()
    reopened = SqliteStore(tmp_path)
    columns = {r["name"] for r in reopened._connection().execute("PRAGMA table_info(images)")}
    assert "results_error" in columns
    settings = DicomSettings(allow=(Peer("MODALITY"),), forward=Destination("PACS", "127.0.0.1", 1))
    assert results_stage.remake_failed(reopened, settings, lambda: pytest.fail("no model needed")) == 0
