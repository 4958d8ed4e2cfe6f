"""What shipping several networks would cost `predict` on this CPU; prints a table.

    python benchmarks/ensemble_cost.py [--repeats 7] [--n-typical 64]

Why: averaging the five cross-validation fold models is the most accurate model fracsight has
trained (see training/README.md), but each network is one more forward pass on the user's
CPU, and the budget is 60 ms per typical image end to end. This builds ONNX graphs of k
untrained EfficientNet-Lite networks averaged (forward time does not depend on the weights),
with and without the mirror-image pass the shipped model has, and times them through the
same pipeline as `fracsight predict --heatmaps` (decode, preprocess, model, overlay PNG).
It also times ONNX Runtime's static int8 quantisation (QDQ) of each graph, model only.
Needs the training extra (torch).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
from predict_speed import batched_ms, median_ms  # this folder is on sys.path when run as a script

from fracsight.model_card import card_path, default_card_path

ROOT = Path(__file__).resolve().parents[1]
TYPICAL = ROOT / "src" / "fracsight" / "samples" / "IMG0001739.jpg"  # 373 x 454
CONFIGS = (
    ("lite0", 1, True),
    ("lite0", 1, False),
    ("lite0", 2, False),
    ("lite0", 3, False),
    ("lite0", 5, False),
    ("lite0", 5, True),
    ("lite1", 1, True),
    ("lite2", 1, True),
    ("lite2", 1, False),
)


def _export(variant: str, k: int, mirror: bool, size: int, path: Path) -> None:
    import torch
    from torch import nn

    from fracsight.training.export import WithFlipTTA, export_graph
    from fracsight.training.network import FractureNet, Outputs

    class _Mean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.models = nn.ModuleList(FractureNet(variant).eval() for _ in range(k))

        def forward(self, image: torch.Tensor) -> Outputs:
            outs = [m(image) for m in self.models]
            return Outputs(*(torch.stack(parts).mean(0) for parts in zip(*outs, strict=True)))

    export_graph((WithFlipTTA(_Mean()) if mirror else _Mean()).eval(), size, path)
    shutil.copy(default_card_path(), card_path(path))


def _int8(path: Path, image: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": image[None, None].astype(np.float32)}] * 4)

        def get_next(self):
            return next(self.batches, None)

    out = path.with_name(path.stem + "_int8.onnx")
    quantize_static(
        str(path),
        str(out),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    shutil.copy(default_card_path(), card_path(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n-typical", type=int, default=64, help="images for the end-to-end batch run")
    args = parser.parse_args()

    import onnxruntime as ort

    from fracsight.inference import Analyser
    from fracsight.preprocess import prepare

    ort.set_default_logger_severity(3)  # the quantiser's unused-initialiser notes are noise here
    shipped = Analyser()
    size = shipped.size
    image, _ = prepare(shipped.read(TYPICAL).pixels, size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for variant, k, mirror in CONFIGS:
            path = tmp_path / f"{variant}_k{k}{'_mirror' if mirror else ''}.onnx"
            _export(variant, k, mirror, size, path)
            analyser = Analyser(path)
            model_ms = median_ms(lambda a=analyser: a.run_model(image[None]), args.repeats)
            int8 = Analyser(_int8(path, image))
            int8_ms = median_ms(lambda a=int8: a.run_model(image[None]), args.repeats)
            end_ms = batched_ms(analyser, [TYPICAL] * args.n_typical, args.repeats, tmp_path / "b.png")
            rows.append((variant, k, mirror, model_ms, int8_ms, end_ms))

    machine = platform.processor() or platform.machine()
    print(f"# fracsight ensemble cost: {machine}, {os.cpu_count()} cores, {size} px")
    print(
        f"| network | how many | mirror pass | model fp32, batch 1 (ms) | model int8 QDQ, batch 1 (ms) "
        f"| end to end, batched ({args.n_typical} typical JPEGs, ms per image) |"
    )
    print("|---|---|---|---|---|---|")
    for variant, k, mirror, model_ms, int8_ms, end_ms in rows:
        name, flip = f"EfficientNet-{variant.capitalize()}", "yes" if mirror else "no"
        print(f"| {name} | {k} | {flip} | {model_ms:.1f} | {int8_ms:.1f} | {end_ms:.1f} |")


if __name__ == "__main__":
    main()
