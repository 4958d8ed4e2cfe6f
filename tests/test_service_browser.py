"""The worklist and viewer in a real headless Chromium, against a running ``fracsight serve``.

Signs in with a reader's own token, uploads a DICOM and a JPEG through the page, finds both in
the worklist in the API's order, opens one, toggles the heat map, drags window/level, records
feedback under the reader's name, reloads and finds it kept. Screenshots go to
``test-artefacts/serve/`` (kept by CI as artefacts).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HAVE_CHROMIUM, REPO_ROOT, chrome_driver, service_with_reader
from conftest import wait_for as _wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian chromium and chromium-driver not installed"),
]
pytest.importorskip("fastapi")
ARTEFACTS = REPO_ROOT / "test-artefacts" / "serve"
TOKEN = "browser-test-token-0123456789"


@pytest.fixture()
def service(tmp_path: Path):
    yield from service_with_reader(tmp_path, TOKEN)




def _sign_in(driver, By, token: str) -> None:
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    _wait_for(lambda: driver.find_element(By.ID, "list-view").is_displayed(), what="the worklist")


def test_upload_worklist_viewer_feedback_in_chromium(
    service, sample_images: list[Path], tmp_path: Path
) -> None:
    import httpx
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    dicom = next(p for p in sample_images if p.suffix == ".dcm")
    jpeg = next(p for p in sample_images if p.name == "IMG0002472.jpg")
    driver = chrome_driver(tmp_path, 1400, 1000)
    try:
        driver.get(service.url + "/")
        _sign_in(driver, By, service.reader_token)
        assert driver.find_element(By.ID, "who").text == "Signed in as Dr Test"  # the token's user
        driver.find_element(By.ID, "upload").send_keys(f"{dicom}\n{jpeg}")

        def analysed_rows():
            from selenium.common.exceptions import StaleElementReferenceException

            try:  # the worklist redraws itself while images are pending: look again then
                found = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
                done = [r for r in found if r.get_attribute("data-category")]
            except StaleElementReferenceException:
                return None
            return done if len(found) == len(done) == 2 else None

        rows = _wait_for(analysed_rows, what="both uploads analysed in the worklist")
        # The page shows the studies in the API's order: the most suspicious first.
        api = httpx.get(service.url + "/api/studies", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert [r.get_attribute("data-study") for r in rows] == [s["study"] for s in api]
        assert "AVeryGood" in driver.find_element(By.ID, "worklist").text  # the DICOM's patient name
        driver.save_screenshot(str(ARTEFACTS / "worklist.png"))

        rows[0].click()
        canvas = _wait_for(
            lambda: next(
                iter(driver.find_elements(By.CSS_SELECTOR, "#viewports canvas[data-heatmap]")), None
            ),
            what="the image drawn in the viewer",
        )
        assert canvas.get_attribute("data-heatmap") == "on"
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("h")
        assert canvas.get_attribute("data-heatmap") == "off"
        body.send_keys("h")
        assert canvas.get_attribute("data-heatmap") == "on"
        window, level = canvas.get_attribute("data-window"), canvas.get_attribute("data-level")
        ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(
            60, 40
        ).release().perform()
        assert (canvas.get_attribute("data-window"), canvas.get_attribute("data-level")) != (window, level)
        zoom = canvas.get_attribute("data-zoom")
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -200).perform()
        assert canvas.get_attribute("data-zoom") != zoom
        driver.save_screenshot(str(ARTEFACTS / "viewer.png"))
        model = driver.find_element(By.CSS_SELECTOR, ".viewport .model").text
        from fracsight.model_card import ModelCard

        card = ModelCard.for_model()
        assert card.model_id in model and f"version {card.version}" in model and "not a diagnosis" in model

        image_id = canvas.get_attribute("data-image")
        button = driver.find_element(
            By.CSS_SELECTOR, f".viewport[data-image='{image_id}'] button[data-feedback]"
        )
        driver.find_element(By.CSS_SELECTOR, f".viewport[data-image='{image_id}'] textarea").send_keys(
            "checked"
        )
        button.click()
        saved = f".viewport[data-image='{image_id}'] .saved[data-saved='yes']"
        _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, saved), what="feedback saved")

        driver.refresh()  # the sign-in lasts for the tab; the verdict is kept by the service
        _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, saved), what="feedback shown after reload")
        note = driver.find_element(By.CSS_SELECTOR, f".viewport[data-image='{image_id}'] textarea")
        assert note.get_attribute("value") == "checked"
        assert "Dr Test" in driver.find_element(By.CSS_SELECTOR, saved).text
    finally:
        driver.quit()
