"""``fracsight quantise``: an 8-bit copy of a model, calibrated on development images, with its card.

Runs the step :mod:`fracsight.training.quantise` that ``fracsight train`` runs after export, for a
model that already exists (a site model, the shipped one). Needs the ``train`` extra (onnx).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fracsight.cli.options import a_model, a_whole_number, an_existing_file, an_existing_path, one_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantise",
        help="write an 8-bit copy of a model (NAME.int8.onnx) that answers like it, faster on a CPU",
        description="Quantises MODEL to 8 bits (ONNX QDQ, per-channel weights; the first convolution "
        "and the heat-map and head layers kept in float), calibrating on the --calibration-split rows of "
        "--split-file, then runs both models on the --evaluate-split rows and records their agreement "
        "(AUC, category, heat-map peak cell) and their speed, side by side, in NAME.int8.card.json.",
    )
    p.add_argument("model", type=a_model, help="the float ONNX model (NAME.card.json beside it)")
    p.add_argument(
        "--data", required=True, type=an_existing_path("data"), help="FracAtlas folder or manifest CSV"
    )
    p.add_argument(
        "--split-file", required=True, type=an_existing_file("split"),
        help="CSV of id,split (train's split.csv)",
    )  # fmt: skip
    p.add_argument(
        "--calibration-split", default="dev", help="split to calibrate on (default dev; never test)"
    )
    p.add_argument("--evaluate-split", default="test", help="split to measure agreement on (default test)")
    p.add_argument(
        "--calibration-images", type=a_whole_number(1), default=300,
        help="development images to calibrate on, drawn at random (default 300)",
    )  # fmt: skip
    p.add_argument(
        "--evaluate-images", type=a_whole_number(1), default=None,
        help="at most this many images of --evaluate-split (default all)",
    )  # fmt: skip
    p.add_argument(
        "--method", type=one_of(("minmax", "percentile", "entropy"), "calibration method"), default="minmax",
        help="activation range calibration (default minmax)",
    )  # fmt: skip
    p.add_argument(
        "--timing-images", type=a_whole_number(0), default=40, help="images timed per round (0: none)"
    )
    p.add_argument("--out", help="the 8-bit model to write (default NAME.int8.onnx beside MODEL)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fracsight.model_card import ModelCard
    from fracsight.training.quantise import QuantiseRecipe, int8_path, quantise_and_describe

    if args.calibration_split == args.evaluate_split:
        raise ValueError(
            "--calibration-split and --evaluate-split must differ: calibrate on development images"
        )
    out = Path(args.out) if args.out else int8_path(args.model)
    if out.suffix.lower() != ".onnx" or out.resolve() == Path(args.model).resolve():
        raise ValueError(f"--out {out}: must be a new .onnx file, not the float model")
    card = ModelCard.for_model(args.model)
    card_file = quantise_and_describe(
        args.model,
        out,
        QuantiseRecipe(method=args.method),
        data=args.data,
        split_file=args.split_file,
        calibration_split=args.calibration_split,
        evaluate_split=args.evaluate_split,
        n_calibration=args.calibration_images,
        n_evaluate=args.evaluate_images,
        timing_images=args.timing_images,
        size=card.input_size,
    )
    summary = ModelCard.read(card_file)["quantisation"]
    agreement = summary["agreement"]
    print(
        f"fracsight quantise: wrote {out} and {card_file.name}; on {agreement['n']} {args.evaluate_split} "
        f"images: AUC {agreement['auc_float']} (float) vs {agreement['auc_int8']} (int8), same category "
        f"{agreement['same_category']:.1%}, same heat-map peak cell {agreement['same_peak_cell']:.1%}",
        file=sys.stderr,
    )
    speed = summary.get("speed_model_alone")
    if speed:
        print(
            f"fracsight quantise: model alone {speed['float32']['median_ms']} ms (float32) vs "
            f"{speed['int8']['median_ms']} ms (int8) per image, side by side",
            file=sys.stderr,
        )
    return 0
