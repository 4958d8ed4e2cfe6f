"""The ``fracsight`` command: one sub-command per capability, each in its own module.

Each module under ``fracsight.cli`` exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable taking the parsed namespace and returning an exit
code. Heavy imports (torch, scipy) happen inside those callables, so ``fracsight predict``
starts without them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from fracsight import __version__

# Sub-commands, in the order they appear in --help; each is the module of that name ("-" -> "_").
_COMMANDS = (
    "predict", "serve", "dicom-node", "train", "evaluate", "thresholds", "calibrate", "audit", "readers",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fracsight",
        description="Fracture detection on radiographs: an aid to the clinician, not a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"fracsight {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        module_name = f"fracsight.cli.{name.replace('-', '_')}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # pydicom logs every decoder it tries and fails with a traceback at ERROR; fracsight
        # already reports the refusal in one line per file.
        import pydicom.config  # noqa: F401 - pydicom sets its logger's level on import: import it first

        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of standard output went away (``fracsight predict DIR | head``): stop
        # quietly as Unix tools do, and keep Python from failing again when it flushes at exit.
        _silence_stdout()
        return 141
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Expected failures (bad input, missing optional dependency): one clear line, no traceback.
        print(f"fracsight {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # no real file descriptor (tests): nothing to silence
        pass


if __name__ == "__main__":
    sys.exit(main())
