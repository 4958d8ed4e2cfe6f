"""``fracsight thresholds``: choose the two operating points on a site's own validation data."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fracsight.cli.evaluate import add_data_arguments, load_data_arguments
from fracsight.cli.options import a_date, a_new_model, a_number

if TYPE_CHECKING:
    from fracsight.evaluation.sources import LoadedCases
    from fracsight.model_card import ModelCard


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "thresholds",
        help="choose the 'doubt' and 'fracture' thresholds on your own validation data",
        description="Chooses the 'doubt' threshold for a target sensitivity and the 'fracture' threshold "
        "for a target specificity on validation cases (run the model on a DATASET, or give "
        "--predictions made by --model and --labels), reports what they achieve with 95% Wilson "
        "CIs, and writes a COPY of the model whose card carries the new thresholds and where they came from.",
    )
    add_data_arguments(p)
    target = a_number(0, 1, open_low=True)
    p.add_argument("--sensitivity", type=target, required=True, help="for 'doubt', in (0, 1], e.g. 0.95")
    p.add_argument("--specificity", type=target, required=True, help="for 'fracture', in (0, 1], e.g. 0.90")
    add_copy_arguments(p)
    p.set_defaults(func=run)


def data_description(args: argparse.Namespace, loaded: LoadedCases) -> str:
    """The data a card adaptation was made on, in words; saying so when it holds training images."""
    what = args.dataset if args.dataset else f"predictions {args.predictions} with labels {args.labels}"
    what += f", split {args.split} of {args.split_file}" if args.split_file else ""
    if loaded.training is not None and loaded.training.n:
        what += f" ({loaded.training.caution()})"
    return what


def add_copy_arguments(parser: argparse.ArgumentParser) -> None:
    """The model copy to write and its date, shared with ``calibrate``."""
    parser.add_argument(
        "--out", required=True, type=a_new_model, help="adapted model copy to write (OUT.onnx)"
    )
    parser.add_argument(
        "--date",
        type=a_date,
        default=None,
        help="date recorded in the card (default: today, YYYY-MM-DD)",
    )


def check_out(args: argparse.Namespace, model: str) -> None:
    """Refuse, before any work, to write the copy over the model it is a copy of."""
    if Path(args.out).resolve() == Path(model).resolve():
        raise ValueError(
            f"argument --out: {args.out!r} is the input model; write the adapted copy to a new path"
        )


def site_cases(args: argparse.Namespace, command: str) -> tuple[str, ModelCard, LoadedCases]:
    """(model path, its card, the site's labelled cases) for the commands that adapt a model copy."""
    from fracsight.model_card import DEFAULT_MODEL, ModelCard

    model = args.model or str(DEFAULT_MODEL)  # the model to copy: the one named, else the shipped one
    check_out(args, model)
    card = ModelCard.for_model(model)
    return model, card, load_data_arguments(args, command, model)


def run(args: argparse.Namespace) -> int:
    from fracsight.evaluation.adapt import card_with_thresholds, write_model_copy
    from fracsight.evaluation.operating_points import choose_thresholds

    date = args.date or dt.date.today().isoformat()
    model, card, loaded = site_cases(args, "thresholds")
    cases = loaded.cases
    choice = choose_thresholds(cases.probabilities, cases.labels, args.sensitivity, args.specificity)
    description = data_description(args, loaded)
    new_card = card_with_thresholds(card, choice, description, date)
    onnx_path, card_path = write_model_copy(model, args.out, new_card)
    sens, spec = choice.doubt.achieved(), choice.fracture.achieved()
    print(
        f"fracsight thresholds: doubt >= {choice.doubt.threshold:.4g} (sensitivity {sens.value:.3f}, 95% CI "
        f"{sens.lower:.3f}-{sens.upper:.3f}, {sens.k}/{sens.n}); fracture >= {choice.fracture.threshold:.4g} "
        f"(specificity {spec.value:.3f}, 95% CI {spec.lower:.3f}-{spec.upper:.3f}, {spec.k}/{spec.n}); "
        f"measured on the {choice.n} cases of {description} used to choose them: "
        "confirm on independent data. "
        f"Wrote {onnx_path}; the choice and what it achieves are recorded in {card_path}",
        file=sys.stderr,
    )
    return 0
