"""Site performance and drift (``GET /api/performance``, the performance page) on a replayed site.

The shipped model's held-out predictions (``training/default-run/predictions_test.csv``: 462
FracAtlas images with their true labels and body regions) are replayed as two months of a
site's work: images and results written through the store's own methods, dated October and
November, and every verdict posted through the running service's API under a reader's token.
In the drift run November's probabilities are shifted as a darker exposure would shift them;
the control replays the same cases without it. The rates the API answers must equal a direct
computation from the CSV, the drift run must give exactly the expected alerts and the control
none; a real headless Chromium shows the chart and the alert (screenshot kept).
"""

from __future__ import annotations

import csv
import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_CHROMIUM, REPO_ROOT, chrome_driver

pytest.importorskip("fastapi")

from fracsight.decide import Category, categorise  # noqa: E402
from fracsight.model_card import ModelCard  # noqa: E402
from fracsight.service import monitoring  # noqa: E402
from fracsight.service.monitoring import chi2_homogeneity, chi2_sf, kolmogorov_sf, ks_two_sample  # noqa: E402
from fracsight.service.store import Analysis, SqliteStore, StudyInfo  # noqa: E402

PREDICTIONS = REPO_ROOT / "training" / "default-run" / "predictions_test.csv"
ARTEFACTS = REPO_ROOT / "test-artefacts" / "performance"
TOKEN = "monitoring-test-token-0123456789"
MONTHS = ("2026-10", "2026-11")
BODY_PART = {"hand": "HAND", "leg": "LEG", "hip": "HIP", "shoulder": "SHOULDER", "mixed": ""}
DARKER = 1.2  # logit shift of November's probabilities in the drift run
OUT_OF_SCOPE_PER_MONTH = 4  # chest radiographs the check set aside, each with a verdict


def _held_out() -> list[dict]:
    if not PREDICTIONS.exists():
        pytest.skip("training/default-run/predictions_test.csv is not in this checkout")
    with PREDICTIONS.open(newline="") as f:
        return [
            {"id": r["image_id"], "label": int(r["label"]), "region": r["region"], "p": float(r["final"])}
            for r in csv.DictReader(f)
        ]


