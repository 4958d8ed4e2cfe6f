"""``fracsight calibrate``: fit temperature scaling on validation data and write it into a model copy."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from fracsight.cli.evaluate import add_data_arguments
from fracsight.cli.options import a_whole_number
from fracsight.cli.thresholds import add_copy_arguments, data_description, site_cases


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit temperature scaling on your validation data and write it into a copy of the model",
        description="Fits the temperature T of probability = sigmoid(logit / T) by maximum likelihood on "
        "validation cases (run the model on a DATASET, or give --predictions made by --model and --labels), "
        "moves the thresholds so that no image changes category, and writes a COPY of the model with the "
        "new card. Calibration before and after (Brier, ECE with 95% CIs) is printed and recorded.",
    )
    add_data_arguments(p)
    add_copy_arguments(p)
    p.add_argument("--bins", type=a_whole_number(2), default=10, help="calibration bins for ECE (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from fracsight.evaluation.adapt import card_with_temperature, write_model_copy
    from fracsight.evaluation.calibration import (
        calibration_summary,
        fit_temperature,
        logits_from_probabilities,
    )

    date = args.date or dt.date.today().isoformat()
    model, card, loaded = site_cases(args, "calibrate")
    cases = loaded.cases
    previous_t = card.temperature
    logits = logits_from_probabilities(cases.probabilities, previous_t)
    fit = fit_temperature(logits, cases.labels, previous_temperature=previous_t)
    after = 1.0 / (1.0 + np.exp(-logits / fit.temperature))
    before_summary = calibration_summary(cases.probabilities, cases.labels, n_bins=args.bins)
    after_summary = calibration_summary(after, cases.labels, n_bins=args.bins)
    calibration = {
        "before": {"brier": before_summary.brier.to_dict(), "ece": before_summary.ece.to_dict()},
        "after": {"brier": after_summary.brier.to_dict(), "ece": after_summary.ece.to_dict()},
        "note": "measured on the cases the temperature was fitted on: confirm on independent data",
    }
    description = data_description(args, loaded)
    new_card = card_with_temperature(card, fit, description, date, calibration)
    onnx_path, card_path = write_model_copy(model, args.out, new_card)
    b, a = before_summary.ece, after_summary.ece
    print(
        f"fracsight calibrate: temperature {previous_t:g} -> {fit.temperature:.4g} on {fit.n} cases "
        f"({fit.n_positive} fractured) of {description}; "
        f"ECE {b.value:.4f} (95% CI {b.lower:.4f}-{b.upper:.4f}) -> "
        f"{a.value:.4f} (95% CI {a.lower:.4f}-{a.upper:.4f}), measured on the fitting cases. "
        f"Wrote {onnx_path}; the fit and the calibration before and after are recorded in {card_path}",
        file=sys.stderr,
    )
    return 0
