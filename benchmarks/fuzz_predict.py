"""Hostile inputs through `fracsight predict`: seeded mutants of real samples, one batch, one table.

    python benchmarks/fuzz_predict.py [--mutants 1000] [--seed 11] [--keep DIR]

Sources: every DICOM in ../shared/data/dicom (all its transfer syntaxes), the 16-bit PNGs of
../shared/data/grazpedwri-sample, JPEGs (bundled FracAtlas samples), TIFFs made from those,
and the bundled DX DICOM; without ../shared the bundled samples alone. Mutations: byte flips
(header and anywhere), cuts, zeroed and inserted runs; DICOM element lengths stretched over
the following elements, header attributes set to odd values (samples, bits, size,
photometric, frames, rescale, window; the 8-bit RGB header on a gray codestream), transfer
syntax swapped; PNG chunk and IHDR edits with valid CRCs; JPEG SOF edits; TIFF directory
edits; plus hand-made bombs (deflated zeros, 200,000 TIFF page directories).

The whole corpus goes through one `fracsight -v predict --heatmaps` run (a subprocess), and
the table says: did the process die, is any input without exactly one row, did any row wait
more than 30 s, how many files did the decoder workers fail on, did any patient name or ID
of the sources appear in the CSV, stdout or stderr (verbose), and the peak memory of
predict and its decoder workers together. tests/test_predict_fuzz.py runs a smaller corpus.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "fracsight" / "samples"
SHARED = ROOT.parent / "shared" / "data"
HANG_S = 30.0
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV"
    b"".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "dicom", "png", "jpeg", "tiff"


@dataclass
class Outcome:
    """What one predict run over a corpus did."""

    inputs: int
    rows: int
    returncode: int
    seconds: float
    longest_wait_s: float
    peak_bytes: int
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    decoder_failures: Counter = field(default_factory=Counter)
    analysed: int = 0
    refused: int = 0
    leaks: list[str] = field(default_factory=list)
    traceback: bool = False

    @property
    def died(self) -> bool:
        return self.returncode not in (0, 1) or self.traceback

    @property
    def lost_rows(self) -> int:
        return len(self.missing)


def sources(limit_per_syntax: bool = False) -> list[Source]:
    """The real files to mutate; ``limit_per_syntax`` keeps the smallest DICOM of each transfer syntax."""
    found = [Source(p, "jpeg") for p in sorted(SAMPLES.glob("*.jpg"))]
    found.append(Source(SAMPLES / "hd_dx_image.dcm", "dicom"))
    dicom = SHARED / "dicom"
    if dicom.is_dir():
        files = [p for p in sorted(dicom.iterdir()) if p.suffix not in (".md", ".txt")]
        if limit_per_syntax:
            files = _smallest_per_syntax(files)
        found += [Source(p, "dicom") for p in files]
    graz = SHARED / "grazpedwri-sample" / "images"
    if graz.is_dir():
        found += [Source(p, "png") for p in sorted(graz.glob("*.png"))[: 1 if limit_per_syntax else None]]
    return found


def _smallest_per_syntax(files: list[Path]) -> list[Path]:
    import pydicom

    best: dict[str, Path] = {}
    for path in sorted(files, key=lambda p: p.stat().st_size):
        try:
            syntax = str(
                pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta.TransferSyntaxUID
            )
        except Exception:  # noqa: BLE001 - no file meta, or broken: its own kind
            syntax = path.name
        best.setdefault(syntax, path)
    return sorted(best.values())


def leaks(marker: str, text: str) -> bool:
    """True when ``marker`` (a patient's name or ID) stands in ``text`` as a value of its own, not
    inside a longer run of letters and digits: an ID like 123456 also occurs inside the sample
    UIDs that results now carry (1.2.840.113564.10.1.123456789012...), which is no leak."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(marker)}(?![0-9A-Za-z])", text) is not None


