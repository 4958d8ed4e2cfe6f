"""Acceptance: the bundled dog thorax comes back ``out_of_scope`` through every service surface
(the web API and the DICOM node's SR), and the bundled FracAtlas samples keep the category the
model gives them without the check.

The check itself and ``predict`` are tested in ``test_safety.py``; here the real app (TestClient,
SQLite store, analysis worker with the shipped model) and a real node (pynetdicom SCP, results
stage, sender) between a pynetdicom modality and a FakePacs on loopback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import image_analysed

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

import pydicom  # noqa: E402
from dicom_peers import FakePacs, Node, referencing, send, wait_until  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from fracsight.decide import CATEGORIES, Category, decide  # noqa: E402
from fracsight.service.dicom_results import SR_CLASS  # noqa: E402
from fracsight.service.store import SqliteStore  # noqa: E402
from fracsight.service.web import create_app  # noqa: E402
from fracsight.service.worker import AnalysisWorker  # noqa: E402

TOKEN = "s" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOG = "hd_dx_image.dcm"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, default_analyser):
    store = SqliteStore(tmp_path_factory.mktemp("scope-service"))
    worker = AnalysisWorker(store, default_analyser, poll_s=0.2)
    worker.start()
    yield TestClient(create_app(store, worker, TOKEN, 64 * 1024 * 1024))
    worker.stop()


def _analysed(client: TestClient, path: Path, timeout: float = 90.0) -> dict:
    response = client.post("/api/images", files={"file": (path.name, path.read_bytes())}, headers=AUTH)
    assert response.status_code == 202, response.text
    return image_analysed(client, response.json()["id"], AUTH, timeout)


def test_the_dog_is_out_of_scope_through_the_api(service: TestClient, samples_dir: Path) -> None:
    body = _analysed(service, samples_dir / DOG)
    assert body["status"] == "done" and body["category"] == Category.OUT_OF_SCOPE.value
    scope = body["scope"]
    assert scope["out_of_scope"] is True and "unlike the radiographs" in scope["reason"]
    assert scope["score"] > 0 and 0.0 <= body["probability"] <= 1.0  # kept, for research
    overlay = service.get(f"/api/images/{body['id']}/overlay.png", headers=AUTH)
    assert overlay.status_code == 404 and "outside what the model knows" in overlay.text
    # The picture itself is still there to look at.
    assert service.get(f"/api/images/{body['id']}/image.png", headers=AUTH).status_code == 200


def test_every_bundled_fracatlas_sample_keeps_its_category_through_the_api(
    service: TestClient, sample_images: list[Path], default_analyser
) -> None:
    for path in sample_images:
        if path.name == DOG:
            continue
        body = _analysed(service, path)
        assert body["status"] == "done", path.name
        without_check = decide(body["probability"], default_analyser.thresholds, False)
        assert body["category"] == without_check.value, path.name
        assert body["scope"]["out_of_scope"] is False, path.name
        assert service.get(f"/api/images/{body['id']}/overlay.png", headers=AUTH).status_code == 200


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, default_analyser):
    pacs = FakePacs().start()
    running = Node(tmp_path_factory.mktemp("scope-node"), default_analyser, pacs)
    yield running, pacs
    running.stop()
    pacs.stop()


def _sr_category(sr: pydicom.Dataset, meaning: str) -> pydicom.Dataset:
    found = []
    stack = list(sr.get("ContentSequence", []))
    while stack:
        item = stack.pop()
        stack.extend(item.get("ContentSequence", []))
        if "ConceptNameCodeSequence" in item and item.ConceptNameCodeSequence[0].CodeMeaning == meaning:
            found.append(item)
    assert len(found) == 1, f"{len(found)} {meaning!r} items"
    return found[0]


def test_the_dog_is_out_of_scope_in_the_dicom_nodes_sr(node, samples_dir: Path) -> None:
    running, pacs = node
    dog = pydicom.dcmread(samples_dir / DOG)
    dog.SOPInstanceUID = dog.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dog.StudyInstanceUID = generate_uid()
    assert send(running.port, [dog]) == [0x0000]
    (record,) = running.wait_finished([dog.SOPInstanceUID])
    assert record.status == "done" and record.category == Category.OUT_OF_SCOPE.value
    wait_until(lambda: referencing(pacs.of_class(SR_CLASS), dog.SOPInstanceUID), 60, "the SR")
    (sr,) = referencing(pacs.of_class(SR_CLASS), dog.SOPInstanceUID)
    category = _sr_category(sr, "fracsight category")
    assert category.ConceptCodeSequence[0].CodeValue == "out-of-scope"
    assert CATEGORIES[Category.OUT_OF_SCOPE].dicom_code == "out-of-scope"
    study = _sr_category(sr, "fracsight study category")
    assert study.ConceptCodeSequence[0].CodeValue == "out-of-scope"  # its only image
