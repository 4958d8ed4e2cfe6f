"""The site's configuration file (TOML): every setting of ``dicom-node`` and ``serve`` in one place.

:func:`load` reads a file and checks each value against :data:`SCHEMA` at start, so a typo stops
the service with the key, the value and the rule ("[dicom] port = 70000: expected a whole number
in 0..65535") rather than at the first association; keys it does not know are refused too (a
misspelt ``retention`` key must not silently keep images for ever). It returns plain values by
section; the command line turns them into :mod:`fracsight.service.settings`' dataclasses, the one
definition of the settings, after the flags given, which win over the file. ``deploy/fracsight.toml``
is the documented example.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the tomli backport (a dependency there only)
    import tomli as tomllib

from fracsight.inference import PRECISIONS
from fracsight.service.settings import LOG_FORMATS, LOG_LEVELS, Destination, Peer, check_aet


class ConfigError(ValueError):
    """A configuration file that cannot be used: its message names the file, the key and the rule."""


@dataclass(frozen=True)
class Rule:
    """How one key's value is checked: ``check`` returns the value to use or raises ValueError;
    ``words`` says what is expected, for the error."""

    words: str
    check: Callable[[Any], Any]


def _whole(low: int, high: int | None = None) -> Rule:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    return Rule(f"a whole number in {low}..{high}" if high is not None else f"a whole number >= {low}", check)


def _positive() -> Rule:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError
        return float(value)

    return Rule("a number > 0", check)


def _text() -> Rule:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError
        return value.strip()

    return Rule("a non-empty string", check)


def _path() -> Rule:
    def check(value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise ValueError
        return Path(value).expanduser()

    return Rule("a path (a non-empty string)", check)


def _flag() -> Rule:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError
        return value

    return Rule("true or false", check)


def _one_of(choices: tuple[str, ...]) -> Rule:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError
        return value

    return Rule("one of " + ", ".join(f'"{c}"' for c in choices), check)


def _aet() -> Rule:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError
        return check_aet(value)

    return Rule("an AE title: 1 to 16 printable ASCII characters, no backslash", check)


def _peers() -> Rule:
    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ValueError
        for peer in value:
            Peer.parse(peer)
        return [v.strip() for v in value]

    return Rule('a list of "AET" or "AET@IP" strings, e.g. ["MODALITY", "PACS@10.0.0.5"]', check)


def _destination() -> Rule:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError
        Destination.parse(value)
        return value.strip()

    return Rule('"AET@HOST:PORT", e.g. "PACS@10.0.0.5:104"', check)


# Every key the file may hold, by section ("" is the top level).
SCHEMA: dict[str, dict[str, Rule]] = {
    "": {
        "data": _path(),
        "model": _path(),
        "precision": _one_of(PRECISIONS),
        "analysis_threads": _whole(1),
        "model_threads": _whole(1),
        "decoder_processes": _whole(1),
    },
    "web": {
        "host": _text(),
        "port": _whole(0, 65535),
        "tls_cert": _path(),
        "tls_key": _path(),
        "max_upload_mb": _whole(1),
    },
    "dicom": {
        "port": _whole(0, 65535),
        "host": _text(),
        "aet": _aet(),
        "allow": _peers(),
        "forward": _destination(),
        "tls_cert": _path(),
        "tls_key": _path(),
        "tls_ca": _path(),
        "forward_tls": _flag(),
        "retry_max_s": _positive(),
        "min_free_mb": _whole(0),
        "acse_timeout_s": _positive(),
        "dimse_timeout_s": _positive(),
        "network_timeout_s": _positive(),
        "max_associations": _whole(1, 1000),
        "max_pdu_bytes": _whole(4096, 2**24),
        "study_quiet_s": _positive(),
    },
    "retention": {
        "keep_images_days": _positive(),
        "disk_warning_mb": _whole(0),
    },
    "logging": {
        "format": _one_of(LOG_FORMATS),
        "level": _one_of(LOG_LEVELS),
        "file": _path(),
        "max_mb": _whole(1),
        "backups": _whole(0),
        "network_level": _one_of(LOG_LEVELS),
    },
    "health": {
        "host": _text(),
        "port": _whole(0, 65535),
    },
}


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 80 else text[:77] + "..."


def check(raw: dict[str, Any], source: str = "configuration") -> dict[str, dict[str, Any]]:
    """The checked values of a parsed file, by section; ConfigError on the first fault, naming it."""
    values: dict[str, dict[str, Any]] = {section: {} for section in SCHEMA}
    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in SCHEMA or key == "":
                known = ", ".join(f"[{s}]" for s in SCHEMA if s)
                raise ConfigError(f"{source}: unknown section [{key}] (known: {known})")
            items = [(key, k, v) for k, v in value.items()]
        else:
            items = [("", key, value)]
        for section, name, item in items:
            where = f"[{section}] {name}" if section else name
            rules = SCHEMA[section]
            if name not in rules:
                raise ConfigError(
                    f"{source}: unknown key {where} (known{' in [' + section + ']' if section else ''}: "
                    f"{', '.join(rules)})"
                )
            rule = rules[name]
            try:
                values[section][name] = rule.check(item)
            except ValueError as exc:
                detail = f" ({exc})" if str(exc) else ""
                raise ConfigError(
                    f"{source}: {where} = {_shown(item)}: expected {rule.words}{detail}"
                ) from None
    return values


def load(path: Path) -> dict[str, dict[str, Any]]:
    """Read and check ``path``; relative paths in it are taken from the file's folder."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path}: not valid TOML ({exc})") from None
    values = check(raw, str(path))
    for section in values.values():
        for key, value in section.items():
            if isinstance(value, Path) and not value.is_absolute():
                section[key] = path.parent / value
    return values
