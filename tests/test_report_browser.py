"""The HTML report in headless Chromium: it renders, has its key parts, and sends no request anywhere."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_CHROMIUM, chrome_driver

from fracsight.cli import main
from fracsight.decide import Category
from fracsight.explain import overlay_image
from fracsight.finding import Finding
from fracsight.io import read_radiograph
from fracsight.preprocess import letterbox_geometry

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FRACATLAS = SHARED / "data" / "fracatlas"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not FRACATLAS.is_dir(), reason="shared FracAtlas data not present"),
    pytest.mark.skipif(not HAVE_CHROMIUM, reason="Debian chromium and chromium-driver not installed"),
]


def _report(tmp_path: Path) -> Path:
    """A report over 120 FracAtlas cases with heat-map overlay PNGs, as `fracsight predict` would give."""
    with (FRACATLAS / "dataset.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for r in rows if r["fractured"] == "1"][:40] + [r for r in rows if r["fractured"] == "0"][:80]
    rng = np.random.default_rng(0)
    overlays = tmp_path / "heatmaps"
    overlays.mkdir()
    preds = tmp_path / "predictions.csv"
    with preds.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "probability", "category", "heatmap", "error"])
        for i, row in enumerate(chosen):
            folder = "Fractured" if row["fractured"] == "1" else "Non_fractured"
            image_path = FRACATLAS / "images" / folder / row["image_id"]
            if i == 5:
                writer.writerow([image_path, "", "", "", "not a radiograph: colour photograph"])
                continue
            p = float(1 / (1 + np.exp(-rng.normal(2.2 * int(row["fractured"]) - 1.2, 1.0))))
            heat_png = ""
            if i % 3 == 0:
                pixels = read_radiograph(image_path).pixels
                heat = np.zeros((24, 24), np.float32)
                heat[rng.integers(7, 17), rng.integers(7, 17)] = 1.0
                box = letterbox_geometry(*pixels.shape, 384)
                finding = Finding(p, Category.DOUBT, heat, box, "test")
                heat_png = str(overlays / f"{row['image_id']}.heatmap.png")
                overlay_image(pixels, finding, max_side=512).save(heat_png)
            writer.writerow([image_path, f"{p:.4f}", "", heat_png, ""])
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows[0].keys())
        writer.writerows(r.values() for r in chosen)
    report = tmp_path / "report"
    args = ["evaluate", "--predictions", str(preds), "--labels", str(labels), "--report", str(report)]
    assert (
        main(
            [*args, "--threshold", "0.35", "--threshold", "0.7", "--prevalence", "0.15", "--bootstrap", "300"]
        )
        == 0
    )
    return report / "report.html"


def test_report_opens_offline_with_its_key_elements(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    html = _report(tmp_path)
    driver = chrome_driver(tmp_path)
    try:
        url = html.resolve().as_uri()
        driver.get(url)
        assert driver.title == "Fracture detection: evaluation report"
        find = driver.find_elements
        assert find(By.CSS_SELECTOR, "svg#roc-chart polyline.series")
        assert find(By.CSS_SELECTOR, "svg#roc-chart polygon.ci-band")
        assert len(find(By.CSS_SELECTOR, "svg#roc-chart circle.marked-point")) == 2
        assert find(By.CSS_SELECTOR, "svg#reliability-chart line.error-bar")
        assert len(find(By.CSS_SELECTOR, "#confusion-tables table.confusion")) == 2
        region_rows = find(By.CSS_SELECTOR, "#group-table-region tbody tr")
        assert {r.find_element(By.TAG_NAME, "th").text for r in region_rows} >= {"hand", "leg"}
        assert find(By.CSS_SELECTOR, "svg#auc-by-region rect.bar")
        assert find(By.CSS_SELECTOR, "#by-region .note.warning")  # a small region is flagged
        provenance = driver.find_element(By.ID, "provenance").text
        assert "labels.csv" in provenance and "119 (" in provenance
        assert "not a radiograph: colour photograph" in driver.find_element(By.ID, "not-analysed").text
        images = find(By.CSS_SELECTOR, "#gallery img")
        assert images and all(img.get_attribute("src").startswith("data:image/png;base64,") for img in images)
        assert all(driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 120, 16000))
        screenshot = tmp_path / "report.png"
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 50_000
        events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    finally:
        driver.quit()
    requests = [e["params"] for e in events if e["method"] == "Network.requestWillBeSent"]
    from_page = [r["request"]["url"] for r in requests if r.get("documentURL") == url]
    assert url in from_page
    assert all(u.startswith(("file:", "data:")) for u in from_page), from_page
    assert not [
        r["request"]["url"] for r in requests if r["request"]["url"].startswith(("http:", "https:", "ws"))
    ]
