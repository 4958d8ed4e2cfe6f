"""Outside checks of DICOM objects fracsight writes, for tests: dicom3tools' ``dciodvfy`` (the
IOD validator) and DCMTK's ``dcmp2pgm`` (renders an image through a presentation state, as a
viewer does). Each is None-safe: callers skip where the tool is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

DCIODVFY = shutil.which("dciodvfy")
DCMP2PGM = shutil.which("dcmp2pgm")


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy reports on the file (warnings left out)."""
    assert DCIODVFY, "dciodvfy is not installed"
    run = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    return [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _quoted(line: str) -> set[str]:
    """Values an error line quotes ("..." or = <...>), not the element and module names."""
    return set(re.findall(r'"([^"]+)"', line)) | set(re.findall(r"= <([^>]*)>", line))


def split_inherited(result_errors: list[str], source_errors: list[str]) -> tuple[list[str], list[str]]:
    """(new, inherited): an error on a result is inherited from its source when it quotes a value
    the source's errors quote (an invalid UID, an over-long identifier copied as it is) or is the
    same error the source has (a LUT copied faithfully); a missing or empty attribute never is."""
    quoted = set().union(*(_quoted(line) for line in source_errors)) if source_errors else set()
    # the image's VOI LUT is the presentation state's Softcopy VOI LUT
    source_lines = {line.replace("Softcopy VOI LUT", "VOI LUT") for line in source_errors}
    new, inherited = [], []
    for line in result_errors:
        missing = "Missing attribute" in line or "Empty attribute" in line
        same = line.replace("Softcopy VOI LUT", "VOI LUT") in source_lines or bool(_quoted(line) & quoted)
        (inherited if same and not missing else new).append(line)
    return new, inherited


def render(image: Path, out: Path, state: Path | None = None) -> np.ndarray:
    """The image as DCMTK renders it (8-bit grey), through ``state`` when given."""
    assert DCMP2PGM, "dcmp2pgm is not installed"
    command = [DCMP2PGM, *(["-p", str(state)] if state else []), str(image), str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and out.exists(), run.stderr[-500:]
    data = out.read_bytes()
    header = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", data)  # binary PGM: width, height, maxval
    assert header and int(header[3]) == 255, data[:40]
    width, height = int(header[1]), int(header[2])
    grey = np.frombuffer(data, dtype=np.uint8, count=width * height, offset=header.end())
    return grey.reshape(height, width)


def sr_items(ds) -> list:
    """Every content item of an SR, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(sr_items(item))
    return out


def sc_and_rendering_grey(sc: np.ndarray, rendered: np.ndarray) -> tuple[float, float]:
    """Mean grey of an RGB Secondary Capture outside its heat map's colours and its caption box,
    and of a rendering of the source image (any size) over the same region."""
    sc = sc.astype(np.float32)
    grey = (sc[..., 0] == sc[..., 1]) & (sc[..., 1] == sc[..., 2])  # not under the heat map's colours
    caption = int(np.argmax(sc[:, 0].sum(axis=1) > 0))  # the black box at the top holds the caption
    grey[:caption] = False
    rows = (np.arange(rendered.shape[0]) * sc.shape[0] // rendered.shape[0])[:, None]
    columns = (np.arange(rendered.shape[1]) * sc.shape[1] // rendered.shape[1])[None, :]
    return float(sc[..., 0][grey].mean()), float(rendered[grey[rows, columns]].mean())
