"""Option types that check a value when the command line is parsed, before any work starts.

Each is an argparse ``type``: it returns the parsed value or raises ``ArgumentTypeError`` with the
accepted range, and argparse adds the option's name ("argument --bins: 0 is not a whole number
of at least 2"). :class:`Parser` prints that as one line and exits with code 2, so a typo costs
a second, not a model run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

__all__ = [
    "Parser",
    "add_precision_option",
    "add_service_cpu_options",
    "a_date",
    "an_existing_file",
    "an_existing_path",
    "a_folder_to_write",
    "a_file_to_write",
    "a_model",
    "a_model_card",
    "a_name",
    "a_new_model",
    "a_number",
    "a_precision",
    "a_port",
    "a_whole_number",
    "at_least_one",
    "one_of",
]


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: the command, the option, the rule."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_service_cpu_options(p: argparse.ArgumentParser, rest: str) -> None:
    """``--analysis-threads`` and the two knobs it is the default of, for the services (``serve``,
    ``dicom-node``); ``rest`` says what the other cores do."""
    p.add_argument(
        "--analysis-threads",
        type=at_least_one,
        default=1,
        metavar="N",
        help=f"CPU threads for analysis: the default of --model-threads and --decoder-processes "
        f"(default 1: {rest})",
    )
    p.add_argument(
        "--model-threads",
        type=at_least_one,
        metavar="N",
        help="ONNX Runtime threads (default: --analysis-threads)",
    )
    p.add_argument(
        "--decoder-processes",
        type=at_least_one,
        metavar="N",
        help="decoder worker processes, images read at once (default: --analysis-threads)",
    )


def a_precision(text: str) -> str:
    """Which copy of the model runs: one of :data:`fracsight.inference.PRECISIONS` (imported here,
    when the option is given, so that the command line itself does not load the inference code)."""
    from fracsight.inference import PRECISIONS

    value = text.strip().lower()
    if value not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a precision; choose from {', '.join(PRECISIONS)}")
    return value


def add_precision_option(p: argparse.ArgumentParser) -> None:
    """``--precision``, for the commands that run a model beside ``predict`` (``serve``,
    ``dicom-node``, ``batch``): the float model or its 8-bit copy, found by
    :func:`fracsight.inference.model_for_precision` when the model is loaded, at start."""
    p.add_argument(
        "--precision",
        type=a_precision,
        metavar="float32|int8",
        help="float32: the model itself; int8: its 8-bit copy NAME.int8.onnx beside it (fracsight "
        "quantise), refused at start when that file or its card is missing (default: float32, see "
        "training/README.md, 8-bit model)",
    )


def _rule(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    """'a number in (0, 1]', 'a number > 0', 'a number': the words for a range."""
    if low is not None and high is not None:
        return f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low is not None:
        return f"a number {'>' if open_low else '>='} {low:g}"
    if high is not None:
        return f"a number {'<' if open_high else '<='} {high:g}"
    return "a number"


def a_number(
    low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False
) -> Callable[[str], float]:
    """A finite number in [low, high]; ``open_low`` / ``open_high`` leave an end out."""
    rule = _rule(low, high, open_low, open_high)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        too_low = low is not None and (value <= low if open_low else value < low)
        too_high = high is not None and (value >= high if open_high else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return value

    return parse


def a_whole_number(low: int, high: int | None = None, multiple_of: int = 1) -> Callable[[str], int]:
    """A whole number of at least ``low`` (at most ``high``), a multiple of ``multiple_of``."""
    rule = f"a whole number of at least {low}" + (f" and at most {high}" if high is not None else "")
    if multiple_of > 1:
        rule = f"a multiple of {multiple_of} of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}") from None
        if value < low or (high is not None and value > high) or value % multiple_of:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return value

    return parse


def a_port(text: str) -> int:
    """A TCP port to listen on: 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1..65535)")
    return value


def at_least_one(text: str) -> int:
    """A count of at least 1 (threads, processes, megabytes): 0 or less has no meaning for one."""
    return _AT_LEAST_ONE(text)


_AT_LEAST_ONE = a_whole_number(1)


def an_existing_file(what: str) -> Callable[[str], str]:
    """The path of an existing file (a folder is refused: this option names one file)."""

    def parse(text: str) -> str:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a folder; give the {what} file")
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{what} {text!r} does not exist")
        return text

    return parse


def an_existing_path(what: str) -> Callable[[str], str]:
    """The path of an existing file or folder."""

    def parse(text: str) -> str:
        if not Path(text).exists():
            raise argparse.ArgumentTypeError(f"{what} {text!r} does not exist")
        return text

    return parse


def a_folder_to_write(text: str) -> str:
    """A folder to write into: new, or an existing folder (not a file)."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder to write into")
    return text


def a_file_to_write(text: str) -> str:
    """A file to write: '-' (standard output), or a path that is not a folder."""
    if text != "-" and Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name")
    return text


def a_model(text: str) -> str:
    """An ONNX model with a readable, valid card beside it (checked now: a broken card names itself)."""
    from fracsight.model_card import card_path

    path = Path(text)
    if path.suffix.lower() != ".onnx":
        raise argparse.ArgumentTypeError(f"{text!r} is not an ONNX model file (NAME.onnx)")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"model {text!r} does not exist")
    a_model_card(str(card_path(path)))
    return text


def a_model_card(text: str) -> str:
    """A model card file (NAME.card.json), read and checked now."""
    from fracsight.model_card import ModelCard

    try:
        ModelCard.read(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def a_new_model(text: str) -> str:
    """The path of a model copy to write: NAME.onnx, not a folder."""
    if Path(text).suffix.lower() != ".onnx" or Path(text).is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a new model file ending in .onnx (its card goes beside it)"
        )
    return text


def a_date(text: str) -> str:
    """A date written YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in the form YYYY-MM-DD") from None


def a_name(text: str) -> str:
    """A file name stem: letters, digits, '.', '-' and '_' only."""
    if not text or not all(c.isalnum() or c in "._-" for c in text) or text.startswith("."):
        raise argparse.ArgumentTypeError(f"{text!r} is not a file name (letters, digits, '.', '-', '_')")
    return text


def one_of(values: Iterable[str], what: str, *, separator: str | None = None) -> Callable[[str], object]:
    """One of ``values`` (any case), or with ``separator`` a list of them ('any' is not special)."""
    allowed = list(values)

    def parse(text: str) -> object:
        names = [t.strip().lower() for t in text.split(separator)] if separator else [text.strip().lower()]
        names = [n for n in names if n]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            given = ", ".join(map(repr, unknown)) or repr(text)
            raise argparse.ArgumentTypeError(f"unknown {what} {given}; choose from {', '.join(allowed)}")
        return names if separator else names[0]

    return parse