def patient_markers(found: list[Source]) -> set[str]:
    """Patient names and IDs of the DICOM sources (whole values, and name parts of 6+ letters)."""
    import pydicom

    markers: set[str] = set()
    for source in found:
        if source.kind != "dicom":
            continue
        try:
            ds = pydicom.dcmread(source.path, stop_before_pixels=True, force=True)
            values = [str(ds.get(k, "") or "") for k in ("PatientName", "PatientID", "OtherPatientIDs")]
        except Exception:  # noqa: BLE001
            continue
        for value in values:
            if len(value) >= 4:
                markers.add(value)
            markers.update(part for part in value.split("^") if len(part) >= 6)
    return markers


# --- mutations --------------------------------------------------------------------------------


def _flip(data: bytearray, rng: random.Random, head: bool) -> None:
    span = min(len(data), 2048) if head else len(data)
    for _ in range(rng.randint(1, 6 if head else 30)):
        data[rng.randrange(span)] = rng.randrange(256)


def generic(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    kind = rng.choice(["flip-head", "flip-any", "cut", "zero", "insert", "duplicate"])
    if kind in ("flip-head", "flip-any"):
        _flip(out, rng, kind == "flip-head")
    elif kind == "cut":
        out = out[: rng.randrange(8, len(out))]
    elif kind == "zero":
        start = rng.randrange(len(out))
        end = min(len(out), start + rng.choice([4, 256, 65536]))
        out[start:end] = bytes(end - start)
    elif kind == "insert":
        at = rng.randrange(len(out))
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 100])))
    else:
        start = rng.randrange(len(out))
        out[start:start] = out[start : start + rng.randrange(1, 4096)]
    return bytes(out)


def stretch_dicom_length(data: bytes, rng: random.Random) -> bytes:
    """Make one explicit-VR element's length run over the elements after it (or far past the end)."""
    heads = [
        i
        for i in range(132 if data[128:132] == b"DICM" else 0, min(len(data), 8192) - 8, 2)
        if data[i + 4 : i + 6] in _DICOM_VRS and data[i + 1] == 0 and data[i] % 2 == 0
    ]
    if not heads:
        return generic(data, rng)
    at = rng.choice(heads)
    out = bytearray(data)
    long = data[at + 4 : at + 6] in _LONG_VRS
    old = struct.unpack_from("<I" if long else "<H", data, at + 8 if long else at + 6)[0]
    new = rng.choice([old + rng.randrange(2, 2000), 0xFFFF, old * 3 + 1, 0xFFFFFFF0])
    if long:
        struct.pack_into("<I", out, at + 8, min(new, 0xFFFFFFFF))
    else:
        struct.pack_into("<H", out, at + 6, min(new, 0xFFFF))
    return bytes(out)


_HEADER_EDITS: dict[str, list[object]] = {
    "SamplesPerPixel": [0, 2, 3, 4, 65535],
    "PhotometricInterpretation": [
        "RGB",
        "YBR_FULL",
        "YBR_ICT",
        "PALETTE COLOR",
        "MONOCHROME1",
        "MONOCHROME2",
        "HSV",
    ],
    "BitsAllocated": [1, 8, 12, 16, 32, 0],
    "BitsStored": [1, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 0],
    "HighBit": [0, 7, 11, 15, 31],
    "PixelRepresentation": [0, 1, 2],
    "NumberOfFrames": ["0", "2", "1000000", "x"],
    "PlanarConfiguration": [0, 1, 2],
    "RescaleSlope": ["0", "nan", "1e308", "-1", "0.0001"],
    "WindowWidth": ["0", "-1", "1e30", "1"],
    "WindowCenter": ["nan", "-1e30", "0"],
    "Modality": ["CR", "DX", "OT", "CT", ""],
}
_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.5",
    "1.2.3.4",
]


