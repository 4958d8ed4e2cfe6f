"""Damaged copies of real files are read or refused, never raised as anything else.

Seeded byte-level damage (flipped bytes, cuts, zeroed runs) to the bundled samples and, when
present, the shared DICOM and 16-bit PNG samples. Each case found by earlier fuzzing also has
a named regression test beside the reader's other tests.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from fracsight.io import RefusedInput, read_radiograph

MUTATIONS_PER_FILE = 25


def _damage(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    kind = rng.choice(["flip-head", "flip-any", "cut", "zero"])
    if kind == "flip-head":  # headers, tags, markers
        for _ in range(rng.randint(1, 6)):
            out[rng.randrange(min(len(out), 2048))] = rng.randrange(256)
    elif kind == "flip-any":
        for _ in range(rng.randint(1, 30)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == "cut":
        out = out[: rng.randrange(8, len(out))]
    else:
        start = rng.randrange(len(out))
        out[start : start + 256] = bytes(len(out[start : start + 256]))
    return bytes(out)


def _sources(samples_dir: Path) -> list[Path]:
    files = sorted(p for p in samples_dir.iterdir() if p.suffix in (".jpg", ".dcm"))
    # Shared samples join when present; without them the bundled ones still run (no skip).
    for folder, pattern in (
        (SHARED_DATA / "dicom", "*.dcm"),
        (SHARED_DATA / "grazpedwri-sample" / "images", "*.png"),
    ):
        if folder.is_dir():
            files += sorted(folder.glob(pattern))[:8]
    return files


def test_damaged_files_are_read_or_refused(samples_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(20261126)
    outcomes = {"read": 0, "refused": 0}
    for source in _sources(samples_dir):
        data = source.read_bytes()
        for i in range(MUTATIONS_PER_FILE):
            path = tmp_path / f"{i}_{source.name}"
            path.write_bytes(_damage(data, rng))
            try:
                read_radiograph(path)
                outcomes["read"] += 1
            except RefusedInput as refusal:
                assert path.name in str(refusal) and refusal.reason, str(refusal)
                outcomes["refused"] += 1
            except Exception as error:  # noqa: BLE001 - the point of the test
                pytest.fail(f"{source.name} damaged ({path.name}) raised {type(error).__name__}: {error}")
    # Both outcomes occur: damage that spares the pixels reads, the rest is refused.
    assert outcomes["read"] > 0 and outcomes["refused"] > 0
