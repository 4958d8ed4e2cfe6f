"""The API token: given by the site, or made once at first start and kept readable by its owner only."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "api-token"
ENV_TOKEN = "FRACSIGHT_API_TOKEN"


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


def token_matches(header: str | None, token: str) -> bool:
    """True for ``Bearer <token>``; compared in constant time."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), token.encode())
