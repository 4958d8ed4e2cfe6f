"""predict's answers on the bundled samples, pinned: a refactor of the record, the rows or the
pictures must leave the CSV, the JSON lines and the heat-map pixels as they were.

The golden file is made by this module (``python tests/test_predict_golden.py``) from a run whose
output was checked; a new model changes it on purpose (re-make it and say so in the commit).
Timings and the heat-map folder are left out: they differ from run to run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "fracsight" / "samples"
GOLDEN = Path(__file__).with_name("golden") / "predict_samples.json"


def _run(out: Path) -> dict:
    """CSV rows, JSON records and heat-map pixel hashes of predict on the bundled samples."""
    heatmaps = out / "heatmaps"
    for extra, target in (([], out / "r.csv"), (["--json"], out / "r.jsonl")):
        subprocess.run(
            [sys.executable, "-m", "fracsight", "predict", str(SAMPLES), "--heatmaps", str(heatmaps),
             "--output", str(target), "--no-progress", *extra],
            check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
    with open(out / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = [{**row, "path": Path(row["path"]).name, "heatmap": bool(row["heatmap"])} for row in rows]
    records = []
    for line in (out / "r.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("timings_ms", None)
        record["path"] = Path(record["path"]).name
        record["heatmap"] = bool(record.get("heatmap"))
        records.append(record)
    pixels = {
        p.name: hashlib.sha256(np.asarray(Image.open(p).convert("RGB")).tobytes()).hexdigest()
        for p in sorted(heatmaps.glob("*.png"))
    }
    return {"csv": rows, "json": records, "heatmap_pixels": pixels}


@pytest.mark.slow
def test_predict_on_samples_unchanged(tmp_path: Path) -> None:
    got = _run(tmp_path)
    want = json.loads(GOLDEN.read_text())
    assert got["csv"] == want["csv"]
    assert got["json"] == want["json"]
    assert got["heatmap_pixels"] == want["heatmap_pixels"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        GOLDEN.write_text(json.dumps(_run(Path(folder)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
