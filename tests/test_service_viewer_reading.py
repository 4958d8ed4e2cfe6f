"""The viewer as a reader uses it, in a real headless Chromium against a running service (store,
analysis worker with the shipped model, HTTP on loopback):

- the finding's outline is drawn solid for "fracture", dashed for "doubt", not at all for
  "no fracture"; no peak crosshair on "no fracture";
- the heat map's legend shows the overlay's own fixed colour scale (every overlay pixel lies on it);
- the answer comes with its operating point's measured sensitivity and specificity and their data;
- the worklist is read by keyboard (arrows, Enter) and "read, next unread" walks three studies;
  read studies are hidden until asked for; the shortcuts are listed in a "?" overlay.

Screenshots go to ``test-artefacts/serve/``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import HAVE_CHROMIUM, REPO_ROOT, chrome_driver, service_with_reader, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian chromium and chromium-driver not installed"),
]
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
ARTEFACTS = REPO_ROOT / "test-artefacts" / "serve"
TOKEN = "viewer-reading-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Bundled samples and the shipped model's answers on them (tests/golden/predict_samples.json).
SAMPLES = {"IMG0000001.jpg": "no_fracture", "IMG0000020.jpg": "fracture", "IMG0000763.jpg": "doubt"}


@pytest.fixture()
def service(tmp_path: Path):
    yield from service_with_reader(tmp_path, TOKEN)


def _wait_for(condition, timeout: float = 90.0, what: str = "condition"):
    return wait_for(condition, timeout, what)


def _upload_samples(service, sample_images: list[Path]) -> dict[str, dict]:
    """The three samples uploaded and analysed: file name -> the image's API answer."""
    ids = {}
    for path in sample_images:
        if path.name in SAMPLES:
            upload = {"file": (path.name, path.read_bytes())}
            reply = httpx.post(f"{service.url}/api/images", headers=AUTH, files=upload)
            assert reply.status_code == 202, reply.text
            ids[path.name] = reply.json()["id"]

    def analysed():
        answers = {n: httpx.get(f"{service.url}/api/images/{i}", headers=AUTH).json() for n, i in ids.items()}
        return answers if all(a["status"] == "done" for a in answers.values()) else None

    answers = _wait_for(analysed, what="the samples analysed")
    assert {n: a["category"] for n, a in answers.items()} == SAMPLES
    return answers


