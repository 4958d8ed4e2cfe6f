"""`fracsight predict --heatmaps`, stage by stage, for two git revisions side by side; prints a table.

    python benchmarks/predict_stages.py BASE [NEW] [--rounds 5] [--typical 40] [--batch 200]

BASE and NEW are git revisions (NEW default: the working tree). Each round runs one child
process per revision (``git archive`` of its ``src/``, this file's stage code for both), the
order reversed every other round, so a shared machine's load hits both alike; the table gives
the median over rounds of each child's median, and NEW / BASE.

Stages, per image, with the analyser ``predict`` makes (``analyser_for``: large images decoded
reduced where the revision does): decode in a decoder worker (``Analyser.read``), the same
decode in this process (the difference is the transfer from the worker), preprocess, model,
heat-map layer, overlay drawing (layer, grey image, blend, caption), PNG encoding and writing
(``save_png``), CSV row, and one image end to end (``predict``'s rows for it alone: what one
image waits); then ``predict``'s rows (decode ahead, model, pictures written, CSV) over a
batch of typical images and over four 3000 x 3000 DICOMs, per image.
Inputs: typical FracAtlas JPEGs from ``../shared/data/fracatlas`` (the bundled samples without
it), a 3000 x 3000 16-bit DICOM made from a real radiograph and the same as lossless JPEG 2000
(``predict_speed.py`` makes both).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRACATLAS = ROOT.parent / "shared" / "data" / "fracatlas" / "images"
STAGES = (
    "decode in a worker",
    "decode in process",
    "transfer from the worker",
    "preprocess",
    "model",
    "heat-map layer",
    "overlay drawing",
    "PNG encode + write",
    "CSV row",
    "end to end, one image",
)


def _typical(n: int) -> list[Path]:
    """``n`` FracAtlas JPEGs drawn with a fixed seed (the bundled samples where the data is absent)."""
    files = sorted(FRACATLAS.glob("*/*.jpg"))
    if not files:
        return sorted((ROOT / "src" / "fracsight" / "samples").glob("*.jpg"))
    return random.Random(24).sample(files, min(n, len(files)))


def _export(revision: str, folder: Path) -> Path:
    """``src/`` of ``revision`` under ``folder`` (the working tree itself for "WORKTREE")."""
    if revision == "WORKTREE":
        return ROOT / "src"
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "src"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def child(spec: dict) -> dict:
    """One revision's medians (ms per image) for every input and stage; run with its ``src`` first."""
    import numpy as np

    from fracsight import explain
    from fracsight.cli import predict
    from fracsight.cli.predict_output import RowWriter, csv_row
    from fracsight.io import read_radiograph

    out = Path(spec["out"])
    options = argparse.Namespace(
        model=None, threads=spec.get("threads"), batch_size=8, model_threads=None,
        decoder_processes=None, read_ahead_threads=None, precision=None, overlay_max_side=1024,
    )  # fmt: skip
    analyser = predict.analyser_for(options)  # as predict makes it (a revision may reduce large images)
    # "decode in process" reads as the worker does: reduced towards the model where the revision does
    reduce = {"model_side": analyser.size} if getattr(analyser.preparer, "reduce_pixels", False) else {}
    side = analyser.decode_side
    results: dict[str, dict[str, float]] = {}

    def timed(fn):
        t0 = time.perf_counter()
        value = fn()
        return (time.perf_counter() - t0) * 1e3, value

    for label, paths, repeats in spec["inputs"]:
        times: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for path in paths:
            try:
                analyser.read(path)  # warm, and skip what predict refuses
            except Exception:  # noqa: BLE001 - a refused file has no stages to time
                continue
            for _ in range(repeats):
                worker, radiograph = timed(lambda p=path: analyser.read(p))
                local, _ = timed(lambda p=path: read_radiograph(p, needed_side=side, **reduce))
                pixels = radiograph.pixels
                ms, item = timed(lambda r=radiograph: analyser.preparer.prepare(r))  # as predict prepares
                image = item.image
                times["preprocess"].append(ms)
                times["model"].append(timed(lambda i=image: analyser.run_outputs(i[None]))[0])
                finding = analyser.analyse(radiograph)
                h, w = finding.letterbox.height, finding.letterbox.width  # the image's size
                scale = explain._display_scale(h, w, 1024)
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                layer = lambda f=finding, s=size: explain.heatmap_layer(f.heatmap, f.letterbox, s)  # noqa: E731
                times["heat-map layer"].append(timed(layer)[0])
                ms, overlay = timed(lambda px=pixels, f=finding: explain.overlay_image(px, f))
                times["overlay drawing"].append(ms)
                target = out / "stage.png"
                times["PNG encode + write"].append(
                    timed(lambda o=overlay, f=finding, t=target: explain.save_png(o, t, f.png_text()))[0]
                )
                record = {**finding.to_record(), "heatmap": str(target)}
                times["CSV row"].append(timed(lambda r=record: csv_row(r))[0])
                times["decode in a worker"].append(worker)
                times["decode in process"].append(local)
                times["transfer from the worker"].append(worker - local)
                one = lambda p=path: list(predict.rows(analyser, [Path(p)], out))  # noqa: E731
                times["end to end, one image"].append(timed(one)[0])
        results[label] = {stage: statistics.median(v) for stage, v in times.items() if v}
    for label, paths in spec["batches"]:
        batch = [Path(p) for p in paths]
        heat = out / "heat"
        for _ in range(2):  # the first warms the read-ahead threads and the writers
            for old in heat.glob("*"):
                old.unlink()
            heat.mkdir(exist_ok=True)
            writer = RowWriter(str(out / "rows.csv"), False)
            t0 = time.perf_counter()
            for row in predict.rows(analyser, batch, heat):
                writer.write(row)
            writer.close()
            elapsed = (time.perf_counter() - t0) * 1e3 / len(batch)
        results[label][f"end to end: predict's rows, {len(batch)} images"] = elapsed
    analyser.close()
    del np
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="git revision to compare against")
    parser.add_argument("new", nargs="?", default="WORKTREE", help="git revision (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--typical", type=int, default=40, help="FracAtlas JPEGs timed stage by stage")
    parser.add_argument("--batch", type=int, default=200, help="images in the end-to-end batch")
    parser.add_argument("--big-repeats", type=int, default=5, help="times each 3000 x 3000 input is timed")
    parser.add_argument("--threads", type=int, help="CPU threads for predict (default: all cores)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(Path(args.child).read_text()))))
        return

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from predict_speed import _as_jpeg2000, _make_big_dicom

    revisions = [args.base, args.new]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = [_export(r, folder / f"rev{i}") for i, r in enumerate(revisions)]
        big = _make_big_dicom(folder)
        j2k = _as_jpeg2000(big)
        typical = [str(p) for p in _typical(args.typical)]
        batch_folder = folder / "batch"
        batch_folder.mkdir()
        batch = []
        for i in range(args.batch):
            source = Path(typical[i % len(typical)])
            batch.append(batch_folder / f"{i:04d}_{source.name}")
            batch[-1].write_bytes(source.read_bytes())
        inputs = [
            ("typical JPEG", typical, 1),
            ("3000x3000 DICOM", [str(big)], args.big_repeats),
            ("3000x3000 J2K DICOM", [str(j2k)], args.big_repeats),
        ]
        per_round: list[list[dict]] = [[], []]
        for r in range(args.rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for k in order:
                out = folder / f"out{k}"
                out.mkdir(exist_ok=True)
                batches = [("typical JPEG", [str(p) for p in batch]), ("3000x3000 DICOM", [str(big)] * 4)]
                spec = {"inputs": inputs, "batches": batches, "out": str(out)}
                spec["threads"] = args.threads
                (folder / "spec.json").write_text(json.dumps(spec))
                env = {**os.environ, "PYTHONPATH": str(sources[k])}
                done = subprocess.run(
                    [sys.executable, __file__, "x", "--child", str(folder / "spec.json")],
                    env=env, check=True, capture_output=True, text=True, cwd=folder,
                )  # fmt: skip
                per_round[k].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"# after round {r + 1} of {args.rounds}:", file=sys.stderr)
            _table(revisions, per_round, file=sys.stderr)
    print(
        f"# predict --heatmaps stages, {revisions[0]} vs {revisions[1]}: {os.cpu_count()} cores, "
        f"median of {args.rounds} alternating rounds; typical: {len(typical)} FracAtlas JPEGs, "
        f"batch {args.batch}"
    )
    _table(revisions, per_round)


def _table(revisions: list[str], per_round: list[list[dict]], file=None) -> None:
    """The medians over the rounds so far, and NEW / BASE, as a Markdown table."""

    def median(k: int, label: str, stage: str) -> float:
        return statistics.median(run[label][stage] for run in per_round[k])

    print(f"| input | stage | {revisions[0]} ms | {revisions[1]} ms | new / base |", file=file)
    print("|---|---|---|---|---|", file=file)
    for label in per_round[0][0]:
        for stage in per_round[0][0][label]:
            base, new = median(0, label, stage), median(1, label, stage)
            ratio = f"{new / base:.2f}" if base > 0.01 else "-"
            print(f"| {label} | {stage} | {base:.2f} | {new:.2f} | {ratio} |", file=file)


if __name__ == "__main__":
    main()
