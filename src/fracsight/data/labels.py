"""The one rule for reading a fracture label from CSV text, shared by every command.

``fracsight train``, ``evaluate``, ``audit`` and the reader-study loader all read "is this
radiograph fractured?" from a CSV cell. They use this module so that a file one command
accepts, every command accepts, and a typo is refused everywhere with the same list of
spellings. Pure Python on purpose: it is imported where torch and numpy are not wanted.
"""

from __future__ import annotations

__all__ = ["ACCEPTED_LABELS", "FRACTURED", "NOT_FRACTURED", "REGIONS", "parse_label"]

# The body regions FracAtlas flags, in the order of the model's region head.
REGIONS = ("hand", "leg", "hip", "shoulder")

# Lower-case spellings; "fracture"/"no_fracture" are kept because ``audit`` accepted them.
FRACTURED = ("1", "1.0", "true", "yes", "fractured", "fracture", "positive")
NOT_FRACTURED = ("0", "0.0", "false", "no", "non_fractured", "not_fractured", "no_fracture", "negative")

ACCEPTED_LABELS = f"fractured: {', '.join(FRACTURED)}; not fractured: {', '.join(NOT_FRACTURED)} (any case)"

_VALUES = {**dict.fromkeys(FRACTURED, 1), **dict.fromkeys(NOT_FRACTURED, 0)}


def parse_label(text: str) -> int | None:
    """1 (fractured), 0 (not) or None when ``text`` is no accepted spelling (empty included).

    None rather than an exception, so callers can collect every bad line of a file and
    word the error with their own file, column and line; they add :data:`ACCEPTED_LABELS`.
    """
    return _VALUES.get(text.strip().lower())
