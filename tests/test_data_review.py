"""Review fixes in the data area: ``fracsight audit`` refuses bad thresholds before decoding anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracsight.cli import main


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-distance", "-1", "argument --max-distance"),
        ("--max-distance", "nan", "argument --max-distance"),
        ("--min-correlation", "1.5", "argument --min-correlation"),
    ],
)
def test_audit_checks_thresholds_before_the_scan(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    message: str,
) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\na.png,0\n")

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("images were decoded before the thresholds were checked")

    monkeypatch.setattr("fracsight.data.audit.scan_images", no_scan)
    assert main(["audit", str(manifest), flag, value]) == 2
    assert message in capsys.readouterr().err


def test_setup_refuses_an_unknown_mode() -> None:
    """A typo ('tests') used to install the inference set silently and exit 0; pytest then was missing."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    done = subprocess.run(["bash", str(script), "tests"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "usage: scripts/setup.sh [run|serve|cluster|test]" in done.stderr