def _darker(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return 1.0 / (1.0 + math.exp(-(math.log(p / (1 - p)) + DARKER)))


def _site(shift: bool) -> list[dict]:
    """The replayed site: each held-out case with its month, its (maybe shifted) probability and
    the model's category at the shipped thresholds; then the out-of-scope images."""
    thresholds = ModelCard.for_model().thresholds
    rows = _held_out()
    order = np.random.default_rng(21).permutation(len(rows))
    half = len(rows) // 2
    cases = []
    for rank, index in enumerate(order):
        row = dict(rows[index])
        row["month"] = MONTHS[rank >= half]
        row["day"] = 1 + (rank % half) * 27 // half
        if shift and row["month"] == MONTHS[1]:
            row["p"] = _darker(row["p"])
        row["category"] = categorise(row["p"], thresholds).value
        row["out_of_scope"] = False
        cases.append(row)
    for month in MONTHS:
        for n in range(OUT_OF_SCOPE_PER_MONTH):
            cases.append({"id": f"CHEST{month[-2:]}{n}", "label": n % 2, "region": "chest", "p": 0.9,
                          "month": month, "day": 28, "category": Category.OUT_OF_SCOPE.value,
                          "out_of_scope": True})  # fmt: skip
    return cases


def _store(folder: Path, cases: list[dict]) -> SqliteStore:
    """Images and results written as the intake and the worker write them (no decoding)."""
    store = SqliteStore(folder)
    for n, c in enumerate(cases):
        image_id = f"{n:032x}"
        info = StudyInfo(study_key=f"upload-{image_id}", body_part=BODY_PART.get(c["region"], "CHEST"))
        store.add_image(image_id, "upload", f"images/{image_id}.png", "png", 1000, info,
                        received_at=f"{c['month']}-{c['day']:02d}T10:00:00.000+00:00")  # fmt: skip
        claimed = store.claim_next()
        assert claimed is not None and claimed.id == image_id
        scope = {"score": 9.0 if c["out_of_scope"] else 1.5, "out_of_scope": c["out_of_scope"],
                 "reason": "chest" if c["out_of_scope"] else None, "region": c["region"],
                 "region_probabilities": {}, "body_part": info.body_part or None, "note": None}  # fmt: skip
        result = {"probability": c["p"], "category": c["category"], "scope": scope,
                  "letterbox": {"size": 8, "scale": 1.0, "pad_x": 0, "pad_y": 0, "height": 8, "width": 8}}
        store.finish(image_id, Analysis(c["p"], c["category"], "test-model", result, np.zeros((2, 2))))
        c["image_id"] = image_id
    return store


class _Server:
    """The service's web app on 127.0.0.1 in a thread (no analysis worker: results are stored)."""

    def __init__(self, store: SqliteStore) -> None:
        import uvicorn

        from fracsight.service.web import create_app

        self.app = create_app(store, None, TOKEN, 1 << 20)
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


def _replay(folder: Path, shift: bool):
    """A running service over the replayed site, every verdict posted through its API."""
    import httpx

    from fracsight.service.users import UserDirectory

    cases = _site(shift)
    store = _store(folder, cases)
    _, reader_token = UserDirectory.of_data_dir(folder).add("Dr Reader", "reader")
    server = _Server(store)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {reader_token}"}) as client:
        for c in cases:
            answer = client.post(f"/api/images/{c['image_id']}/feedback", json={"fracture": bool(c["label"])})
            assert answer.status_code == 201, answer.text
    return server, cases, reader_token


def _wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def _expected(cases: list[dict], calls: tuple[str, ...]) -> dict:
    scored = [c for c in cases if not c["out_of_scope"]]
    pos = [c for c in scored if c["label"] == 1]
    neg = [c for c in scored if c["label"] == 0]
    return {
        "sensitivity": (sum(c["category"] in calls for c in pos), len(pos)),
        "specificity": (sum(c["category"] not in calls for c in neg), len(neg)),
    }


def _check_rates(answer: dict, cases: list[dict]) -> None:
    assert answer["out_of_scope_with_verdict"] == sum(c["out_of_scope"] for c in cases)
    for name, calls in monitoring.OPERATING_POINTS.items():
        for measure, (k, n) in _expected(cases, calls).items():
            got = answer["operating_points"][name][measure]
            assert (got["k"], got["n"]) == (k, n), (name, measure)
            if n < monitoring.MIN_CASES:
                assert got["value"] is None and got["note"].startswith("too few cases")
                continue
            lower, upper = _wilson(k, n)
            assert got["value"] == pytest.approx(k / n, abs=1e-12)
            assert got["lower"] == pytest.approx(lower, abs=1e-9)
            assert got["upper"] == pytest.approx(upper, abs=1e-9)


@pytest.fixture(scope="module")
def drifted(tmp_path_factory):
    server, cases, reader_token = _replay(tmp_path_factory.mktemp("drift") / "data", shift=True)
    yield server, cases, reader_token
    server.stop()


def _performance(url: str, token: str) -> dict:
    import httpx

    answer = httpx.get(url + "/api/performance", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    return answer.json()


@pytest.mark.slow
def test_running_estimates_equal_a_direct_computation(drifted) -> None:
    server, cases, reader_token = drifted
    report = _performance(server.url, reader_token)  # any signed-in user may read it
    _check_rates(report["overall"], cases)
    assert list(report["by_month"]) == list(MONTHS)
    for month in MONTHS:
        in_month = [c for c in cases if c["month"] == month]
        _check_rates(report["by_month"][month], in_month)
        assert report["by_month"][month]["analysed"] == len(in_month)
    regions = sorted({c["region"] for c in cases})
    assert sorted(report["by_region"]) == regions
    for region in regions:
        _check_rates(report["by_region"][region], [c for c in cases if c["region"] == region])
    # A region with a handful of fractures gets no number, and says so.
    assert any(r["operating_points"]["fracture"]["sensitivity"]["value"] is None
               for r in report["by_region"].values())  # fmt: skip
    assert report["method"]["min_cases"] == monitoring.MIN_CASES
    assert report["method"]["family_alpha"] == 0.01


@pytest.mark.slow
def test_drift_gives_exactly_the_expected_alerts(drifted) -> None:
    server, _, reader_token = drifted
    report = _performance(server.url, reader_token)
    found = {(a["month"], a["name"]) for a in report["drift"]["alerts"]}
    # A darker exposure moves what the model says, not what it is shown: the probabilities alert
    # (KS p about 3e-5); the shares of categories move less (chi-square p about 0.04, above the
    # per-test 0.0014) and the inputs not at all.
    assert found == {(MONTHS[1], "probability")}
    assert report["drift"]["reference_month"] == MONTHS[0]
    for alert in report["drift"]["alerts"]:
        assert alert["p_value"] < alert["alpha"] == pytest.approx(0.01 / len(monitoring.DRIFT_TESTS))
        assert min(alert["n_reference"], alert["n_month"]) >= monitoring.MIN_DRIFT_CASES


@pytest.mark.slow
def test_no_alert_without_drift(tmp_path: Path) -> None:
    server, cases, reader_token = _replay(tmp_path / "data", shift=False)
    try:
        report = _performance(server.url, reader_token)
    finally:
        server.stop()
    assert report["drift"]["alerts"] == []
    assert report["drift"]["months"][MONTHS[1]]["tested"] is True
    _check_rates(report["overall"], cases)


def test_no_alert_from_a_handful_of_cases() -> None:
    from fracsight.service.monitoring import Case, drift

    reference = [Case("2026-01", "hand", "HAND", "no_fracture", 0.05, 0) for _ in range(60)]
    moved = [Case("2026-02", "chest", "CHEST", "fracture", 0.99, 1)] * (monitoring.MIN_DRIFT_CASES - 1)
    result = drift(reference + moved)
    assert result["alerts"] == [] and result["months"]["2026-02"]["tested"] is False
    assert drift(reference + moved + moved[:1])["alerts"]  # one more case and it is tested: all moved


def test_the_tests_agree_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    from collections import Counter

    for x, dof in [(0.3, 1), (3.84, 1), (10.0, 3), (55.0, 4), (2.0, 9), (120.0, 2)]:
        assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)
    for x in [0.1, 0.4, 0.8, 1.0, 1.2, 1.9, 3.0]:
        assert kolmogorov_sf(x) == pytest.approx(stats.kstwobign.sf(x), rel=1e-9, abs=1e-15)
    statistic, dof, p = chi2_homogeneity(Counter(a=30, b=20, c=5), Counter(a=10, b=40, c=9, d=0))
    expected = stats.chi2_contingency([[30, 20, 5], [10, 40, 9]], correction=False)
    assert (statistic, dof, p) == (pytest.approx(expected[0]), expected[2], pytest.approx(expected[1]))
    rng = np.random.default_rng(3)
    a, b = rng.random(90), rng.random(130) ** 1.4
    d, p = ks_two_sample(a, b)
    assert d == pytest.approx(stats.ks_2samp(a, b).statistic)
    assert p == pytest.approx(stats.kstwobign.sf(d * math.sqrt(90 * 130 / 220)))


@pytest.mark.slow
def test_performance_needs_a_signed_in_user(drifted) -> None:
    import httpx

    server, _, _ = drifted
    assert httpx.get(server.url + "/api/performance").status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert httpx.get(server.url + "/api/performance", headers=wrong).status_code == 401


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian chromium and chromium-driver not installed")
def test_the_page_shows_the_chart_and_the_alert_in_chromium(drifted, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    server, cases, reader_token = drifted
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    driver = chrome_driver(tmp_path, 1300, 1400)
    try:
        driver.get(server.url + "/")
        link = driver.find_element(By.CSS_SELECTOR, "header a[href='/performance']")
        assert link.text
        driver.get(server.url + "/performance")
        driver.find_element(By.ID, "token").send_keys(reader_token)
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        deadline = time.monotonic() + 30
        while not driver.find_elements(By.CSS_SELECTOR, "#rates-fracture svg [data-alert]"):
            assert time.monotonic() < deadline, "the chart with its alert was not drawn"
            time.sleep(0.2)
        points = driver.find_elements(By.CSS_SELECTOR, "#rates-fracture svg [data-measure='sensitivity']")
        assert len(points) == len(MONTHS)
        alerts = driver.find_elements(By.CSS_SELECTOR, "#alerts li")
        assert [a.get_attribute("data-name") for a in alerts] == ["probability"]
        assert all(MONTHS[1] in a.text and "p =" in a.text for a in alerts)
        bars = driver.find_elements(By.CSS_SELECTOR, "#categories svg rect[data-category]")
        assert {b.get_attribute("data-category") for b in bars} >= {"fracture", "doubt", "no_fracture"}
        text = driver.find_element(By.TAG_NAME, "body").text
        n_verdicts = sum(1 for c in cases if c["month"] == MONTHS[0])
        assert f"readers' verdicts at this site, {n_verdicts} cases" in text
        assert "too few cases" in text
        # Nothing refused by the page's own Content-Security-Policy.
        refused = [e for e in driver.get_log("browser") if "Content Security Policy" in e.get("message", "")]
        assert refused == []
        driver.save_screenshot(str(ARTEFACTS / "performance.png"))
        driver.execute_script("document.getElementById('categories').scrollIntoView()")
        driver.save_screenshot(str(ARTEFACTS / "performance-alerts.png"))
    finally:
        driver.quit()


def test_a_new_region_mix_alerts_on_the_inputs() -> None:
    from fracsight.service.monitoring import Case, drift

    rng = np.random.default_rng(5)

    def month(name: str, regions: list[str], n: int) -> list[Case]:
        picked = rng.choice(regions, n)
        p = rng.random(n)
        return [Case(name, r, r.upper(), "fracture" if q > 0.7 else "no_fracture", float(q), None)
                for r, q in zip(picked, p, strict=True)]  # fmt: skip

    cases = month("2026-01", ["hand", "leg"], 120) + month("2026-02", ["hand", "leg", "shoulder", "hip"], 120)
    found = {a["name"] for a in drift(cases)["alerts"]}
    assert found == {"region_mix", "body_part_mix"}  # the answers themselves did not move


def test_region_falls_back_to_the_dicom_body_part_and_dicom_images_count(tmp_path: Path) -> None:
    from fracsight.service.monitoring import site_performance

    store = SqliteStore(tmp_path / "data")
    for n, (source, body_part, scope) in enumerate(
        [("dicom", "WRIST", None), ("upload", "", {"region": "hand"}), ("dicom", "", None)]
    ):
        image_id = f"{n:032x}"
        info = StudyInfo(study_key=f"s{n}", body_part=body_part)
        store.add_image(image_id, source, f"images/{image_id}", "dicom", 10, info,
                        received_at="2026-03-02T00:00:00+00:00")  # fmt: skip
        store.claim_next()
        result = {"scope": scope} if scope else {}
        store.finish(image_id, Analysis(0.5, "doubt", "m", result, np.zeros((2, 2))))
    report = site_performance(store)
    assert sorted(report["by_region"]) == ["hand", "unknown", "wrist"]
    assert report["overall"]["analysed"] == 3 and report["overall"]["with_verdict"] == 0


def test_a_new_scanner_or_a_darker_exposure_alerts_on_the_inputs() -> None:
    """Manufacturer mix and mean brightness (kept by the worker in each result) are watched too:
    a second vendor's darker images alert on exactly those two inputs, nothing else."""
    rng = np.random.default_rng(5)

    def month(name: str, n: int, vendor_b: float, brightness: float) -> list:
        return [
            monitoring.Case(
                month=name, region="hand", body_part="HAND", category="no_fracture",
                probability=float(rng.uniform(0, 0.1)), label=None,
                manufacturer="B" if rng.random() < vendor_b else "A",
                brightness=float(np.clip(rng.normal(brightness, 0.05), 0, 1)),
            )
            for _ in range(n)
        ]  # fmt: skip

    steady = month("2026-10", 200, 0.0, 0.45) + month("2026-11", 200, 0.0, 0.45)
    assert monitoring.drift(steady)["alerts"] == []
    moved = month("2026-10", 200, 0.0, 0.45) + month("2026-11", 200, 0.5, 0.35)
    assert {a["name"] for a in monitoring.drift(moved)["alerts"]} == {"manufacturer_mix", "brightness"}
