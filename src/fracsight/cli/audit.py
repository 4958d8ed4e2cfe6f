"""``fracsight audit``: find what would make an evaluation on a dataset dishonest, before training on it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_EPILOG = """\
exit codes:
  0  the audit ran (defects, if any, are in the report)
  1  --fail-on was given and a defect of one of those kinds was found
  2  the dataset, manifest or split file could not be read

kinds for --fail-on (comma-separated, or 'any'):
  {kinds}

A CI pipeline guarding a frozen split would use e.g.
  fracsight audit data/ --split-file splits.csv --fail-on cross_split_duplicates,conflicting_labels
"""


def _kinds() -> list[str]:
    from fracsight.data.audit import DefectKind

    return [k.value for k in DefectKind]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="find duplicates, truncated files and label/box conflicts in a dataset",
        description="Audit a dataset for what breaks honest evaluation: exact and near-duplicate "
        "images (within and across splits, and with conflicting labels), truncated or unreadable "
        "files, labels contradicting box annotations, and the class balance per region. DATASET is "
        "a FracAtlas folder or a manifest CSV with columns path,label[,region][,boxes] (boxes: JSON "
        "list of [x0,y0,x1,y1] in image pixels; paths relative to the manifest).",
        epilog=_EPILOG.format(kinds=", ".join(_kinds())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help="FracAtlas folder or manifest CSV")
    p.add_argument("--split-file", help="CSV with columns id,split (id: image id, file name or path)")
    p.add_argument("--report", help="write audit.html and audit.json into this folder")
    p.add_argument("--json", dest="json_out", help="write the full JSON report to this file ('-' for stdout)")
    p.add_argument("--fail-on", help="exit 1 if a defect of these kinds is found (comma-separated, or 'any')")
    p.add_argument("--max-distance", type=float, help="near-duplicate dHash distance (of 256 bits)")
    p.add_argument("--min-correlation", type=float, help="near-duplicate thumbnail correlation")
    p.add_argument("--workers", type=int, help="processes decoding images (default: up to 2)")
    p.set_defaults(func=run)


def _fail_kinds(text: str | None) -> list:
    from fracsight.data.audit import DefectKind

    if not text:
        return []
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["any"]:
        return list(DefectKind)
    unknown = [n for n in names if n not in {k.value for k in DefectKind}]
    if unknown:
        raise ValueError(f"--fail-on: unknown kind(s) {unknown}; use 'any' or some of {_kinds()}")
    return [DefectKind(n) for n in names]


def run(args: argparse.Namespace) -> int:
    from fracsight.data.audit import audit, render_html, summary_text
    from fracsight.data.duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION, check_thresholds

    # Check the arguments before the slow part (decoding every image).
    fail_kinds = _fail_kinds(args.fail_on)
    max_distance = DEFAULT_MAX_DISTANCE if args.max_distance is None else args.max_distance
    min_correlation = DEFAULT_MIN_CORRELATION if args.min_correlation is None else args.min_correlation
    check_thresholds(max_distance, min_correlation)
    report = audit(
        args.dataset,
        split_file=args.split_file,
        max_distance=max_distance,
        min_correlation=min_correlation,
        workers=args.workers,
    )
    document = json.dumps(report.to_json(), indent=1)
    if args.json_out == "-":
        sys.stdout.write(document + "\n")
    else:
        sys.stdout.write(summary_text(report))
        if args.json_out:
            Path(args.json_out).write_text(document + "\n")
    if args.report:
        folder = Path(args.report)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "audit.json").write_text(document + "\n")
        (folder / "audit.html").write_text(render_html(report), encoding="utf-8")
    return 1 if fail_kinds and report.found(fail_kinds) else 0