def _sign_in(driver, service, By) -> None:
    driver.get(service.url + "/")
    driver.find_element(By.ID, "token").send_keys(service.reader_token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    _wait_for(lambda: driver.find_element(By.ID, "list-view").is_displayed(), what="the worklist")


# Of the outline's perimeter (sampled every 2 screen pixels), the share drawn in the category's
# colour, and the pixels in the peak crosshair's colour: read from the canvas as shown.
_TRACE = """
const canvas = document.querySelector('#viewports canvas');
const image = arguments[0], colour = arguments[1];
const vp = canvas.closest('.viewport');
const ctx = canvas.getContext('2d');
const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
const zoom = Number(canvas.dataset.zoom);
const rect = canvas.getBoundingClientRect();
const near = (x, y, rgb) => {
  for (let dy = -2; dy <= 2; dy++) for (let dx = -2; dx <= 2; dx++) {
    const px = Math.round(x) + dx, py = Math.round(y) + dy;
    if (px < 0 || py < 0 || px >= canvas.width || py >= canvas.height) continue;
    const i = 4 * (py * canvas.width + px);
    const d = Math.max(...[0, 1, 2].map((c) => Math.abs(data[i + c] - rgb[c])));
    if (d < 40) return true;
  }
  return false;
};
const pts = image.outline || [];
let hit = 0, all = 0;
const s = Number(canvas.dataset.scale);
const [a, b, c, d, e, f] = JSON.parse(canvas.dataset.matrix);
for (let k = 1; k < pts.length; k++) {
  const [x0, y0] = pts[k - 1], [x1, y1] = pts[k];
  const length = Math.hypot(x1 - x0, y1 - y0) * s * zoom;
  for (let t = 0; t < length; t += 2) {
    const ix = (x0 + (x1 - x0) * t / length) * s, iy = (y0 + (y1 - y0) * t / length) * s;
    const x = a * ix + c * iy + e, y = b * ix + d * iy + f;
    if (x < 3 || y < 3 || x > canvas.width - 3 || y > canvas.height - 3) continue;
    all++;
    if (near(x, y, colour)) hit++;
  }
}
let blue = 0;
for (let i = 0; i < data.length; i += 4) if (data[i] < 110 && data[i + 1] > 140 && data[i + 2] > 230) blue++;
return {drawn: all ? hit / all : 0, samples: all, crosshair: blue, outline: canvas.dataset.outline};
"""


def _open(driver, By, study: str):
    driver.execute_script("location.hash = arguments[0]", "#/study/" + study)
    return _wait_for(
        lambda: next(iter(driver.find_elements(By.CSS_SELECTOR, "#viewports canvas[data-outline]")), None),
        what="the image drawn",
    )


def test_outline_legend_and_operating_point(service, sample_images, tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    from fracsight.model_card import ModelCard

    answers = _upload_samples(service, sample_images)
    driver = chrome_driver(tmp_path, 1400, 1000)
    try:
        _sign_in(driver, service, By)
        colours = {"fracture": (0xE6, 0x28, 0x28), "doubt": (0xF5, 0xAA, 0x14)}
        for name, answer in answers.items():
            category = answer["category"]
            assert len(answer["outline"]) > 3 and answer["outline"][0] == answer["outline"][-1]
            _open(driver, By, answer["study"])
            _wait_for(
                lambda a=answer: driver.find_element(By.CSS_SELECTOR, "#viewports canvas").get_attribute(
                    "data-image"
                )
                == a["id"],
                what="the study's image",
            )
            with_heat = driver.execute_script(_TRACE, answer, [0, 0, 0])
            driver.find_element(By.TAG_NAME, "body").send_keys("h")  # the outline alone, heat map off
            trace = driver.execute_script(_TRACE, answer, list(colours.get(category, (0, 0, 0))))
            if category == "fracture":
                assert trace["outline"] == "solid" and trace["drawn"] > 0.9, (name, trace)
                assert with_heat["crosshair"] > 0
            elif category == "doubt":
                assert trace["outline"] == "dashed" and 0.3 < trace["drawn"] < 0.85, (name, trace)
            else:
                assert trace["outline"] == "none" and with_heat["crosshair"] == 0, (name, with_heat)
                # nothing in a category colour anywhere along where the region would be
                for rgb in colours.values():
                    assert driver.execute_script(_TRACE, answer, list(rgb))["drawn"] == 0
            driver.find_element(By.TAG_NAME, "body").send_keys("h")
            text = driver.find_element(By.CSS_SELECTOR, ".viewport .operating-point").text
            choice = ModelCard.for_model()["threshold_choice"]
            point = choice["fracture" if category == "fracture" else "doubt"]
            sens = round(point["rates"]["sensitivity"]["value"] * 100)
            spec = round(point["rates"]["specificity"]["value"] * 100)
            assert f"sensitivity {sens}%" in text and f"specificity {spec}%" in text, text
            assert "measured on" in text and "development split" in text
            if category == "fracture":
                driver.save_screenshot(str(ARTEFACTS / "viewer-outline.png"))

        # The legend: the overlay's own scale, and every pixel of an overlay lies on it.
        swatches = driver.find_elements(By.CSS_SELECTOR, "#legend .swatch")
        stops = [
            (float(s.get_attribute("data-value")), [int(v) for v in s.get_attribute("data-rgba").split(",")])
            for s in swatches
        ]
        assert len(stops) >= 5 and stops[0][1][3] == 0 and stops[-1][1][3] > 100
        fracture = next(a for a in answers.values() if a["category"] == "fracture")
        png = httpx.get(f"{service.url}/api/images/{fracture['id']}/overlay.png", headers=AUTH).content
        import numpy as np

        rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")).reshape(-1, 4).astype(float)
        shown = rgba[rgba[:, 3] > 0]
        assert len(shown) > 100
        alphas = [s[1][3] for s in stops]
        for channel in (1, 2):  # green and blue fall with the map value, as alpha rises
            expected = np.interp(shown[:, 3], alphas, [s[1][channel] for s in stops])
            assert np.abs(expected - shown[:, channel]).max() <= 4, channel
        assert (shown[:, 0] == 255).all()
        assert shown[:, 3].max() <= alphas[-1]
    finally:
        driver.quit()


def test_reading_flow_by_keyboard(service, sample_images, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    answers = _upload_samples(service, sample_images)
    order = [s["study"] for s in httpx.get(f"{service.url}/api/studies", headers=AUTH).json()]
    assert sorted(order) == sorted(a["study"] for a in answers.values())
    driver = chrome_driver(tmp_path, 1400, 1000)
    try:
        _sign_in(driver, service, By)
        rows = "#worklist tbody tr"

        def keys_shown():
            return [r.get_attribute("data-study") for r in driver.find_elements(By.CSS_SELECTOR, rows)]

        _wait_for(lambda: keys_shown() == order, what="the three studies in the worklist")
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("?")
        assert driver.find_element(By.ID, "help").is_displayed()
        assert "next unread" in driver.find_element(By.ID, "help").text
        body.send_keys(Keys.ESCAPE)
        assert not driver.find_element(By.ID, "help").is_displayed()

        body.send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN)
        selected = driver.find_element(By.CSS_SELECTOR, f"{rows}.selected").get_attribute("data-study")
        assert selected == order[1]
        body.send_keys(Keys.ARROW_UP, Keys.ENTER)

        def open_study():
            return driver.execute_script("return decodeURIComponent(location.hash.slice(8))")

        _wait_for(lambda: open_study() == order[0], what="the first study opened by Enter")
        _open(driver, By, order[0])
        body.send_keys("n")
        _wait_for(lambda: open_study() == order[1], what="the next study")
        body.send_keys("p")
        _wait_for(lambda: open_study() == order[0], what="the previous study")
        _wait_for(lambda: driver.find_element(By.ID, "mark-read").is_enabled(), what="the study loaded")
        for k in (1, 2):  # read, next unread: through the three studies in worklist order
            body.send_keys("u")
            _wait_for(lambda k=k: open_study() == order[k], what=f"unread study {k}")
            _wait_for(lambda: driver.find_element(By.ID, "mark-read").is_enabled(), what="the study loaded")
        body.send_keys("u")  # the last one read: nothing unread left, back to the worklist
        _wait_for(lambda: driver.find_element(By.ID, "list-view").is_displayed(), what="the worklist")
        for key in order:
            assert httpx.get(f"{service.url}/api/studies/{key}", headers=AUTH).json()["read"] is True
        _wait_for(lambda: keys_shown() == [], what="read studies hidden by default")
        Select(driver.find_element(By.ID, "filter-read")).select_by_value("")
        _wait_for(lambda: keys_shown() == order, what="read studies shown when asked")
    finally:
        driver.quit()


def test_uploads_named_dated_and_found(service, sample_images, tmp_path: Path, caplog) -> None:
    """A JPEG upload shows the file name it was given, its upload date and its region, and is found
    by them; a DICOM study is found by its patient ID. The name is never logged."""
    import logging

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    caplog.set_level(logging.DEBUG)
    given = "left wrist Tuesday.jpg"
    named = tmp_path / "upload" / given
    named.parent.mkdir()
    named.write_bytes(next(p for p in sample_images if p.name == "IMG0000020.jpg").read_bytes())
    dicom = next(p for p in sample_images if p.suffix == ".dcm")
    driver = chrome_driver(tmp_path, 1600, 1000)
    try:
        _sign_in(driver, service, By)
        driver.find_element(By.ID, "upload").send_keys(f"{named}\n{dicom}")
        status = driver.find_element(By.ID, "upload-status")
        _wait_for(lambda: "2 of 2 uploaded" in status.text, what="upload")

        def row_texts():
            from selenium.common.exceptions import StaleElementReferenceException

            try:
                found = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
                return [(r.get_attribute("data-category"), r.text) for r in found]
            except StaleElementReferenceException:
                return None

        rows = _wait_for(
            lambda: (t := row_texts()) and len(t) == 2 and all(c for c, _ in t) and t, what="both analysed"
        )
        jpeg_row = next(text for _, text in rows if given in text)
        assert "uploaded" in jpeg_row and "hand" in jpeg_row, jpeg_row
        search = driver.find_element(By.ID, "filter-search")
        for query, expected in (("wrist tues", given), ("123456", "AVeryGood")):
            search.clear()
            search.send_keys(query, Keys.ENTER)
            _wait_for(
                lambda e=expected: (t := row_texts()) is not None and len(t) == 1 and e in t[0][1],
                what=f"the search for {query!r}",
            )
        driver.save_screenshot(str(ARTEFACTS / "worklist-search.png"))
    finally:
        driver.quit()
    ours = [r for r in caplog.records if not r.name.startswith(("selenium", "urllib3"))]
    service_log = [r.getMessage() for r in ours]
    # (the searches the test typed are in the access log's query strings: that is the server's log)
    assert service_log and not [m for m in service_log if given in m or "Tuesday" in m]


def _first(driver, By, css: str):
    return next(iter(driver.find_elements(By.CSS_SELECTOR, css)), None)


def _dicom_with(source: Path, tmp_path: Path, name: str, **changes) -> Path:
    """The bundled DICOM sample changed (window presets, pixel spacing), as a new instance of its study."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path)
    return path


def test_the_image_as_the_pacs_shows_it(service, sample_images, tmp_path: Path) -> None:
    """Header window presets applied on open and cycled by W; the on-image text; a measurement in
    mm against a known distance; uncalibrated on a JPEG; flip, rotate; layouts 1 and 2 up."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    source = next(p for p in sample_images if p.suffix == ".dcm")
    spacing = (0.5, 0.25)  # mm between rows, between columns
    presets = {"WindowCenter": [128, 100], "WindowWidth": [256, 101],
               "WindowCenterWidthExplanation": ["DEFAULT", "NARROW"]}  # fmt: skip
    # a collimator's rectangle, 1-based inclusive edges: columns 50-160, rows 40-130 shown
    presets.update(ShutterShape="RECTANGULAR", ShutterLeftVerticalEdge=50, ShutterRightVerticalEdge=160,
                   ShutterUpperHorizontalEdge=40, ShutterLowerHorizontalEdge=130)  # fmt: skip
    first = _dicom_with(source, tmp_path, "a.dcm", PixelSpacing=list(spacing), **presets)
    second = _dicom_with(source, tmp_path, "b.dcm")
    jpeg = next(p for p in sample_images if p.name == "IMG0000001.jpg")
    acks = []
    for path in (first, second, jpeg):
        upload = {"file": (path.name, path.read_bytes())}
        reply = httpx.post(f"{service.url}/api/images", headers=AUTH, files=upload)
        assert reply.status_code == 202, reply.text
        acks.append(reply.json())
    def status(ack: dict) -> str:
        return httpx.get(f"{service.url}/api/images/{ack['id']}", headers=AUTH).json()["status"]

    _wait_for(lambda: all(status(a) == "done" for a in acks), what="analysed")
    detail = httpx.get(f"{service.url}/api/images/{acks[0]['id']}", headers=AUTH).json()
    assert [p["name"] for p in detail["display"]["presets"]] == ["DEFAULT", "NARROW"]
    driver = chrome_driver(tmp_path, 1600, 1000)
    try:
        _sign_in(driver, service, By)
        driver.execute_script("location.hash = arguments[0]", "#/study/" + acks[0]["study"])
        canvas_css = f"#viewports canvas[data-image='{acks[0]['id']}'][data-preset]"
        canvas = _wait_for(lambda: _first(driver, By, canvas_css), what="drawn")
        shown = "#viewports .viewport:not([hidden])"
        assert len(driver.find_elements(By.CSS_SELECTOR, shown)) == 2  # 2-up: the study's two views
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("1")
        _wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, shown)) == 1, what="one view")
        # Outside the shutter dark, inverted or not; inside it the image (inverting changes it).
        def gray(x: float, y: float) -> list[int]:
            return driver.execute_script(
                "const c = arguments[0], [a, b, cc, d, e, f] = JSON.parse(c.dataset.matrix);"
                "const x = arguments[1], y = arguments[2];"
                "return Array.from(c.getContext('2d').getImageData("
                "Math.round(a * x + cc * y + e), Math.round(b * x + d * y + f), 1, 1).data.slice(0, 3));",
                canvas, x, y,
            )

        outside = [(20.5, 80.5), (100.5, 20.5), (180.5, 150.5)]
        inside = gray(100.5, 80.5)
        assert all(gray(*p) == [0, 0, 0] for p in outside)
        body.send_keys("i")
        assert all(gray(*p) == [0, 0, 0] for p in outside) and gray(100.5, 80.5) != inside
        body.send_keys("i")
        # The header's first window on open: the whole display scale; shown in the header's units.
        assert canvas.get_attribute("data-preset") == "DEFAULT"
        assert (canvas.get_attribute("data-window"), canvas.get_attribute("data-level")) == ("65535", "32768")
        overlay = canvas.get_attribute("data-overlay")
        assert "W 256  L 128" in overlay and "2020-01-25" in overlay and overlay.startswith("L"), overlay
        body.send_keys("w")  # the second preset, on the display scale (MONOCHROME1: the level mirrored)
        assert canvas.get_attribute("data-preset") == "NARROW"
        width = 100 / 255 * 65535
        level = 65535 - ((100 - 128) / 255 + 0.5) * 65535
        assert abs(int(canvas.get_attribute("data-window")) - width) <= 1
        assert abs(int(canvas.get_attribute("data-level")) - level) <= 1
        assert "W 101  L 100" in canvas.get_attribute("data-overlay")
        body.send_keys("w")
        assert canvas.get_attribute("data-preset").startswith("auto")

        # A known distance: image pixel (20, 30) to (180, 130) is 160 columns and 100 rows.
        body.send_keys("m")

        def on_screen(x: float, y: float) -> tuple[float, float]:
            a, b, c, d, e, f = __import__("json").loads(canvas.get_attribute("data-matrix"))
            ratio = canvas.size["width"] / int(canvas.get_attribute("width"))
            return (a * x + c * y + e) * ratio, (b * x + d * y + f) * ratio

        def drag(p0, p1) -> None:
            (x0, y0), (x1, y1) = on_screen(*p0), on_screen(*p1)
            size = canvas.size
            ActionChains(driver).move_to_element_with_offset(
                canvas, round(x0 - size["width"] / 2), round(y0 - size["height"] / 2)
            ).click_and_hold().move_by_offset(round(x1 - x0), round(y1 - y0)).release().perform()

        drag((20.5, 30.5), (180.5, 130.5))
        expected = ((160 * spacing[1]) ** 2 + (100 * spacing[0]) ** 2) ** 0.5  # 64.0 mm
        assert abs(float(canvas.get_attribute("data-measure")) - expected) < 0.5, canvas.get_attribute(
            "data-measure-text"
        )
        assert canvas.get_attribute("data-measure-text").endswith("mm")
        body.send_keys("x", "t")
        assert canvas.get_attribute("data-flip") == "true" and canvas.get_attribute("data-turns") == "1"
        assert "90°" in canvas.get_attribute("data-overlay")
        driver.save_screenshot(str(ARTEFACTS / "viewer-dicom-1600x1000.png"))
        body.send_keys("2")
        _wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, shown)) == 2, what="two views")

        # No pixel spacing: the length is in pixels, labelled uncalibrated.
        driver.execute_script("location.hash = arguments[0]", "#/study/" + acks[2]["study"])
        canvas_css = f"#viewports canvas[data-image='{acks[2]['id']}'][data-preset]"
        canvas = _wait_for(lambda: _first(driver, By, canvas_css), what="jpeg")
        drag((10, 10), (110, 10))
        assert canvas.get_attribute("data-measure") == "uncalibrated"
        assert "uncalibrated" in canvas.get_attribute("data-measure-text")
    finally:
        driver.quit()


