"""What a refusal or log line may say about a file's contents: never patient data.

A damaged DICOM header can make any element's value run over the following ones (a
stretched length), so a Modality or SOP Class UID may hold the patient's name and ID; and
library errors and warnings quote the bytes they tripped over. Messages therefore show a
header value only when it has the form its value representation allows (a code string of
capitals and digits, a UID of digits and dots, a number), and a library failure only by its
exception type (plus the operating system's words for an ``OSError``), never its text.
"""

from __future__ import annotations

import re

from pydicom.uid import UID

# Value representations whose allowed characters cannot spell a name with a '^' or lower case
# (PS3.5 6.2); the length limits of the standard keep a stretched value from passing.
_FORMS = {
    "CS": re.compile(r"[A-Z0-9 _]{0,16}"),
    "UI": re.compile(r"[0-9.]{1,64}"),
    "IS": re.compile(r" *[+-]?[0-9]{1,12} *"),
    "DS": re.compile(r" *[+-]?([0-9.]{1,16}([eE][+-]?[0-9]{1,3})?|nan|inf) *", re.IGNORECASE),
}
_NUMBERS = frozenset({"IS", "DS"})


def shown(value: object, vr: str) -> str:
    """``value`` for a message when it has the form of ``vr`` (text quoted, numbers bare), else a
    neutral description."""
    text = str(value) if not isinstance(value, (bytes, bytearray)) else None
    if text is not None and _FORMS[vr].fullmatch(text):
        return text.strip() if vr in _NUMBERS else f"'{text.strip()}'"
    size = len(value) if isinstance(value, (str, bytes, bytearray)) else None
    length = f" of {size} characters" if size is not None else ""
    return f"a malformed value{length} (not shown: it may hold other data)"


def is_code(value: object) -> bool:
    """True when ``value`` is a well-formed code string (CS): safe to keep in metadata or a message."""
    return isinstance(value, str) and bool(_FORMS["CS"].fullmatch(value))


def is_uid(value: object) -> bool:
    """True when ``value`` is a well-formed UID: digits and dots, at most 64 characters."""
    return isinstance(value, str) and bool(_FORMS["UI"].fullmatch(value))


def uid_name(value: object) -> str:
    """A UID for a message: its registered name, the UID itself when well formed, else a description."""
    text = str(value or "").strip().rstrip("\0")
    if not is_uid(text):
        return shown(value, "UI")
    return f"'{UID(text).name}'"


def failure(error: BaseException) -> str:
    """A library exception as a message may show it: the type, never the text (it may quote data)."""
    kind = type(error).__name__
    if kind == "error":  # struct.error, zlib.error: the module says which
        kind = f"{type(error).__module__}.error"
    if isinstance(error, OSError) and error.strerror:
        return f"{kind}: {error.strerror}"
    return kind
