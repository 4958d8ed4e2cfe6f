"""The reader-study API against a running service: who may do what, what the unaided arm hides,
reads written once, the washout, and an export ``fracsight readers`` loads as is.

2 readers x the 5 bundled FracAtlas samples (3 fractured, 2 not), made from a case folder.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("fastapi")
TOKEN = "reader-study-api-token-0123456789"
AI_WORDS = ("probability", "category", "heatmap")


@pytest.fixture()
def service(tmp_path: Path):
    from fracsight.service.server import Service
    from fracsight.service.settings import ServiceSettings
    from fracsight.service.users import UserDirectory

    running = Service(ServiceSettings(data_dir=tmp_path / "data", port=0, token=TOKEN))
    directory = UserDirectory.of_data_dir(tmp_path / "data")
    accounts = (("A", "reader"), ("B", "reader"), ("C", "reader"), ("Boss", "admin"))
    running.tokens = {name: directory.add(name, role)[1] for name, role in accounts}
    running.start()
    yield running
    running.stop()


def _client(service, token: str):
    import httpx

    return httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def test_reader_study_api(service, samples_dir: Path, sample_labels: dict[str, int], tmp_path: Path) -> None:
    import time

    from fracsight.reader_study.data import load_reads
    from fracsight.service.reader_study import StudyBook

    cases = tmp_path / "cases"
    for name, label in sample_labels.items():
        folder = cases / ("fractured" if label else "not_fractured")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(samples_dir / name, folder / name)
    admin = _client(service, TOKEN)
    a, b, c = (_client(service, service.tokens[n]) for n in "ABC")
    body = {"name": "pilot", "readers": ["A", "B"], "case_list": str(cases), "washout_days": 0}

    assert a.post("/api/reader-studies", json=body).status_code == 403  # administrators only
    assert admin.post("/api/reader-studies", json={**body, "readers": ["A", "Boss"]}).status_code == 422
    assert admin.post("/api/reader-studies", json={**body, "readers": ["A", "nobody"]}).status_code == 422
    made = admin.post("/api/reader-studies", json=body)
    assert made.status_code == 201, made.text
    study = made.json()["id"]
    assert isinstance(made.json()["seed"], int) and made.json()["cases"] == 5  # a drawn seed, recorded
    deadline = time.monotonic() + 120
    while admin.get(f"/api/reader-studies/{study}").json()["images"].get("done") != 5:
        assert time.monotonic() < deadline, "the worker did not analyse the study's images"
        time.sleep(0.3)
    book = StudyBook(Path(service.settings.data_dir) / "fracsight.db")
    image_ids = [i for row in book.cases(study) for i in book.case_images(study, row["case_id"])]

    # The study's cases are no patients: never in the worklist, its change feed, site monitoring or
    # the queue counts; a patient's upload of the same image is there, apart from them.
    def clinical_views() -> tuple:
        listed = [i for s in admin.get("/api/studies").json() for i in s["images"]]
        feed = admin.get("/api/changes", params={"since": 0}).json()["studies"]
        fed = [i for s in feed for i in s["images"]]
        months = admin.get("/api/performance").json()["by_month"].values()
        analysed = sum(sum(m["categories"].values()) for m in months)
        return listed, fed, analysed, admin.get("/api/health").json()["queue"]["done"]

    assert clinical_views() == ([], [], 0, 0)
    name = sorted(sample_labels)[0]
    upload = admin.post("/api/images", files={"file": (name, (samples_dir / name).read_bytes())})
    assert upload.status_code == 202, upload.text
    patient = upload.json()["id"]
    while admin.get(f"/api/images/{patient}").json()["status"] in ("queued", "analysing"):
        assert time.monotonic() < deadline, "the worker did not analyse the upload"
        time.sleep(0.3)
    assert clinical_views() == ([patient], [patient], 1, 1)
    assert patient not in image_ids
    assert all(admin.get(f"/api/images/{i}").json()["source"] == "study" for i in image_ids)
    assert admin.get(f"/api/reader-studies/{study}").json()["images"].get("done") == 5  # the study has them
    assert [s["arm"] for s in book.sessions(study)] == ["unaided", "aided", "aided", "unaided"]

    # A reads unaided first: no AI anywhere, the rest of the API closed, the current case only
    assert a.get(f"/api/reader-studies/{study}").status_code == 403  # progress: administrators only
    assert a.get(f"/api/reader-studies/{study}/reads.csv").status_code == 403
    assert a.get("/api/worklist").status_code == 403
    assert a.get(f"/api/images/{image_ids[0]}").status_code == 403
    assert a.get(f"/api/images/{image_ids[0]}/overlay.png").status_code == 403
    assert a.get("/api/categories").status_code == 200
    assert c.get(f"/api/reader-studies/{study}/next").status_code == 403  # not a reader of this study
    item = a.get(f"/api/reader-studies/{study}/next")
    assert item.status_code == 200 and item.json()["arm"] == "unaided"
    assert not any(word in item.text for word in (*AI_WORDS, "truth"))
    assert a.get(f"/api/reader-studies/{study}/images/0/overlay.png").status_code == 403
    pixels = a.get(f"/api/reader-studies/{study}/images/0/pixels")
    height, width = struct.unpack("<II", pixels.content[:8])
    assert pixels.status_code == 200 and len(pixels.content) == 8 + 2 * height * width
    key = item.json()["case"]
    wrong = a.post(f"/api/reader-studies/{study}/reads",
                   json={"case": "0" * 12, "fracture": True, "confidence": 70, "time_ms": 10})
    assert wrong.status_code == 409  # only the current case can be read
    read = {"case": key, "fracture": True, "confidence": 70, "time_ms": 10,
            "click": {"image": 0, "x": 5, "y": 6}}
    assert a.post(f"/api/reader-studies/{study}/reads", json={**read, "click": {"image": 3, "x": 1, "y": 1}}
                  ).status_code == 422  # fmt: skip
    sent = a.post(f"/api/reader-studies/{study}/reads", json=read)
    assert sent.status_code == 201 and not any(word in sent.text for word in AI_WORDS)
    assert a.post(f"/api/reader-studies/{study}/reads", json=read).status_code == 409  # written once
    assert a.get(f"/api/reader-studies/{study}/next").json()["position"] == 2

    # B reads aided first: the AI as the viewer shows it, but study images never by /api/images
    item = b.get(f"/api/reader-studies/{study}/next").json()
    assert item["arm"] == "aided" and item["ai"]["category"] and "probability" in item["images"][0]["ai"]
    assert b.get(f"/api/images/{image_ids[0]}").status_code == 403
    overlay = b.get(f"/api/reader-studies/{study}/images/0/overlay.png")
    # the hot region's outline as the clinical viewer gets it: the same polygon
    case_of = {row["case_key"]: row["case_id"] for row in book.cases(study)}
    for shown, image_id in zip(item["images"], book.case_images(study, case_of[item["case"]]), strict=True):
        viewer = admin.get(f"/api/images/{image_id}").json()
        assert shown["ai"].get("outline") == viewer.get("outline")
        assert ("outline" in viewer) == (viewer["category"] != "out_of_scope")
    assert overlay.status_code in (200, 404) and "truth" not in str(item)

    # both read everything (a washout of 0 days opens the second session at once)
    for client in (a, b):
        while not (item := client.get(f"/api/reader-studies/{study}/next").json()).get("done"):
            assert "truth" not in item
            answer = {"case": item["case"], "fracture": item["position"] % 2 == 0,
                      "confidence": 10 * item["position"], "time_ms": 100}  # fmt: skip
            assert client.post(f"/api/reader-studies/{study}/reads", json=answer).status_code == 201
    assert a.get("/api/worklist").status_code == 200  # open again once the unaided session is done
    progress = admin.get(f"/api/reader-studies/{study}").json()
    assert [s["read"] for r in progress["readers"] for s in r["sessions"]] == [5, 5, 5, 5]
    plan = admin.get(f"/api/reader-studies/{study}/plan").json()
    assert 0 < plan["power"] < 1 and plan["readers"] == 2 and plan["cases"] == 5

    (tmp_path / "reads.csv").write_text(admin.get(f"/api/reader-studies/{study}/reads.csv").text)
    loaded = load_reads(tmp_path / "reads.csv")
    assert set(loaded.modalities) == {"unaided", "aided"} and loaded.readers == ("A", "B")
    assert loaded.n_cases == 5 and loaded.n_diseased == 3 and loaded.calls is not None
    ai = admin.get(f"/api/reader-studies/{study}/ai.csv").text.splitlines()
    assert ai[0] == "case_id,probability,category,error,model" and len(ai) == 6
