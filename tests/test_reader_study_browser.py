"""A reader study end to end in a real headless Chromium, against a running ``fracsight serve``.

3 readers x 20 FracAtlas cases x {unaided, aided}: the administrator makes the study from a case
CSV (the images go through the intake and the worker); reader 1 reads both sessions on the study
page with the keyboard (a reload mid-session, the washout refusal in between), readers 2 and 3
post through the API with their own tokens. Answers are scripted from the truth plus noise, less
noise with the AI; the export is analysed by ``fracsight readers`` and its AUC difference must be
the one computed directly from the scripted answers. Checks on the way: the unaided arm shows no
AI (page, API answers, overlay and /api/images refused), the second session is refused before the
washout, orders differ between readers and sessions and follow from the seed, and nothing is lost
or read twice. A screenshot of the reading page goes to ``test-artefacts/reader-study/``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_CHROMIUM, REPO_ROOT, chrome_driver
from conftest import wait_for as _wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian chromium and chromium-driver not installed"),
]
pytest.importorskip("fastapi")
ARTEFACTS = REPO_ROOT / "test-artefacts" / "reader-study"
TOKEN = "reader-study-test-token-0123456789"
READERS = ("Dr One", "Dr Two", "Dr Three")
SEED = 20261207
N_EACH = 10  # fractured and not fractured cases


def _scripted(truth: dict[str, int]) -> dict[tuple[str, str, str], int]:
    """(reader, case, arm) -> a 0-100 rating in steps of 10 (the page's digit keys): the truth plus
    noise, less noise in the aided arm, so that the aided AUC is higher."""
    rng = np.random.default_rng(7)
    out = {}
    for reader in READERS:
        for case, t in sorted(truth.items()):
            for arm, noise in (("unaided", 0.45), ("aided", 0.15)):
                value = 0.5 + (0.25 if t else -0.25) + rng.normal(0, noise)
                out[reader, case, arm] = int(np.clip(round(value * 10), 0, 10)) * 10
    return out


def _auc(ratings: list[int], truth: list[int]) -> float:
    pos = [r for r, t in zip(ratings, truth, strict=True) if t]
    neg = [r for r, t in zip(ratings, truth, strict=True) if not t]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))




def _outline_pixels(png: Path) -> int:
    """Saturated red pixels of a canvas screenshot: the fracture outline's colour (the heat map's
    red is drawn at half opacity over grey, so it is never as saturated)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > 200) & (g < 80) & (b < 80)).sum())


@pytest.fixture()
def service(tmp_path: Path, monkeypatch):
    from fracsight.service import reader_study
    from fracsight.service.server import Service
    from fracsight.service.settings import ServiceSettings
    from fracsight.service.users import UserDirectory

    clock = {"offset": dt.timedelta(0)}
    monkeypatch.setattr(reader_study, "CLOCK", lambda: reader_study.utcnow() + clock["offset"])
    running = Service(ServiceSettings(data_dir=tmp_path / "data", port=0, token=TOKEN))
    directory = UserDirectory.of_data_dir(tmp_path / "data")
    running.tokens = {name: directory.add(name, "reader")[1] for name in READERS}
    running.clock = clock
    running.start()
    yield running
    running.stop()


@pytest.fixture()
def driver(tmp_path: Path, request):
    """Chromium; after a failed test its screen, page and console go to the artefacts."""
    running = chrome_driver(tmp_path, 1400, 1000)
    failed_before = request.session.testsfailed
    yield running
    try:
        if request.session.testsfailed > failed_before:  # the call's report is counted before teardown
            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            running.save_screenshot(str(ARTEFACTS / "failure.png"))
            (ARTEFACTS / "failure.html").write_text(running.page_source)
            (ARTEFACTS / "failure-console.json").write_text(json.dumps(running.get_log("browser"), indent=1))
    finally:
        running.quit()


def _sign_in(driver, By, token: str) -> None:
    """Sign out whoever the page signed in from the tab's storage, then sign in with ``token``.

    The page first finishes its own sign-in (it writes the token back to the tab's storage once
    the server has answered): clearing the storage before that would be undone under load."""

    def field():
        return driver.find_element(By.ID, "token")

    def settled():  # the sign-in form shown, or someone signed in
        return field().is_displayed() or driver.find_element(By.ID, "who").text

    _wait_for(settled, what="the page to load")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    _wait_for(lambda: field().is_displayed(), what="the sign-in form")
    field().send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()


