"""Speed of `fracsight predict` stages on this machine's CPU; prints a table.

    python benchmarks/predict_speed.py [--model M.onnx] [--repeats 5]

Stages: decode (in a decoder worker process, as predict reads: Analyser.read), the same decode
in this process (read_radiograph: the difference is what the crash isolation costs), preprocess
(prepare), model (ONNX Runtime, batch 1 and batch 8), heat-map overlay PNG; then end to end
through the same pipeline as the CLI (Analyser.iter_outcomes + overlay written), for typical
FracAtlas-sized images and for a
3000 x 3000 16-bit DICOM made from a real radiograph, uncompressed and as lossless JPEG 2000
(which predict decodes at half resolution, see fracsight.io.dicom_j2k). Optional: training
images/s on CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "fracsight" / "samples"


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def batched_ms(analyser, paths: list[Path], repeats: int, png: Path) -> float:
    """Per-image ms of `predict --heatmaps` over ``paths`` as one batch: decode, model, overlay PNG."""
    from fracsight.explain import overlay_image

    def run() -> None:
        for f, r in analyser.iter_outcomes(paths):
            overlay_image(r.pixels, f).save(png, compress_level=1)

    return median_ms(run, max(1, repeats // 2)) / len(paths)


def cli_ms(source: Path, n: int, repeats: int, folder: Path) -> float:
    """Per-image ms of the `fracsight predict --heatmaps` command on ``n`` copies of ``source``, start-up
    (model load, decoder processes) included: what a user waits for, rows flushed one by one."""
    import shutil
    import subprocess
    import sys

    inputs = folder / "inputs"
    inputs.mkdir()
    for i in range(n):
        shutil.copyfile(source, inputs / f"{i:04d}{source.suffix}")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "fracsight", "predict", str(inputs), "--heatmaps", str(folder / "heat")]

    def run() -> None:
        subprocess.run([*command, "--output", str(folder / "out.csv"), "--no-progress"], check=True, env=env)

    return median_ms(run, max(1, repeats // 2)) / n


def _make_big_dicom(folder: Path) -> Path:
    """A 3000 x 3000, 16-bit (12 stored) DX file built from a real sample radiograph."""
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    src = SAMPLES / "IMG0002472.jpg"
    big = Image.open(src).convert("L").resize((3000, 3000), Image.Resampling.BILINEAR)
    pixels = (np.asarray(big, dtype=np.uint16) * 16).astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path = folder / "big_3000.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _as_jpeg2000(path: Path) -> Path:
    """The same file re-encoded as JPEG 2000 lossless with python-gdcm."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"gdcm could not read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEG2000Lossless))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("gdcm could not encode JPEG 2000")
    out = path.with_name(path.stem + "_j2k.dcm")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm could not write {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-typical", type=int, default=500, help="images for the end-to-end batch runs")
    parser.add_argument("--train", action="store_true", help="also measure CPU training images/s")
    args = parser.parse_args()

    from fracsight.explain import overlay_image
    from fracsight.inference import Analyser
    from fracsight.io import read_radiograph
    from fracsight.preprocess import prepare

    analyser = Analyser(args.model)
    typical = SAMPLES / "IMG0001739.jpg"  # 373 x 454, the most common FracAtlas size
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        big = _make_big_dicom(tmp_path)
        j2k = _as_jpeg2000(big)
        inputs = (("typical JPEG", typical), ("3000x3000 DICOM", big), ("3000x3000 J2K DICOM", j2k))
        for label, path in inputs:
            rg = analyser.read(path)  # as predict reads it
            image, box = prepare(rg.pixels, analyser.size)
            finding = analyser.analyse(rg)
            if rg.metadata.get("decoded_at_scale", 1.0) != 1.0:
                full = median_ms(lambda p=path: read_radiograph(p), args.repeats)
                rows.append((label, "decode, full resolution", full))
            rows.append((label, "decode", median_ms(lambda p=path: analyser.read(p), args.repeats)))
            in_process = median_ms(
                lambda p=path: read_radiograph(p, needed_side=analyser.decode_side), args.repeats
            )
            rows.append((label, "decode in this process (no isolation)", in_process))
            rows.append(
                (label, "preprocess", median_ms(lambda r=rg: prepare(r.pixels, analyser.size), args.repeats))
            )
            rows.append(
                (
                    label,
                    "model, batch 1",
                    median_ms(lambda i=image: analyser.run_model(i[None]), args.repeats),
                )
            )
            batch = np.repeat(image[None], 8, axis=0)
            rows.append(
                (
                    label,
                    "model, batch 8 (per image)",
                    median_ms(lambda b=batch: analyser.run_model(b), args.repeats) / 8,
                )
            )
            out = tmp_path / "o.png"
            rows.append(
                (
                    label,
                    "heat-map overlay PNG",
                    median_ms(
                        lambda r=rg, f=finding, o=out: overlay_image(r.pixels, f).save(o, compress_level=1),
                        args.repeats,
                    ),
                )
            )

            def end_to_end(p=path, n=1, o=out):
                for f, r in analyser.iter_outcomes([p] * n):
                    overlay_image(r.pixels, f).save(o, compress_level=1)

            rows.append((label, "end to end, one image", median_ms(end_to_end, args.repeats)))
        per_image = batched_ms(analyser, [typical] * args.n_typical, args.repeats, tmp_path / "b.png")
        rows.append(("typical JPEG", f"end to end, batched ({args.n_typical} images, per image)", per_image))
        command = cli_ms(typical, args.n_typical, args.repeats, tmp_path)
        rows.append(
            ("typical JPEG", f"`predict --heatmaps` command, {args.n_typical} images (per image)", command)
        )

    print(
        f"# fracsight predict speed: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, model {analyser.model_id}, input {analyser.size} px"
    )
    print(f"| input | stage | ms per image (median of {args.repeats}) | images/s |")
    print("|---|---|---|---|")
    for label, stage, ms in rows:
        print(f"| {label} | {stage} | {ms:.1f} | {1000 / ms:.1f} |")
    if args.train:
        _train_speed(analyser.size)


def _train_speed(size: int) -> None:
    import torch

    from fracsight.training.augment import Augmentation, augment
    from fracsight.training.network import FractureNet

    torch.manual_seed(0)
    model = FractureNet("lite0").train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x = (torch.rand(16, 1, size, size) * 2 - 1).contiguous(memory_format=torch.channels_last)
    m = torch.zeros(16, 1, size, size)
    y = torch.randint(0, 2, (16,)).float()

    def step():
        xa, _ = augment(x, m, Augmentation())
        xa = xa.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logit = model(xa).logit
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ms = median_ms(step, 3)
    print(
        f"\n| training step (CPU, bf16 autocast, channels-last, batch 16, {size} px) "
        f"| {16000 / ms:.1f} images/s |"
    )


if __name__ == "__main__":
    main()
