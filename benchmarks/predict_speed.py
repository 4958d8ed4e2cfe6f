"""Speed of `fracsight predict` stages on this machine's CPU, float32 and 8-bit side by side; prints a table.

    python benchmarks/predict_speed.py [--model M.onnx] [--precision both|float32|int8] [--repeats 5]

Every stage runs for each model in the same rounds, alternating (the order reversed every other
round), and the table gives each model's median: on a shared machine whose load changes minute
to minute only figures measured this way can be compared. The 8-bit model is NAME.int8.onnx
beside the float one (``fracsight quantise``); without it only float32 is measured.

Stages: decode (in a decoder worker process, as predict reads: Analyser.read, an image twice the
overlay's 1,024 px or more handed back already reduced, fracsight.io.reduced), the same decode
in this process (read_radiograph: the difference is what the crash isolation costs), preprocess
(Preparer.prepare), model (ONNX Runtime, batch 1 and batch 8), heat-map overlay PNG (drawn and written as
predict writes it, ``save_png``); then end to end
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
from precision_choice import add_precision_option  # beside this script
from precision_choice import precisions as precisions_to_measure

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


def batched_run(analyser, paths: list[Path], folder: Path) -> None:
    """`predict --heatmaps` over ``paths`` as one batch, as the command runs it (its rows: decode
    ahead, model, overlay PNGs written by its writer threads), without the start-up."""
    from fracsight.cli.predict import rows

    folder.mkdir(exist_ok=True)
    for _ in rows(analyser, paths, folder):
        pass


def cli_run(source: Path, n: int, folder: Path, precision: str, model: str | None):
    """The `fracsight predict --heatmaps --precision P` command on ``n`` copies of ``source``, as a
    callable to time; start-up (model load, decoder processes) included: what a user waits for."""
    import shutil
    import subprocess
    import sys

    inputs = folder / "inputs"
    inputs.mkdir(parents=True)
    for i in range(n):
        shutil.copyfile(source, inputs / f"{i:04d}{source.suffix}")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "fracsight", "predict", str(inputs), "--heatmaps", str(folder / "heat")]
    command += ["--precision", precision, "--output", str(folder / "out.csv"), "--no-progress"]
    command += ["--model", model] if model else []

    def run() -> None:
        subprocess.run(command, check=True, env=env)

    return run


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


def side_by_side_ms(fns: list, repeats: int) -> list[float]:
    """Median ms of each of ``fns`` (one per model), measured alternately in the same rounds, the
    order reversed every other round, so a shared machine's changing load hits every model alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_precision_option(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-typical", type=int, default=500, help="images for the end-to-end batch runs")
    parser.add_argument("--no-cli", action="store_true", help="skip the `predict` command runs")
    parser.add_argument("--train", action="store_true", help="also measure CPU training images/s")
    args = parser.parse_args()

    from fracsight.explain import overlay_image, save_png
    from fracsight.inference import Analyser
    from fracsight.io import read_radiograph

    precisions = precisions_to_measure(args.model, args.precision)
    # As predict makes them: images twice the overlay's side or more come from the decoder reduced.
    analysers = [Analyser(args.model, precision=p, reduce_pixels=True) for p in precisions]
    first = analysers[0]
    typical = SAMPLES / "IMG0001739.jpg"  # 373 x 454, the most common FracAtlas size
    rows: list[tuple[str, str, list[float]]] = []

    def each(label: str, stage: str, make) -> None:
        """One stage for every model, side by side; ``make(analyser)`` gives the callable to time."""
        rows.append((label, stage, side_by_side_ms([make(a) for a in analysers], args.repeats)))

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        big = _make_big_dicom(tmp_path)
        j2k = _as_jpeg2000(big)
        inputs = (("typical JPEG", typical), ("3000x3000 DICOM", big), ("3000x3000 J2K DICOM", j2k))
        for label, path in inputs:
            rg = first.read(path)  # as predict reads it
            image = first.preparer.prepare(rg).image
            findings = [a.analyse(rg) for a in analysers]
            if rg.metadata.get("decoded_at_scale", 1.0) != 1.0:
                each(label, "decode, full resolution", lambda a, p=path: lambda: read_radiograph(p))
            each(label, "decode", lambda a, p=path: lambda: a.read(p))
            each(
                label,
                "decode in this process (no isolation)",
                lambda a, p=path: lambda: read_radiograph(p, needed_side=a.decode_side, model_side=a.size),
            )
            each(label, "preprocess", lambda a, r=rg: lambda: a.preparer.prepare(r))
            each(label, "model, batch 1", lambda a, i=image: lambda: a.run_model(i[None]))
            batch = np.repeat(image[None], 8, axis=0)
            per_8 = side_by_side_ms([lambda a=a, b=batch: a.run_model(b) for a in analysers], args.repeats)
            rows.append((label, "model, batch 8 (per image)", [ms / 8 for ms in per_8]))
            out = tmp_path / "o.png"
            overlays = side_by_side_ms(
                [
                    lambda r=rg, f=f, o=out: save_png(overlay_image(r.pixels, f), o, f.png_text())
                    for f in findings
                ],
                args.repeats,
            )
            rows.append((label, "heat-map overlay PNG", overlays))

            def end_to_end(a, p=path, o=out):
                def run() -> None:
                    for f, r in a.iter_outcomes([p]):
                        save_png(overlay_image(r.pixels, f), o, f.png_text())

                return run

            each(label, "end to end, one image", end_to_end)
        paths = [typical] * args.n_typical
        rounds = max(1, args.repeats // 2)
        heat = tmp_path / "batch-heatmaps"
        batched = side_by_side_ms([lambda a=a: batched_run(a, paths, heat) for a in analysers], rounds)
        rows.append(
            ("typical JPEG", f"end to end, batched ({args.n_typical} images, per image)",
             [ms / args.n_typical for ms in batched])
        )  # fmt: skip
        if not args.no_cli:
            runs = [cli_run(typical, args.n_typical, tmp_path / p, p, args.model) for p in precisions]
            command = side_by_side_ms(runs, rounds)
            rows.append(
                ("typical JPEG", f"`predict --heatmaps` command, {args.n_typical} images (per image)",
                 [ms / args.n_typical for ms in command])
            )  # fmt: skip

    print(
        f"# fracsight predict speed: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, model {first.model_id}, input {first.size} px; "
        f"{' and '.join(precisions)} measured side by side (alternating, median of {args.repeats} rounds)"
    )
    head = " | ".join(f"{p} ms per image" for p in precisions)
    extra = " | int8 / float32" if len(precisions) == 2 else ""
    print(f"| input | stage | {head}{extra} |")
    print("|---|---|" + "---|" * (len(precisions) + (1 if extra else 0)))
    for label, stage, ms in rows:
        cells = " | ".join(f"{m:.1f}" for m in ms)
        ratio = f" | {ms[1] / ms[0]:.2f}" if len(ms) == 2 and ms[0] > 0 else ""
        print(f"| {label} | {stage} | {cells}{ratio} |")
    for a in analysers:
        a.close()
    if args.train:
        _train_speed(first.size)


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