@pytest.mark.parametrize("width,height", [(1600, 1000), (1366, 768)])
def test_screenshots_of_the_worklist_and_the_viewer(
    service, sample_images, tmp_path: Path, width: int, height: int
) -> None:
    """The worklist of mixed studies and the viewer on a fracture, at two common screen sizes, kept
    as artefacts (the README shows two of them)."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    answers = _upload_samples(service, sample_images)
    for path in sample_images:  # the rest: two more fractures and the DICOM (not scored)
        if path.name not in SAMPLES:
            upload = {"file": (path.name, path.read_bytes())}
            assert httpx.post(f"{service.url}/api/images", headers=AUTH, files=upload).status_code == 202

    def done() -> int:
        return httpx.get(f"{service.url}/api/health").json()["queue"].get("done", 0)

    _wait_for(lambda: done() >= 6, what="all six analysed")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    driver = chrome_driver(tmp_path, width, height)
    try:
        _sign_in(driver, service, By)
        rows = "#worklist tbody tr[data-category]"
        _wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, rows)) == 6, what="six studies")
        driver.find_element(By.TAG_NAME, "body").send_keys("\ue015")  # arrow down: the first study chosen
        worklist = ARTEFACTS / f"worklist-{width}x{height}.png"
        driver.save_screenshot(str(worklist))
        fracture = next(a for a in answers.values() if a["category"] == "fracture")
        _open(driver, By, fracture["study"])
        viewer = ARTEFACTS / f"viewer-{width}x{height}.png"
        driver.save_screenshot(str(viewer))
    finally:
        driver.quit()
    for shot in (worklist, viewer):
        with Image.open(shot) as picture:
            assert picture.width >= width * 0.9 and picture.height > height * 0.5
