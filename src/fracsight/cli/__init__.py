"""The ``fracsight`` command: one sub-command per capability, each in its own module.

Each module under ``fracsight.cli`` exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable taking the parsed namespace and returning an exit
code. Heavy imports (torch, scipy) happen inside those callables, so ``fracsight predict``
starts without them.

A command checks before it works: option values are checked as they are parsed
(:mod:`fracsight.cli.options`), what depends on the data (a column for ``--by``, training images
in the cases) before any model runs. Every refusal is one line on standard error with exit code
2; no traceback reaches a user (an unexpected failure says so in one line, exit code 3, and
``-v`` shows its traceback).

Owns the command line only: it imports the packages below it and nothing imports it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from fracsight._version import __version__
from fracsight.cli.options import Parser

# Sub-commands, in the order they appear in --help; each is the module of that name ("-" -> "_").
_COMMANDS = (
    "predict", "batch", "serve", "dicom-node", "train", "evaluate", "thresholds", "calibrate", "audit",
    "readers", "users", "quantise",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # said by the sub-command's parser, with its name and help
            commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
            commands.get(getattr(args, "command", None), parser).error(
                f"unrecognized arguments: {' '.join(extras)}"
            )
    except SystemExit as stop:  # --help, --version, or a bad option said in one line
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
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
    except (ValueError, OSError, RuntimeError) as exc:
        # Expected failures (bad input, unreadable files, missing optional dependency): one line.
        print(f"fracsight {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.verbose:
            raise
        print(
            f"fracsight {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 3


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # no real file descriptor (tests): nothing to silence
        pass


if __name__ == "__main__":
    sys.exit(main())
