"""The service's log lines: timestamped, as text or JSON lines, to standard error or a rotated file.

A hospital's log collector wants one event per line with its time and level; JSON lines carry
the same fields under fixed names. The DICOM libraries stay at :attr:`LogSettings.network_level`
(warning by default): pynetdicom logs every message at info and whole data sets, patient data
included, at debug, and pydicom warns about a file's header in words that may quote it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import sys

from fracsight.service.settings import LogSettings

# The network libraries, kept at LogSettings.network_level; pydicom's lines and Python warnings
# (pydicom's "invalid value ..." quote header values) are dropped unless it is debug.
NETWORK_LOGGERS = ("pynetdicom", "highdicom")
QUOTING_LOGGERS = ("pydicom", "py.warnings")
_HANDLER_NAME = "fracsight-service"


def _timestamp(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``2026-12-07T15:00:00.000+00:00 INFO fracsight.service.dicom_node: message``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            # the exception's type only: a library's message may quote a header (patient data)
            line += f" ({record.exc_info[0].__name__})" if record.exc_info[0] else ""
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0]:
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each line (not the one of when it was made)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _replaced(handler: logging.Handler) -> bool:
    """A handler this one takes the place of: ``logging.basicConfig``'s, or one made here before
    (others, such as a test runner's, stay)."""
    return handler.get_name() == _HANDLER_NAME or type(handler) is logging.StreamHandler


def configure_logging(settings: LogSettings, stream=None) -> logging.Handler:
    """Send the root logger's lines where ``settings`` says, in place of ``logging.basicConfig``'s
    handler (set by the CLI); returns the handler (tests read or close it)."""
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            settings.file, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if _replaced(old):
            root.removeHandler(old)
            if old.get_name() == _HANDLER_NAME:
                old.close()
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    import pydicom.config  # noqa: F401 - pydicom sets its logger's level on import: import it first

    for name in NETWORK_LOGGERS:
        logging.getLogger(name).setLevel(settings.network_level.upper())
    quoting = logging.DEBUG if settings.network_level == "debug" else logging.CRITICAL
    for name in QUOTING_LOGGERS:
        logging.getLogger(name).setLevel(quoting)
    logging.captureWarnings(True)  # Python warnings become lines of "py.warnings", dropped above
    return handler