def edit_dicom_header(data: bytes, rng: random.Random) -> bytes:
    """Set header attributes to odd values with pydicom, pixel data untouched."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            choice = rng.random()
            if choice < 0.25:  # the header that made GDCM abort on a gray JPEG-LS / J2K codestream
                ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            elif choice < 0.4 and getattr(ds, "file_meta", None) is not None:
                ds.file_meta.TransferSyntaxUID = rng.choice(_SYNTAXES)
            elif choice < 0.5 and "Rows" in ds:
                keyword = rng.choice(["Rows", "Columns"])
                ds[keyword].value = rng.choice(
                    [0, 1, 2, int(ds[keyword].value) + 1, int(ds[keyword].value) * 2, 65535]
                )
            else:
                for _ in range(rng.randint(1, 3)):
                    keyword = rng.choice(sorted(_HEADER_EDITS))
                    setattr(ds, keyword, rng.choice(_HEADER_EDITS[keyword]))
            out = io.BytesIO()
            ds.save_as(out)
            return out.getvalue()
    except Exception:  # noqa: BLE001 - a sample pydicom cannot rewrite gets byte damage instead
        return generic(data, rng)


def _png_chunks(data: bytes) -> list[int]:
    positions, pos = [], 8
    while pos + 8 <= len(data):
        positions.append(pos)
        pos += 12 + struct.unpack_from(">I", data, pos)[0]
    return positions


def edit_png(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    chunks = _png_chunks(data)
    if rng.random() < 0.5 and chunks:  # IHDR fields, with the CRC made right so Pillow decodes on
        width, height = struct.unpack_from(">II", out, 16)
        field_ = rng.choice(["width", "height", "depth", "colour"])
        if field_ in ("width", "height"):
            value = rng.choice([0, 1, (width if field_ == "width" else height) + 1, 70000, 0x7FFFFFFF])
            struct.pack_into(">I", out, 16 if field_ == "width" else 20, value)
        else:
            out[24 if field_ == "depth" else 25] = rng.choice([1, 2, 4, 8, 16, 3, 6, 0, 255])
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    elif chunks:
        at = rng.choice(chunks)
        struct.pack_into(">I", out, at, rng.choice([0, 0x7FFFFFFF, struct.unpack_from(">I", out, at)[0] + 7]))
    return bytes(out)


def edit_jpeg(data: bytes, rng: random.Random) -> bytes:
    from fracsight.io.dicom_codestream import JPEG_SOF_MARKERS

    out, pos = bytearray(data), 2
    while pos + 4 <= len(out) and out[pos] == 0xFF:
        marker, length = out[pos + 1], struct.unpack_from(">H", out, pos + 2)[0]
        if marker in JPEG_SOF_MARKERS:
            where = rng.choice(["precision", "height", "width", "components", "length"])
            if where == "precision":
                out[pos + 4] = rng.choice([2, 8, 12, 16, 255])
            elif where in ("height", "width"):
                struct.pack_into(
                    ">H", out, pos + (5 if where == "height" else 7), rng.choice([0, 1, 8, 65535])
                )
            elif where == "components":
                out[pos + 9] = rng.choice([0, 1, 2, 3, 4, 255])
            else:
                struct.pack_into(">H", out, pos + 2, rng.choice([0, 2, 8, length + 50, 65535]))
            return bytes(out)
        pos += 2 + length
    return generic(data, rng)


def edit_tiff(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    order = "<" if data[:2] == b"II" else ">"
    first = struct.unpack_from(order + "I", data, 4)[0]
    count = struct.unpack_from(order + "H", data, first)[0]
    if rng.random() < 0.2:  # the next-directory offset
        struct.pack_into(
            order + "I", out, first + 2 + 12 * count, rng.choice([8, first, len(data) // 2, 0xFFFFFFF0])
        )
    else:  # one entry's count or value
        entry = first + 2 + 12 * rng.randrange(count)
        at = entry + rng.choice([4, 8])
        struct.pack_into(order + "I", out, at, rng.choice([0, 1, 3, 65535, 0x7FFFFFFF, len(data) * 4]))
    return bytes(out)


_STRUCTURED = {
    "dicom": (stretch_dicom_length, edit_dicom_header),
    "png": (edit_png,),
    "jpeg": (edit_jpeg,),
    "tiff": (edit_tiff,),
}


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    """One mutant: structure-aware about half the time, byte damage otherwise, sometimes both."""
    if rng.random() < 0.55:
        data = rng.choice(_STRUCTURED[kind])(data, rng)
        if rng.random() < 0.2:
            data = generic(data, rng)
        return data
    return generic(data, rng)


def tiff_sources(found: list[Source], folder: Path) -> list[Source]:
    """TIFFs made from the first PNG or JPEG source: 16-bit LZW, 8-bit deflate, 8-bit raw strips."""
    from PIL import Image

    base = next((s.path for s in found if s.kind == "png"), None) or next(
        s.path for s in found if s.kind == "jpeg"
    )
    made = []
    with Image.open(base) as image:
        gray = image if image.mode in ("L", "I;16") else image.convert("L")
        for name, mode, compression in (
            ("t16.tif", None, "tiff_lzw"),
            ("t8.tif", "L", "tiff_adobe_deflate"),
            ("raw.tif", "L", None),
        ):
            target = folder / name
            (gray.convert(mode) if mode and gray.mode != mode else gray).save(target, compression=compression)
            made.append(Source(target, "tiff"))
    return made


def hand_made(found: list[Source], folder: Path) -> list[Path]:
    """The bombs of issue 11: a deflated data set of zeros, a TIFF with 200,000 page directories."""
    import pydicom

    made = []
    dx = next(s.path for s in found if s.kind == "dicom")
    ds = pydicom.dcmread(dx, stop_before_pixels=True)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    head = buffer.getvalue()
    meta_end = 132 + 12 + struct.unpack_from("<I", head, 140)[0]
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    (folder / "bomb_deflate.dcm").write_bytes(head[:meta_end] + block * 6000 + packer.flush())
    made.append(folder / "bomb_deflate.dcm")
    tiff = next(s.path for s in found if s.kind == "tiff")
    data = bytearray(tiff.read_bytes())
    order = "<" if data[:2] == b"II" else ">"
    first = struct.unpack_from(order + "I", data, 4)[0]
    next_at = first + 2 + 12 * struct.unpack_from(order + "H", data, first)[0]
    start = len(data)
    chain = b"".join(
        struct.pack(order + "HI", 0, start + 6 * (i + 1) if i < 199_999 else 0) for i in range(200_000)
    )
    struct.pack_into(order + "I", data, next_at, start)
    (folder / "bomb_pages.tif").write_bytes(bytes(data) + chain)
    made.append(folder / "bomb_pages.tif")
    return made


def build_corpus(folder: Path, mutants: int, seed: int, found: list[Source]) -> list[Path]:
    """``mutants`` seeded mutants of ``found`` (plus TIFFs made from them and the hand-made bombs)."""
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / ".sources"
    work.mkdir(exist_ok=True)
    found = found + tiff_sources(found, work)
    rng = random.Random(seed)
    originals = {s.path: s.path.read_bytes() for s in found}
    suffix = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg", "tiff": ".tif"}
    paths = []
    for i in range(mutants):
        source = found[i % len(found)]
        # Names carry no part of the source's name: some sample names hold a patient ID.
        path = folder / f"m{i:05d}{suffix[source.kind]}"
        path.write_bytes(mutate(originals[source.path], source.kind, rng))
        paths.append(path)
    return paths + hand_made(found, folder)


# --- one predict run --------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the decoder workers), in bytes."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, pids = 0, [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                pids += [int(c) for c in children.read().split()]
    except OSError:
        pass
    for each in pids:
        try:
            with open(f"/proc/{each}/statm") as statm:
                total += int(statm.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            pass
    return total


def run_predict(
    corpus: list[Path], folder: Path, out: Path, markers: set[str], timeout_s: float = 3600
) -> Outcome:
    """`fracsight -v predict folder --heatmaps` in a subprocess, watched for memory and row arrival."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    heat = out.parent / (out.stem + "_heatmaps")
    command = [sys.executable, "-m", "fracsight", "-v", "predict", str(folder), "--output", str(out)]
    started = time.monotonic()
    process = subprocess.Popen(
        [*command, "--heatmaps", str(heat), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    peak, arrivals, stop = [0], [started], threading.Event()

    def watch() -> None:
        seen = 0
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(process.pid))
            try:
                lines = out.read_bytes().count(b"\n") if out.exists() else 0
            except OSError:
                lines = seen
            if lines > seen:
                arrivals.extend([time.monotonic()] * (lines - seen))
                seen = lines
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        stop.set()
        watcher.join()
    seconds = time.monotonic() - started
    arrivals.append(time.monotonic())
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.DictReader(fh))
    text = out.read_text(errors="replace") + stdout.decode(errors="replace") + stderr.decode(errors="replace")
    outcome = Outcome(
        inputs=len(corpus),
        rows=len(rows),
        returncode=process.returncode,
        seconds=seconds,
        longest_wait_s=max(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)),
        peak_bytes=peak[0],
        traceback="Traceback" in stderr.decode(errors="replace"),
    )
    names = Counter(Path(r["path"]).name for r in rows)
    outcome.missing = sorted(p.name for p in corpus if names[p.name] == 0)
    outcome.duplicated = sorted(n for n, c in names.items() if c > 1)
    for row in rows:
        if row["probability"]:
            outcome.analysed += 1
        else:
            outcome.refused += 1
        if row["error"].startswith("the decoder failed on this file"):
            cause = "ran past the time limit" if "ran past" in row["error"] else "process died"
            outcome.decoder_failures[cause] += 1
    outcome.leaks = sorted(m for m in markers if leaks(m, text))
    return outcome


