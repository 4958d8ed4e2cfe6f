"""The shared report helpers (page, tables, SVG charts, gallery) and the evaluation report's honesty rules."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from fracsight.evaluation.evaluate import EvaluationSettings, evaluate_predictions
from fracsight.evaluation.report import write_report
from fracsight.reporting import (
    BarSeries,
    GalleryItem,
    IntervalStyle,
    LineSeries,
    MarkedPoint,
    bar_chart,
    gallery,
    line_chart,
    page,
    png_data_uri,
    table,
)

SVG = "{http://www.w3.org/2000/svg}"


def test_text_is_escaped_and_markup_is_not() -> None:
    html = page("A <b>title</b>", [table(["name", "value"], [["<script>x</script>", 3]])])
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "A &lt;b&gt;title&lt;/b&gt;" in html
    assert '<td class="num">3</td>' in html


def test_page_forbids_outside_requests() -> None:
    html = page("t", [])
    assert "Content-Security-Policy" in html and "default-src 'none'" in html and "img-src data:" in html
    with pytest.raises(ValueError, match="data:image/ URI"):
        GalleryItem("https://example.org/x.png", "remote")


def test_line_chart_is_valid_svg_with_band_bars_and_points() -> None:
    svg = line_chart(
        [
            LineSeries("curve", [0, 0.5, 1], [0, 0.8, 1], [0, 0.7, 1], [0, 0.9, 1]),
            LineSeries(
                "bins", [0.2, 0.6], [0.25, 0.5], [0.1, 0.4], [0.4, 0.6], IntervalStyle.BARS, markers=True
            ),
        ],
        title="t & <u>",
        x_label="x",
        y_label="y",
        points=[MarkedPoint(0.3, 0.8, "op", 0.2, 0.4, 0.7, 0.9)],
        diagonal="chance",
        element_id="c",
    )
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("id") == "c"
    assert root.find(f"{SVG}title").text == "t & <u>"
    assert len(root.findall(f".//{SVG}polygon[@class='ci-band']")) == 1
    assert len(root.findall(f".//{SVG}line[@class='error-bar']")) == 2
    assert len(root.findall(f".//{SVG}circle[@class='marked-point']")) == 1
    # y = 1 maps to the top of the plot, y = 0 to its bottom.
    frame = root.find(f"{SVG}rect")
    top, height = float(frame.get("y")), float(frame.get("height"))
    last = root.find(f".//{SVG}polyline").get("points").split()[-1]
    assert float(last.split(",")[1]) == pytest.approx(top, abs=0.1)
    assert float(root.find(f".//{SVG}polyline").get("points").split()[0].split(",")[1]) == pytest.approx(
        top + height, abs=0.1
    )


def test_bar_chart_marks_withheld_values() -> None:
    svg = bar_chart(
        ["hand", "hip"],
        [BarSeries("AUC", [0.9, None], [0.85, None], [0.95, None])],
        title="AUC by region",
        y_label="AUC",
        category_notes=["n=100\n40 fractured", "n=5\n1 fractured"],
        missing_text="too few",
    )
    root = ET.fromstring(svg)
    assert len(root.findall(f".//{SVG}rect[@class='bar']")) == 1
    assert [t.text for t in root.findall(f".//{SVG}text[@class='withheld']")] == ["too few"]
    with pytest.raises(ValueError, match="2 categories"):
        bar_chart(["a", "b"], [BarSeries("s", [0.1])], title="t", y_label="y")


def test_gallery_and_thumbnails_embed_pngs() -> None:
    gray = np.linspace(0, 1, 600 * 400).reshape(600, 400)
    rgb = (np.dstack([gray, gray, gray * 0.5]) * 255).astype(np.uint8)  # a colour picture, as overlays are
    uri = png_data_uri(rgb, max_side=120)
    import base64
    import io

    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(thumb.size) == 120 and thumb.format == "PNG"
    html = gallery([GalleryItem(uri, "case 1")], element_id="g")
    assert html.count("<img") == 1 and 'id="g"' in html


def test_every_number_in_the_report_comes_with_n_and_ci(tmp_path) -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60, int), np.zeros(140, int)]
    p = 1 / (1 + np.exp(-rng.normal(2 * y - 1, 1)))
    region = np.where(np.arange(200) < 190, "hand", "hip")  # hip: too few of each class
    (tmp_path / "p.csv").write_text("id,probability\n" + "".join(f"c{i},{v:.5f}\n" for i, v in enumerate(p)))
    (tmp_path / "l.csv").write_text(
        "id,fractured,region\n" + "".join(f"c{i},{y[i]},{region[i]}\n" for i in range(200))
    )
    evaluation = evaluate_predictions(
        tmp_path / "p.csv", tmp_path / "l.csv", thresholds=[0.5], settings=EvaluationSettings(n_resamples=200)
    )
    files = write_report(evaluation, tmp_path / "out")
    html = files.html.read_text()
    metrics = json.loads(files.metrics_json.read_text())
    # Percentages in the tables carry a CI and their counts.
    for match in re.finditer(r"(\d+\.\d)% \(", html):
        tail = html[match.end() : match.end() + 60]
        assert tail.startswith("95% CI"), tail
    hip = next(c for c in metrics["groups"]["region"]["cells"] if c["value"] == "hip")
    assert hip["too_small"] and hip["auc"] is None and "too few" in hip["warning"]
    assert "region = hip: too few cases" in html
    assert metrics["data"]["n_cases"] == 200 and metrics["settings"]["bootstrap_resamples"] == 200
    assert "No model card or threshold" not in html  # a threshold was given
