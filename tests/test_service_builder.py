"""One builder for every service: :class:`fracsight.service.server.Service` wires the store, the
analyser and the worker once, with the web front, the DICOM node, or both, and one lifecycle."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from dicom_peers import DICOM, FakePacs, renamed, send, wait_until  # noqa: E402

from fracsight.service.server import Service  # noqa: E402
from fracsight.service.settings import Destination, DicomSettings, Peer, ServiceSettings  # noqa: E402


def test_the_dicom_node_alone_receives_analyses_and_sends_without_a_web_front(
    tmp_path: Path, dicom_dir: Path
) -> None:
    pacs = FakePacs().start()
    try:
        dicom = DicomSettings(
            port=0, allow=(Peer("MODALITY"),), forward=Destination("PACS", "127.0.0.1", pacs.port)
        )
        settings = ServiceSettings(data_dir=tmp_path, dicom=dicom, web=False, decoder_processes=1)
        service = Service(settings)
        assert service.app is None and service.token is None
        service.start()
        try:
            ds = renamed(DICOM / "hd_dx_image.dcm")
            assert send(service.dicom.port, [ds]) == [0x0000]

            def done() -> bool:
                record = service.store.find_instance(ds.SOPInstanceUID)
                return record is not None and record.results == "made"

            wait_until(done, 60, "the image analysed and its results made")
        finally:
            service.stop()
        assert not (tmp_path / "api-token").exists(), "no web front: no API token made"
        assert not service.worker.alive
    finally:
        pacs.stop()


def test_a_service_needs_a_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DICOM node"):
        ServiceSettings(data_dir=tmp_path, web=False)
