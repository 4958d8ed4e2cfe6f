"""Shared fixtures: where the bundled samples and the shared real data live, and one loaded model.

Loading the default ONNX model costs about a second; the inference and predict tests share one
:class:`~fracsight.inference.Analyser` per session instead of loading it in every test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLES_DIR = REPO_ROOT / "src" / "fracsight" / "samples"
# The five bundled FracAtlas samples and their source labels (see samples/README.md).
SAMPLE_LABELS = {
    "IMG0002472.jpg": 1,
    "IMG0001739.jpg": 1,
    "IMG0000307.jpg": 1,
    "IMG0000001.jpg": 0,
    "IMG0000020.jpg": 0,
}


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def sample_labels() -> dict[str, int]:
    return dict(SAMPLE_LABELS)


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    """Every bundled radiograph (the JPEGs and the DX DICOM), sorted by name."""
    paths = sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in (".jpg", ".dcm"))
    assert len(paths) == 6, f"expected 5 JPEGs and 1 DICOM in {SAMPLES_DIR}, found {len(paths)}"
    return paths


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (``../shared/data`` from the repo root); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def dicom_dir(shared_data: Path) -> Path:
    """The real DICOM samples (``../shared/data/dicom``, listed in its SOURCES.txt)."""
    folder = shared_data / "dicom"
    if not folder.is_dir():
        pytest.skip(f"shared DICOM samples not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def default_analyser():
    """The shipped default model, loaded once per session."""
    from fracsight.inference import Analyser

    return Analyser(batch_size=4)
