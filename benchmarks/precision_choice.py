"""The --precision option the speed benchmarks share: float32, int8 or both side by side.

"both" measures the float model and its 8-bit copy ``NAME.int8.onnx`` in the same rounds; without
the copy (or its card) it falls back to float32 alone and says so, rather than failing a long run.
"""

from __future__ import annotations

import argparse


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="float model (default: the shipped one)")
    parser.add_argument(
        "--precision",
        choices=("float32", "int8", "both"),
        default="both",
        help="both (default): float32 and its 8-bit copy NAME.int8.onnx side by side, when it exists",
    )


def precisions(model: str | None, wanted: str) -> list[str]:
    """The precisions to measure (``fracsight.inference.model_for_precision`` decides where the
    8-bit copy is; its card is checked as the commands check it at start)."""
    from fracsight.inference import model_for_precision
    from fracsight.model_card import ModelCard

    if wanted != "both":
        return [wanted]
    try:
        ModelCard.for_model(model_for_precision(model, "int8"))
    except FileNotFoundError as exc:
        print(f"# {exc}: float32 only")
        return ["float32"]
    return ["float32", "int8"]
