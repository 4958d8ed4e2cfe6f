"""``fracsight thresholds``: choose the two operating points on a site's own validation data."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import TYPE_CHECKING

from fracsight.cli.evaluate import add_data_arguments, say_training_images

if TYPE_CHECKING:
    from fracsight.evaluation.sources import LoadedCases
    from fracsight.model_card import ModelCard


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "thresholds",
        help="choose the 'doubt' and 'fracture' thresholds on your own validation data",
        description="Chooses the 'doubt' threshold for a target sensitivity and the 'fracture' threshold "
        "for a target specificity on validation cases (run the model on a DATASET, or give "
        "--predictions made by --model and --labels), reports what they achieve with 95%% Wilson "
        "CIs, and writes a COPY of the model whose card carries the new thresholds and where they came from.",
    )
    add_data_arguments(p)
    p.add_argument("--sensitivity", type=float, required=True, help="for 'doubt', e.g. 0.95")
    p.add_argument("--specificity", type=float, required=True, help="for 'fracture', e.g. 0.90")
    p.add_argument("--out", required=True, help="adapted model copy to write (OUT.onnx)")
    p.add_argument("--date", help="date recorded in the card (default: today, YYYY-MM-DD)")
    p.set_defaults(func=run)


def data_description(args: argparse.Namespace, loaded: LoadedCases) -> str:
    """The data a card adaptation was made on, in words; saying so when it holds training images."""
    what = args.dataset if args.dataset else f"predictions {args.predictions} with labels {args.labels}"
    what += f", split {args.split} of {args.split_file}" if args.split_file else ""
    if loaded.training is not None and loaded.training.n:
        what += f" ({loaded.training.caution()})"
    return what


def check_date(date: str | None) -> str:
    if date is None:
        return dt.date.today().isoformat()
    try:
        return dt.date.fromisoformat(date).isoformat()
    except ValueError:
        raise ValueError(f"--date {date!r} is not a date in the form YYYY-MM-DD") from None


def site_cases(args: argparse.Namespace, command: str) -> tuple[str, ModelCard, LoadedCases]:
    """(model path, its card, the site's labelled cases) for the commands that adapt a model copy."""
    from fracsight.evaluation.sources import load_cases
    from fracsight.model_card import DEFAULT_MODEL, ModelCard

    model = args.model or str(DEFAULT_MODEL)  # the model to copy: the one named, else the shipped one
    card = ModelCard.for_model(model)
    loaded = load_cases(
        dataset=args.dataset,
        predictions=args.predictions,
        labels=args.labels,
        model=model,
        split_file=args.split_file,
        split=args.split,
        allow_missing=args.allow_missing,
        progress=not args.no_progress,
        include_training_images=args.include_training_images,
    )
    say_training_images(command, loaded)
    return model, card, loaded


def run(args: argparse.Namespace) -> int:
    from fracsight.evaluation.adapt import card_with_thresholds, write_model_copy
    from fracsight.evaluation.operating_points import choose_thresholds

    date = check_date(args.date)
    model, card, loaded = site_cases(args, "thresholds")
    cases = loaded.cases
    choice = choose_thresholds(cases.probabilities, cases.labels, args.sensitivity, args.specificity)
    description = data_description(args, loaded)
    new_card = card_with_thresholds(card, choice, description, date)
    onnx_path, card_path = write_model_copy(model, args.out, new_card)
    summary = {
        "model": str(onnx_path),
        "card": str(card_path),
        "data": description,
        "n": choice.n,
        "n_positive": choice.n_positive,
        "not_analysed": len(cases.excluded),
        "thresholds": choice.thresholds(),
        "single_threshold": choice.collapsed,
        "doubt": choice.doubt.to_dict(),
        "fracture": choice.fracture.to_dict(),
    }
    print(json.dumps(summary, indent=2))
    sens, spec = choice.doubt.achieved(), choice.fracture.achieved()
    print(
        f"fracsight thresholds: doubt >= {choice.doubt.threshold:.4g} (sensitivity {sens.value:.3f}, 95% CI "
        f"{sens.lower:.3f}-{sens.upper:.3f}, {sens.k}/{sens.n}); fracture >= {choice.fracture.threshold:.4g} "
        f"(specificity {spec.value:.3f}, 95% CI {spec.lower:.3f}-{spec.upper:.3f}, {spec.k}/{spec.n}); "
        f"measured on the {choice.n} cases of {description} used to choose them: "
        "confirm on independent data. "
        f"Wrote {onnx_path}",
        file=sys.stderr,
    )
    return 0
