"""The site's API token, who a request's bearer token signs in as, and the data folder kept owner-only.

The site token is given by the site, or made once at first start and kept readable by its owner
only; it signs in as the built-in administrator ``site-token`` (scripts, a DICOM-node-only
set-up). Every other token belongs to a named account (:mod:`fracsight.service.users`).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from fracsight.service.users import SITE_USER, User, UserDirectory

TOKEN_FILE = "api-token"
ENV_TOKEN = "FRACSIGHT_API_TOKEN"
# What the service keeps in its data folder: the store (with SQLite's companions), the token,
# originals, display pixels, uploads being received, DICOM results.
_SERVICE_FILES = ("fracsight.db", "fracsight.db-wal", "fracsight.db-shm", "fracsight.db-journal", TOKEN_FILE)
_SERVICE_FOLDERS = ("images", "display", "incoming", "results")


def load_token(data_dir: Path, given: str | None = None) -> tuple[str, bool]:
    """(token, created): ``given``, else ``$FRACSIGHT_API_TOKEN``, else ``DIR/api-token``, made now
    (mode 0600) when missing; ``created`` is True only then, so the caller prints it once."""
    token = given or os.environ.get(ENV_TOKEN)
    if token:
        if len(token) < 16:
            raise ValueError(f"{ENV_TOKEN} (or --token) must be at least 16 characters long")
        return token, False
    path = Path(data_dir) / TOKEN_FILE
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"{path} is readable by others than its owner: chmod 600 it")
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other header."""
    if not header or not header.startswith("Bearer "):
        return None
    return header[len("Bearer ") :].strip() or None


def token_matches(header: str | None, token: str) -> bool:
    """True for ``Bearer <token>``; compared in constant time."""
    given = bearer(header)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def identify(header: str | None, site_token: str, users: UserDirectory | None) -> User | None:
    """Who ``Authorization: Bearer <token>`` signs in as: the site token's built-in administrator,
    an active account, or None (no token, an unknown one, or a revoked account's)."""
    if token_matches(header, site_token):
        return SITE_USER
    given = bearer(header)
    if given is None or users is None:
        return None
    return users.authenticate(given)


def owner_only(data_dir: Path) -> None:
    """Keep the data folder readable by the service's user alone: from now on this process makes
    files 0600 and folders 0700 (umask 077: SQLite's -wal and -shm, display pixels, originals,
    DICOM results), and what an older run left more open is tightened now. Holds patient data."""
    os.umask(0o077)
    root = Path(data_dir)
    _tighten(root, 0o700)
    for name in _SERVICE_FILES:
        _tighten(root / name, 0o600)
    for top in _SERVICE_FOLDERS:  # only what the service made: DIR may hold a site's other files
        if not (root / top).is_dir():
            continue
        _tighten(root / top, 0o700)
        for folder, dirs, files in os.walk(root / top):
            for name in dirs:
                _tighten(Path(folder) / name, 0o700)
            for name in files:
                _tighten(Path(folder) / name, 0o600)


def _tighten(path: Path, mode: int) -> None:
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) & ~mode == 0:
            return
        path.chmod(stat.S_IMODE(info.st_mode) & mode)
    except FileNotFoundError:  # gone meanwhile (a temporary file)
        pass