def table(outcome: Outcome, by_format: Counter) -> str:
    formats = ", ".join(f"{n} {k}" for k, n in sorted(by_format.items()))
    failures = ", ".join(f"{n} {k}" for k, n in sorted(outcome.decoder_failures.items())) or "0"
    ended = f"exit code {outcome.returncode}, traceback {'yes' if outcome.traceback else 'no'}"
    wait = f"{int(outcome.longest_wait_s > HANG_S)} (longest wait {outcome.longest_wait_s:.1f} s)"
    per_input = outcome.seconds / max(outcome.inputs, 1) * 1000
    rows = [
        ("inputs", f"{outcome.inputs} ({formats})"),
        ("rows", f"{outcome.rows} ({outcome.analysed} analysed, {outcome.refused} refused)"),
        (f"predict process deaths ({ended})", str(int(outcome.died))),
        ("lost rows (inputs without exactly one row)", str(outcome.lost_rows + len(outcome.duplicated))),
        (f"hangs (a wait of more than {HANG_S:.0f} s for the next row)", wait),
        ("files the decoder workers failed on (each one row)", failures),
        ("patient names or IDs in CSV, stdout, stderr (-v)", str(len(outcome.leaks))),
        ("peak memory, predict + decoder workers", f"{outcome.peak_bytes / 2**30:.2f} GiB"),
        ("wall time", f"{outcome.seconds:.0f} s ({per_input:.0f} ms per input)"),
    ]
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", help="build the corpus in this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp) / "corpus"
        found = sources()
        corpus = build_corpus(folder, args.mutants, args.seed, found)
        by_format = Counter(p.suffix for p in corpus)
        outcome = run_predict(corpus, folder, Path(tmp) / "results.csv", patient_markers(found))
    print(f"# fracsight predict on {len(corpus)} hostile inputs (seed {args.seed}, {os.cpu_count()} cores)")
    print(table(outcome, by_format))
    if outcome.missing or outcome.duplicated or outcome.leaks:
        print(
            "missing:", outcome.missing[:20], "duplicated:", outcome.duplicated[:20], "leaks:", outcome.leaks
        )
    bad = (
        outcome.died
        or outcome.lost_rows
        or outcome.duplicated
        or outcome.leaks
        or outcome.longest_wait_s > HANG_S
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
