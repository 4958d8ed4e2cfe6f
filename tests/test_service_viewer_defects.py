"""Defects found in review of the worklist and viewer, each tried in a real headless Chromium
against a running service (store, analysis worker with the shipped model, HTTP on loopback):

- a study link that fails clears the study shown before and says so (no uncaught error);
- a new image in a study already read reopens it (it is back in the unread list);
- a note typed after the verdict is saved with it (or the reader is told it is not saved yet);
- the same DICOM instance uploaded twice is acknowledged as a duplicate and kept once;
- a new upload appears in an open worklist within 5 s, with nothing else pending.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from conftest import HAVE_CHROMIUM, chrome_driver, service_with_reader
from conftest import wait_for as _wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian chromium and chromium-driver not installed"),
]
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
TOKEN = "viewer-defects-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VERDICTS = "#viewports button[data-feedback]"
PATIENT = "AVeryGood"  # the bundled DICOM sample's patient name (Dog^AVeryGood)


@pytest.fixture()
def service(tmp_path: Path):
    yield from service_with_reader(tmp_path, TOKEN)


@pytest.fixture()
def browser(service, tmp_path: Path):
    from selenium.webdriver.common.by import By

    driver = chrome_driver(tmp_path, 1400, 1000)
    try:
        driver.get(service.url + "/")
        driver.find_element(By.ID, "token").send_keys(service.reader_token)
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        _wait_for(lambda: driver.find_element(By.ID, "list-view").is_displayed(), what="the worklist")
        yield driver
    finally:
        driver.quit()




def _dicom(sample_images: list[Path], new_instance: bool = False) -> bytes:
    """The bundled DICOM sample, or another instance of its study (a new SOP Instance UID)."""
    source = next(p for p in sample_images if p.suffix == ".dcm")
    if not new_instance:
        return source.read_bytes()
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _upload(service, data: bytes, name: str = "x.dcm") -> httpx.Response:
    return httpx.post(service.url + "/api/images", files={"file": (name, data)}, headers=AUTH, timeout=30)


def _analysed(service, image_id: str) -> dict:
    def done():
        body = httpx.get(f"{service.url}/api/images/{image_id}", headers=AUTH).json()
        return body if body["status"] not in ("queued", "analysing") else None

    return _wait_for(done, what="the analysis")


def _uncaught_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_a_failing_study_link_clears_the_study_shown_before(service, browser, sample_images) -> None:
    from selenium.webdriver.common.by import By

    ack = _upload(service, _dicom(sample_images)).json()
    _analysed(service, ack["id"])
    browser.execute_script("location.hash = arguments[0]", f"#/study/{ack['study']}")
    _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, VERDICTS), what="the verdict buttons")
    assert PATIENT in browser.find_element(By.ID, "study-title").text
    browser.get_log("browser")  # what came before is not this test's concern

    browser.execute_script("location.hash = '#/study/1.2.3.4.5.unknown'")
    message = _wait_for(
        lambda: next(iter(e for e in browser.find_elements(By.ID, "study-error") if e.is_displayed()), None),
        what="the message",
    )
    assert "not found" in message.text
    viewer = browser.find_element(By.ID, "viewer-view")
    assert PATIENT not in viewer.text and "123456" not in viewer.text  # no patient of another study
    assert not browser.find_elements(By.CSS_SELECTOR, "#viewports .viewport, #viewports button")
    assert not browser.find_element(By.ID, "mark-read").is_enabled()
    # The 404 the browser logs for the request itself is expected; nothing was thrown unhandled.
    assert not [m for m in _uncaught_errors(browser) if "Uncaught" in m or "unhandled" in m.lower()]

    # A good link afterwards shows its study again, and the message is gone.
    browser.execute_script("location.hash = arguments[0]", f"#/study/{ack['study']}")
    _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, VERDICTS), what="the verdict buttons")
    assert not browser.find_element(By.ID, "study-error").is_displayed()


def test_a_new_image_reopens_a_study_marked_read(service, browser, sample_images) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ack = _upload(service, _dicom(sample_images)).json()
    _analysed(service, ack["id"])
    Select(browser.find_element(By.ID, "filter-read")).select_by_value("false")  # unread only
    row = f"#worklist tbody tr[data-study='{ack['study']}']"
    _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, row), what="the study in the unread list")
    # Mark it read (in one step in the page: the list may be redrawn by its poll at any moment).
    browser.execute_script("document.querySelector(arguments[0]).click()", f"{row} input[type=checkbox]")
    _wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, row), what="the study marked read")
    assert httpx.get(f"{service.url}/api/studies/{ack['study']}", headers=AUTH).json()["read"] is True

    second = _upload(service, _dicom(sample_images, new_instance=True)).json()
    assert second["study"] == ack["study"] and second["duplicate"] is False
    # Back in the open unread list by itself (the page's change poll), unread in the API.
    _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, row), timeout=5, what="the study reopened")
    study = httpx.get(f"{service.url}/api/studies/{ack['study']}", headers=AUTH).json()
    assert study["read"] is False and study["n_images"] == 2


def test_a_note_typed_after_the_verdict_is_kept(service, browser, sample_images) -> None:
    from selenium.webdriver.common.by import By

    ack = _upload(service, _dicom(sample_images)).json()
    image = _analysed(service, ack["id"])
    browser.execute_script("location.hash = arguments[0]", f"#/study/{ack['study']}")
    viewport = f".viewport[data-image='{ack['id']}']"
    buttons = _wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, f"{viewport} button[data-feedback]"), what="verdicts"
    )
    buttons[0].click()  # Agree (or Fracture, where the model said doubt)
    saved = f"{viewport} .saved[data-saved='yes']"
    _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, saved), what="the verdict saved")

    def notes() -> list[str]:
        detail = httpx.get(f"{service.url}/api/images/{ack['id']}", headers=AUTH).json()
        return [f["note"] for f in detail["feedback"]]

    note = browser.find_element(By.CSS_SELECTOR, f"{viewport} textarea")
    note.send_keys("fracture line at the distal radius")
    unsaved = browser.find_element(By.CSS_SELECTOR, f"{viewport} .unsaved")
    assert unsaved.get_attribute("data-unsaved") == "yes" and "not saved" in unsaved.text  # the reader knows
    # Leaving the note saves it with the verdict given.
    browser.find_element(By.ID, "study-title").click()
    _wait_for(lambda: notes()[-1] == "fracture line at the distal radius", what="the note saved on leaving")
    _wait_for(lambda: unsaved.get_attribute("data-unsaved") == "no", what="the note shown saved")
    # Typed more, then straight back to the worklist: kept too.
    note.send_keys("; seen by Dr Test")
    browser.find_element(By.ID, "back").click()
    _wait_for(lambda: notes()[-1].endswith("; seen by Dr Test"), what="the note saved on going back")
    verdicts = httpx.get(f"{service.url}/api/images/{ack['id']}", headers=AUTH).json()["feedback"]
    first = verdicts[0]
    assert all((v["fracture"], v["agrees"], v["reader"]) == (first["fracture"], first["agrees"], "Dr Test")
               for v in verdicts)  # fmt: skip
    if image["category"] not in ("doubt", "out_of_scope"):  # the reader's own call there, no agreeing
        assert first["agrees"] is True


def test_the_same_instance_uploaded_twice_through_the_page_is_kept_once(
    service, browser, sample_images, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    path = tmp_path / "study.dcm"
    path.write_bytes(_dicom(sample_images))
    browser.find_element(By.ID, "upload").send_keys(str(path))
    _wait_for(lambda: "1 of 1 uploaded" in browser.find_element(By.ID, "upload-status").text, what="upload")
    browser.find_element(By.ID, "upload").send_keys(str(path))
    status = _wait_for(
        lambda: "already kept" in (text := browser.find_element(By.ID, "upload-status").text) and text,
        what="the duplicate acknowledged",
    )
    assert "0 of 1 uploaded" in status and "study.dcm" in status
    studies = httpx.get(f"{service.url}/api/studies", headers=AUTH).json()
    assert len(studies) == 1 and studies[0]["n_images"] == 1
    again = _upload(service, path.read_bytes())
    assert again.status_code == 200 and again.json() == {
        "id": studies[0]["images"][0], "study": studies[0]["study"], "duplicate": True}  # fmt: skip


def test_a_new_upload_appears_in_an_open_worklist_within_5_s(service, browser, sample_images) -> None:
    from selenium.webdriver.common.by import By

    jpeg = next(p for p in sample_images if p.suffix == ".jpg")
    first = _upload(service, jpeg.read_bytes(), "a.jpg").json()
    _analysed(service, first["id"])
    rows = "#worklist tbody tr"

    def categories() -> list[str]:  # read in one step: the list may be redrawn at any moment
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map((r) => r.dataset.category)", rows
        )

    _wait_for(lambda: categories() not in ([], [""]), what="the first upload analysed in the list")
    time.sleep(2.5)  # nothing pending now: the page has no analysis to wait for
    second = _upload(service, _dicom(sample_images)).json()
    sent = time.monotonic()
    _wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, f"{rows}[data-study='{second['study']}']"),
        timeout=5,
        what="the new upload in the open worklist",
    )
    assert time.monotonic() - sent <= 5
    # And its result follows by itself too.
    _wait_for(lambda: "" not in categories() and len(categories()) == 2, what="the new result in the list")
