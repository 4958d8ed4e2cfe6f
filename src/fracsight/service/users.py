"""Who may use the service: named accounts with a role, each with a token of its own.

A reader's verdicts and "read" marks carry the name of the account that signed in, so the
record says who decided, not what a client typed. Tokens are 32 random bytes, shown once when
made and kept only as their SHA-256 (a token is as unguessable as a key, so a slow password
hash would add nothing but latency on every request). The ``users`` table lives in the
service's own SQLite file beside the store's tables, made here with ``CREATE TABLE IF NOT
EXISTS`` on a connection of this module's own, so the store's schema does not need to know it.

The site token of :mod:`fracsight.service.auth` (for scripts and a DICOM-node-only set-up)
stays: it signs in as the built-in administrator :data:`SITE_TOKEN_USER`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from fracsight.service.connections import close_thread_connection, thread_connection

ADMIN = "admin"
READER = "reader"
ROLES = (ADMIN, READER)
# The name verdicts carry when the site token (api-token, $FRACSIGHT_API_TOKEN) signed in.
SITE_TOKEN_USER = "site-token"
NAME_MAX = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'reader')),
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""


class UserError(ValueError):
    """A user that cannot be made or changed as asked (the message says why; no token in it)."""


class UserExists(UserError):
    """The name is taken (by an active or a revoked account)."""


@dataclass(frozen=True)
class User:
    """An account as the service shows it: never its token or the token's hash."""

    name: str
    role: str
    created_at: str = ""
    revoked_at: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def to_api(self) -> dict[str, str | None]:
        return {"name": self.name, "role": self.role, "created_at": self.created_at,
                "revoked_at": self.revoked_at}  # fmt: skip


SITE_USER = User(SITE_TOKEN_USER, ADMIN)


def check_name(text: str) -> str:
    """``text`` as an account name, or UserError: 1 to 64 printable characters, not the site token's."""
    name = " ".join(str(text).split())
    if not name or len(name) > NAME_MAX or not name.isprintable() or "/" in name or "\\" in name:
        raise UserError(f"a user name has 1 to {NAME_MAX} printable characters, no slash")
    if name.casefold() == SITE_TOKEN_USER:
        raise UserError(f"{SITE_TOKEN_USER!r} is the site token's built-in administrator: choose another")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r}: valid are {', '.join(ROLES)}")
    return role


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class UserDirectory:
    """The ``users`` table in ``DIR/fracsight.db`` (or any SQLite file), one connection per thread."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    @classmethod
    def of_data_dir(cls, data_dir: Path) -> UserDirectory:
        """The directory kept in the service's store file (the store names it ``fracsight.db``)."""
        return cls(Path(data_dir) / "fracsight.db")

    def _db(self) -> sqlite3.Connection:
        return thread_connection(self._local, self.path)

    def close(self) -> None:
        close_thread_connection(self._local)

    def add(self, name: str, role: str) -> tuple[User, str]:
        """Make an account; returns it and its token (the only time the token exists in clear)."""
        name, role = check_name(name), check_role(role)
        token = secrets.token_urlsafe(32)
        user = User(name, role, _now())
        try:
            self._db().execute(
                "INSERT INTO users (name, role, token_sha256, created_at) VALUES (?, ?, ?, ?)",
                (user.name, user.role, token_hash(token), user.created_at),
            )
        except sqlite3.IntegrityError:
            raise UserExists(
                f"a user named {name!r} exists already (a revoked user keeps the name: verdicts carry it)"
            ) from None
        return user, token

    def reissue(self, name: str) -> str:
        """A new token for an account (the old one stops working; a revoked account is active again)."""
        token = secrets.token_urlsafe(32)
        changed = self._db().execute(
            "UPDATE users SET token_sha256 = ?, revoked_at = NULL WHERE name = ?", (token_hash(token), name)
        ).rowcount
        if not changed:
            raise UserError(f"no user named {name!r}")
        return token

    def revoke(self, name: str) -> User | None:
        """Stop an account's token from working (its verdicts stay); None when there is no such user."""
        self._db().execute(
            "UPDATE users SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (_now(), name)
        )
        return self.get(name)

    def get(self, name: str) -> User | None:
        row = self._db().execute(
            "SELECT name, role, created_at, revoked_at FROM users WHERE name = ?", (name,)
        ).fetchone()
        return User(**dict(row)) if row else None

    def list(self) -> list[User]:
        rows = self._db().execute("SELECT name, role, created_at, revoked_at FROM users ORDER BY name")
        return [User(**dict(r)) for r in rows]

    def authenticate(self, token: str) -> User | None:
        """The active account whose token this is; None for an unknown or revoked token."""
        if not token or len(token) > 512:
            return None
        row = self._db().execute(
            "SELECT name, role, created_at, revoked_at FROM users "
            "WHERE token_sha256 = ? AND revoked_at IS NULL",
            (token_hash(token),),
        ).fetchone()
        return User(**dict(row)) if row else None