def test_reader_study_end_to_end_in_chromium(service, driver, fracatlas_dir: Path, tmp_path: Path) -> None:
    import httpx
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from fracsight.cli import main as cli
    from fracsight.data.fracatlas import load_fracatlas
    from fracsight.service.reader_study import StudyBook, session_orders

    # -- the case list: 10 fractured and 10 not, with FracAtlas's labels and boxes --------------------
    atlas = sorted(load_fracatlas(fracatlas_dir.parent), key=lambda i: i.image_id)
    chosen = [i for i in atlas if i.fractured and i.boxes][:N_EACH]
    chosen += [i for i in atlas if not i.fractured][:N_EACH]
    truth = {i.path.stem: int(i.fractured) for i in chosen}
    boxes = {i.path.stem: [list(b) for b in i.boxes] for i in chosen}
    case_csv = tmp_path / "cases.csv"
    with case_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "path", "truth", "box"])
        for i in chosen:
            box = json.dumps(boxes[i.path.stem]) if i.boxes else ""
            writer.writerow([i.path.stem, i.path, int(i.fractured), box])
    answers = _scripted(truth)

    admin = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    # the administrator makes the study on the page
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTEFACTS.glob("*.png"):
        old.unlink()
    driver.get(service.url + "/static/study.html")
    _sign_in(driver, By, TOKEN)
    _wait_for(lambda: driver.find_element(By.ID, "admin-view").is_displayed(), what="the admin view")
    for field, value in (("new-name", "Wrist AI study"), ("new-readers", ", ".join(READERS)),
                         ("new-cases", str(case_csv)), ("new-seed", str(SEED))):  # fmt: skip
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.ID, "new-washout").clear()
    driver.find_element(By.ID, "new-washout").send_keys("28")
    driver.find_element(By.CSS_SELECTOR, "#create-form button").click()
    _wait_for(lambda: "study=" in driver.current_url, timeout=120, what="the study to be made")
    study = driver.current_url.split("study=")[1]
    made = admin.get(f"/api/reader-studies/{study}")
    assert made.json()["seed"] == SEED and made.json()["cases"] == 20 and made.json()["washout_days"] == 28
    _wait_for(lambda: "power" in driver.find_element(By.ID, "plan-output").text, what="the plan")
    _wait_for(lambda: admin.get(f"/api/reader-studies/{study}").json()["images"].get("done") == 20,
              timeout=240, what="the worker to analyse the study's images")  # fmt: skip

    # -- orders: reproducible from the seed, different between readers and sessions ------------------
    book = StudyBook(Path(service.settings.data_dir) / "fracsight.db")
    cases = [c["case_id"] for c in book.cases(study)]
    key_to_case = {c["case_key"]: c["case_id"] for c in book.cases(study)}
    image_ids = {i for c in cases for i in book.case_images(study, c)}
    # the study's cases are in no worklist; their answers as the clinical viewer gets them
    assert admin.get("/api/studies").json() == []
    viewer = {c: admin.get(f"/api/images/{book.case_images(study, c)[0]}").json() for c in cases}
    expected = session_orders(SEED, 3, 20)
    orders = {}
    for s in book.sessions(study):
        orders[s["reader"], s["session"]] = json.loads(s["case_order"])
        drawn = expected[s["reader_index"]][s["session"] - 1]
        assert orders[s["reader"], s["session"]] == [cases[i] for i in drawn]
    assert len({tuple(o) for o in orders.values()}) == 6
    arms = {(s["reader"], s["session"]): s["arm"] for s in book.sessions(study)}
    assert [arms[r, 1] for r in READERS] == ["unaided", "aided", "unaided"]  # counterbalanced

    # -- readers 2 and 3 through the API with their own tokens ----------------------------------------
    def api_reader(name: str) -> httpx.Client:
        return httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {service.tokens[name]}"},
                            timeout=60)  # fmt: skip

    def read_session_by_api(name: str) -> None:
        client = api_reader(name)
        while True:
            item = client.get(f"/api/reader-studies/{study}/next")
            assert item.status_code == 200, item.text
            body = item.json()
            if body.get("done"):
                return
            if body["arm"] == "unaided":
                text = item.text
                assert "probability" not in text and "category" not in text and "heatmap" not in text
                assert client.get(f"/api/reader-studies/{study}/images/0/overlay.png").status_code == 403
            else:
                assert body["ai"]["category"] and 0 <= body["ai"]["probability"] <= 1
            assert "truth" not in item.text
            case = key_to_case[body["case"]]
            rating = answers[name, case, body["arm"]]
            click = None
            if rating >= 50 and truth[case]:  # at the centre of the first fracture box
                x0, y0, x1, y1 = boxes[case][0]
                click = {"image": 0, "x": (x0 + x1) / 2, "y": (y0 + y1) / 2}
            sent = client.post(f"/api/reader-studies/{study}/reads", json={
                "case": body["case"], "fracture": rating >= 50, "confidence": rating, "click": click,
                "time_ms": 1000 if body["arm"] == "aided" else 2000})  # fmt: skip
            assert sent.status_code == 201, sent.text
            again = client.post(f"/api/reader-studies/{study}/reads", json={
                "case": body["case"], "fracture": True, "confidence": 99, "time_ms": 5})  # fmt: skip
            assert again.status_code == 409  # never editable, never read twice
            if sent.json()["session_done"]:
                return

    for name in READERS[1:]:
        unaided_reader = api_reader(name)
        if arms[name, 1] == "unaided":  # the rest of the API is closed while the unaided arm is open
            assert unaided_reader.get("/api/worklist").status_code == 403
            assert unaided_reader.get(f"/api/images/{next(iter(image_ids))}").status_code == 403
        read_session_by_api(name)
        refused = unaided_reader.get(f"/api/reader-studies/{study}/next")
        assert refused.status_code == 409 and "opens on" in refused.json()["detail"]
        assert refused.json()["opens_at"] > dt.datetime.now(dt.timezone.utc).isoformat()

    # -- reader 1 in the browser: session 1 (unaided), with a reload mid-session ----------------------
    seen: list[tuple[int, int, str]] = []
    clicked: set[str] = set()
    outlines: list[str] = []

    def view(attribute: str) -> str:
        return driver.find_element(By.ID, "reader-view").get_attribute("data-" + attribute) or ""

    def read_in_page(session: int, stop_after: int | None = None) -> None:
        while True:
            _wait_for(lambda: view("state") in ("reading", "washout", "done"), what="a case")
            if view("state") != "reading" or int(view("session")) != session:
                return
            position, key, arm = int(view("position")), view("case"), view("arm")
            seen.append((session, position, key))
            case = key_to_case[key]
            assert case == orders[READERS[0], session][position - 1]
            ai_box = driver.find_element(By.ID, "ai-answer")
            if arm == "unaided":
                assert not ai_box.is_displayed()
                page = driver.page_source.lower()
                assert "probability" not in page
            else:
                assert ai_box.is_displayed() and "probability" in ai_box.text
            # the viewer's outline of the hot region: drawn in the aided arm (solid for fracture,
            # dashed for doubt), never in the unaided one
            canvas = driver.find_element(By.CSS_SELECTOR, "#study-viewports canvas")
            style = {"fracture": "solid", "doubt": "dashed"}.get(viewer[case]["category"], "none")
            expected = style if arm == "aided" and len(viewer[case].get("outline") or []) > 2 else "none"
            assert (canvas.get_attribute("data-outline") or "none") == expected
            outlines.append(expected)
            if expected == "solid" and not (ARTEFACTS / "outline.png").exists():
                canvas.screenshot(str(ARTEFACTS / "outline.png"))
                assert _outline_pixels(ARTEFACTS / "outline.png") > 50  # red drawn on the grey image
            rating = answers[READERS[0], case, arm]
            body = driver.find_element(By.TAG_NAME, "body")
            if rating >= 50:
                canvas = driver.find_element(By.CSS_SELECTOR, "#study-viewports canvas")
                ActionChains(driver).move_to_element(canvas).click().perform()
                clicked.add(f"{case}/{arm}")
            key_for = "m" if rating == 100 else str(rating // 10)
            body.send_keys("y" if rating >= 50 else "n", key_for)
            if position == 3 and session == 1:
                driver.save_screenshot(str(ARTEFACTS / "reading-unaided.png"))
            badge = driver.find_elements(By.CSS_SELECTOR, "#ai-answer .badge.fracture")
            if arm == "aided" and badge and not (ARTEFACTS / "reading-aided.png").exists():
                driver.save_screenshot(str(ARTEFACTS / "reading-aided.png"))
            body.send_keys(Keys.ENTER)
            _wait_for(lambda p=position: view("state") != "reading" or int(view("position")) != p
                      or int(view("session")) != session, what="the next case")  # fmt: skip
            if stop_after is not None and position == stop_after:
                return

    driver.get(service.url + f"/static/study.html?study={study}")
    _sign_in(driver, By, service.tokens[READERS[0]])
    read_in_page(1, stop_after=7)
    _wait_for(lambda: view("state") == "reading" and view("position") == "8", what="case 8")
    driver.refresh()  # mid-session: resumes at case 8, nothing lost, nothing read twice
    _wait_for(lambda: view("state") == "reading", what="the resumed case")
    assert view("position") == "8" and view("session") == "1"
    read_in_page(1)
    _wait_for(lambda: view("state") == "washout", what="the washout refusal")
    assert "opens on" in driver.find_element(By.ID, "case-message").text

    service.clock["offset"] = dt.timedelta(days=29)  # a month later
    driver.refresh()
    read_in_page(2)
    _wait_for(lambda: view("state") == "done", what="the end of the study")
    requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    urls = [r["params"]["request"]["url"] for r in requests if r["method"] == "Network.requestWillBeSent"]
    assert not any("/api/images/" in u for u in urls)  # only the study's own routes
    assert not [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
    assert [(s, p) for s, p, _ in seen] == [(s, p) for s in (1, 2) for p in range(1, 21)]
    assert "solid" in outlines  # some aided case showed a fracture's outline

    # readers 2 and 3, their second sessions (the clock is a month on)
    for name in READERS[1:]:
        read_session_by_api(name)
        assert api_reader(name).get(f"/api/reader-studies/{study}/next").json()["done"] is True

    # the administrator's view: every reader done, the plan for this size
    driver.get(service.url + f"/static/study.html?study={study}")
    _sign_in(driver, By, TOKEN)
    _wait_for(lambda: "power" in driver.find_element(By.ID, "plan-output").text, what="the progress")
    progress = driver.find_element(By.ID, "progress-table").text
    assert progress.count("unaided: 20/20") == 3 and progress.count("aided: 20/20") == 6  # "unaided" too
    driver.save_screenshot(str(ARTEFACTS / "admin.png"))

    # -- the export, analysed by fracsight readers ------------------------------------------------------
    reads_csv = admin.get(f"/api/reader-studies/{study}/reads.csv").text
    rows = list(csv.DictReader(io.StringIO(reads_csv)))
    assert len(rows) == 120 and len({(r["case"], r["reader"], r["modality"]) for r in rows}) == 120
    for r in rows:
        assert int(r["rating"]) == answers[r["reader"], r["case"], r["modality"]]
        assert int(r["truth"]) == truth[r["case"]]
    (tmp_path / "reads.csv").write_text(reads_csv)
    (tmp_path / "ai.csv").write_text(admin.get(f"/api/reader-studies/{study}/ai.csv").text)
    clicks = list(csv.DictReader(io.StringIO(admin.get(f"/api/reader-studies/{study}/clicks.csv").text)))
    mine = {f"{c['case']}/{c['modality']}": c for c in clicks if c["reader"] == READERS[0]}
    assert {k for k, c in mine.items() if c["x"]} == clicked
    for c in clicks:  # a click's hit is whether it lies in a fracture box of the clicked image
        if c["x"] and boxes.get(c["case"]):
            x, y = float(c["x"]), float(c["y"])
            inside = any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes[c["case"]])
            assert c["hit"] == str(int(inside))
        if c["reader"] != READERS[0] and c["x"]:
            assert c["hit"] == "1"
    (tmp_path / "clicks.csv").write_text(admin.get(f"/api/reader-studies/{study}/clicks.csv").text)
    assert all(c["model_sha256"] for c in clicks if c["modality"] == "aided")
    assert not any(c["model_id"] for c in clicks if c["modality"] == "unaided")

    assert cli(["readers", str(tmp_path / "reads.csv"), "--ai", str(tmp_path / "ai.csv"), "--report",
                str(tmp_path / "report"), "--compare", "aided:unaided", "--no-regions",
                "--clicks", str(tmp_path / "clicks.csv")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "report" / "readers.json").read_text())
    reading = report["reading"]
    assert reading["unaided"]["median_seconds_by_reader"][READERS[1]] == 2.0
    assert reading["aided"]["median_seconds_by_reader"][READERS[1]] == 1.0
    scored = [c for c in clicks if c["modality"] == "aided" and c["hit"] != "" and c["truth"] == "1"
              and c["call"] == "1"]  # fmt: skip
    assert reading["aided"]["localised"]["scored"] == len(scored) > 0
    auc = next(c for c in report["comparisons"] if c["fom"] == "auc")
    labels = [truth[c] for c in cases]
    direct = {arm: np.mean([_auc([answers[r, c, arm] for c in cases], labels) for r in READERS])
              for arm in ("aided", "unaided")}  # fmt: skip
    assert auc["difference"] > 0
    assert auc["difference"] == pytest.approx(direct["aided"] - direct["unaided"], abs=1e-9)
