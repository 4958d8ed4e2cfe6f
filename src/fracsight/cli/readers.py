"""``fracsight readers``: analyse a multi-reader multi-case study, or plan one (``--plan``)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fracsight.cli.options import a_folder_to_write, a_model_card, a_number, an_existing_file, one_of

if TYPE_CHECKING:
    from fracsight.reader_study.data import ReadStudy
    from fracsight.reader_study.fom import FigureOfMerit

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "readers",
        help="reader study: readers with / without AI and the AI alone (MRMC, Obuchowski-Rockette)",
        description="Per-reader and reader-averaged sensitivity, specificity and ROC AUC per modality, "
        "the AI alone on the same cases, and Obuchowski-Rockette tests (Hillis df; readers and cases "
        "random, plus fixed-reader and fixed-case variants). Writes readers.json and report.html. With "
        "--plan: how many readers and cases a study needs for a given AUC difference and power.",
    )
    p.add_argument(
        "reads",
        nargs="?",
        type=an_existing_file("reads CSV"),
        help="reads CSV: case_id, truth, reader, modality, rating and/or call "
        "[, region]; with --plan, an optional pilot study",
    )
    p.add_argument(
        "--report",
        type=a_folder_to_write,
        help="folder for readers.json and report.html (required unless --plan)",
    )
    p.add_argument(
        "--ai",
        type=an_existing_file("AI predictions"),
        help="fracsight predictions CSV (case_id or path, probability): the AI-alone arm",
    )
    p.add_argument(
        "--clicks",
        type=an_existing_file("clicks CSV"),
        help="clicks CSV of a study run in fracsight serve: reading times and localisation added",
    )
    p.add_argument(
        "--ai-threshold",
        type=a_number(0, 1),
        help="AI operating point: call fracture when probability >= this (default: the model card's)",
    )
    p.add_argument(
        "--ai-card",
        type=a_model_card,
        help="model card JSON giving the AI's thresholds (default: the shipped model's)",
    )
    p.add_argument(
        "--cutoff", type=a_number(), help="binary call = rating >= CUTOFF (instead of a call column)"
    )
    p.add_argument(
        "--fom",
        type=_foms,
        help="comma-separated figures of merit: auc, sensitivity, specificity "
        "(default: all the data supports)",
    )
    p.add_argument(
        "--covariance",
        choices=["jackknife", "delong"],
        default="jackknife",
        help="case-sampling covariance estimate (default: jackknife)",
    )
    p.add_argument(
        "--compare",
        action="append",
        type=_pair,
        metavar="A:B",
        help="test modality A minus modality B (repeatable; default: every pair, first-seen order)",
    )
    p.add_argument(
        "--non-inferiority",
        action="append",
        type=_margin,
        metavar="FOM=MARGIN",
        help="non-inferiority margin, e.g. specificity=0.03 (repeatable)",
    )
    p.add_argument(
        "--alpha",
        type=a_number(0, 1, open_low=True, open_high=True),
        default=0.05,
        help="significance level, in (0, 1) (default: 0.05)",
    )
    p.add_argument(
        "--incomplete",
        choices=["error", "drop-readers", "drop-cases"],
        default="error",
        help="when some reader lacks some cases or modalities (default: error, saying what is missing)",
    )
    p.add_argument("--no-regions", action="store_true", help="skip the per-region breakdown")
    plan = p.add_argument_group("planning (--plan)")
    plan.add_argument(
        "--plan", action="store_true", help="estimate readers and cases needed instead of analysing"
    )
    plan.add_argument(
        "--effect",
        type=a_number(0, 1, open_low=True, open_high=True),
        default=0.05,
        help="difference in the figure of merit to detect (AUC unless --fom; default: 0.05)",
    )
    plan.add_argument(
        "--power",
        type=a_number(0, 1, open_low=True, open_high=True),
        default=0.8,
        help="target power, in (0, 1) (default: 0.8)",
    )
    plan.add_argument(
        "--readers",
        type=_reader_range,
        default="3-15",
        help="reader counts to consider, e.g. 4-12 (default: 3-15)",
    )
    plan.add_argument(
        "--analysis",
        choices=["rrrc", "frrc", "rrfc"],
        default="rrrc",
        help="random readers & cases (default), fixed readers, or fixed cases",
    )
    p.set_defaults(func=run)


def _foms(text: str) -> list:
    """An argparse type: figures of merit, comma-separated."""
    from fracsight.reader_study.fom import FigureOfMerit

    valid = {f.value: f for f in FigureOfMerit}
    return [valid[name] for name in one_of(valid, "figure(s) of merit", separator=",")(text)]


def _pair(text: str) -> tuple[str, str]:
    """An argparse type: A:B, modality A minus modality B."""
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"{text!r} is not A:B (modality A minus modality B)")
    return a, b


def _margin(text: str) -> tuple:
    """An argparse type: FOM=MARGIN, the margin in (0, 1)."""
    from fracsight.reader_study.fom import FigureOfMerit

    name, sep, value = text.partition("=")
    try:
        fom, margin = FigureOfMerit(name.strip().lower()), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FOM=MARGIN, e.g. specificity=0.03") from None
    if not sep or not 0 < margin < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the margin must be a number in (0, 1)")
    return fom, margin


def _reader_range(text: str) -> range:
    """An argparse type: a reader count or a range such as 4-12, at least 2."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count or a range such as 4-12") from None
    if first < 2 or last < first:
        raise argparse.ArgumentTypeError(f"{text!r}: need 2 <= first <= last")
    return range(first, last + 1)


def _check_pilot_fom(study: ReadStudy, fom: FigureOfMerit) -> None:
    """The pilot must hold what the figure of merit is computed from (ratings for AUC, else calls)."""
    from fracsight.reader_study.analysis import available_foms
    from fracsight.reader_study.errors import NotEstimable

    if fom not in available_foms(study):
        need = "ratings" if fom.value == "auc" else "binary calls (a call column, or --cutoff on ratings)"
        raise NotEstimable(f"{study.source}: a {fom.value} pilot needs {need}, which the file does not have")


def run(args: argparse.Namespace) -> int:
    return _plan(args) if args.plan else _analyse(args)


def _load(args: argparse.Namespace):
    from fracsight.reader_study.data import IncompletePolicy, load_reads

    return load_reads(args.reads, cutoff=args.cutoff, incomplete=IncompletePolicy(args.incomplete))


def _analyse(args: argparse.Namespace) -> int:
    from fracsight.reader_study import analyse_study, load_ai_predictions
    from fracsight.reader_study.fom import CovarianceMethod
    from fracsight.reader_study.html_report import write_html
    from fracsight.reader_study.report import write_json

    if not args.reads:
        raise ValueError("give the reads CSV (or --plan to plan a study)")
    if not args.report:
        raise ValueError("give --report DIR: the folder for readers.json and report.html")
    study = _load(args)
    ai = None
    if args.ai:
        ai = load_ai_predictions(args.ai, study.case_ids, threshold=args.ai_threshold, card=args.ai_card)
    analysis = analyse_study(
        study,
        ai=ai,
        foms=args.fom,
        covariance=CovarianceMethod(args.covariance),
        comparisons=args.compare,
        alpha=args.alpha,
        margins=dict(args.non_inferiority or []),
        by_region=not args.no_regions,
    )
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    reading = None
    if args.clicks:
        from fracsight.reader_study.clicks import summarise_clicks

        reading = summarise_clicks(args.clicks)
    document = write_json(analysis, out / "readers.json")
    write_html(analysis, out / "report.html", reading, Path(args.clicks).name if args.clicks else "")
    for line in document["summary"]:
        print(line)
    if reading is not None:
        from fracsight.reader_study.clicks import describe

        document["reading"] = reading
        (out / "readers.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        for line in describe(reading):
            print(line)
    print(f"wrote {out / 'readers.json'} and {out / 'report.html'}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from fracsight.reader_study.analysis import available_foms
    from fracsight.reader_study.fom import CovarianceMethod, FigureOfMerit, estimate
    from fracsight.reader_study.or_analysis import Generalisation, components
    from fracsight.reader_study.power import VAN_DYKE_PILOT, pilot_from_components, plan_study
    from fracsight.reader_study.report import to_jsonable

    if args.reads:
        study = _load(args)
        if args.compare:
            study = study.select_modalities(args.compare[0])
        foms = args.fom or [
            FigureOfMerit.AUC if FigureOfMerit.AUC in available_foms(study) else FigureOfMerit.SENSITIVITY
        ]
        fom = foms[0]
        _check_pilot_fom(study, fom)
        scores = study.ratings if fom is FigureOfMerit.AUC else study.calls
        n_m, n_r = len(study.modalities), len(study.readers)
        est = estimate(
            scores.reshape(n_m * n_r, study.n_cases), study.truth, fom, CovarianceMethod(args.covariance)
        )
        comp = components(est.values.reshape(n_m, n_r), est.covariance)
        pilot = pilot_from_components(comp, study.n_cases, f"{study.source} ({fom.value}, {args.covariance})")
    else:
        pilot = VAN_DYKE_PILOT
    generalisation = {"rrrc": Generalisation.RRRC, "frrc": Generalisation.FRRC, "rrfc": Generalisation.RRFC}[
        args.analysis
    ]
    plan = plan_study(
        pilot,
        args.effect,
        target=args.power,
        alpha=args.alpha,
        readers=args.readers,
        generalisation=generalisation,
    )
    print(f"Pilot: {pilot.source}")
    print(
        f"Effect {args.effect:g}, alpha {args.alpha:g}, target power {args.power:g}, {generalisation.value}; "
        "method of Hillis, Obuchowski & Berbaum (2011)"
    )
    print("readers  cases  power")
    for row in plan:
        print(f"{row.readers:7d}  {row.cases:5d}  {row.power:.3f}")
    if not plan:
        print("No reader count in the range reaches the target power with up to 5000 cases.")
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        document = to_jsonable(
            {
                "pilot": pilot,
                "effect": args.effect,
                "alpha": args.alpha,
                "target_power": args.power,
                "analysis": generalisation.value,
                "method": "Hillis, Obuchowski & Berbaum, Acad Radiol 18:129-142 (2011): non-central F",
                "plan": plan,
            }
        )
        (out / "plan.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        print(f"wrote {out / 'plan.json'}")
    return 0
