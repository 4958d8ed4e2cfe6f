"""``fracsight users``: the service's accounts (administrators and readers), each with its own token.

The token is printed once, on standard output (so a script can take it), and kept only hashed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "users",
        help="add, list and revoke the web service's users (administrators and readers)",
        description="Accounts of `fracsight serve` kept in DIR (the folder given to serve --data). Each "
        "user signs in with a token of their own, printed once by `add` and `token`; a reader's verdicts "
        "carry their name. Revoked users keep their name (their verdicts carry it); their token is refused. "
        "The site token (DIR/api-token or $FRACSIGHT_API_TOKEN) stays, as the administrator 'site-token'.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="make a user and print their token (once)")
    add.add_argument("name", metavar="NAME", help="the name verdicts carry (1 to 64 characters)")
    add.add_argument("--role", choices=("reader", "admin"), default="reader", help="default: reader")
    listing = actions.add_parser("list", help="list the users (names, roles, when made or revoked)")
    revoke = actions.add_parser("revoke", help="refuse a user's token from now on")
    revoke.add_argument("name", metavar="NAME")
    token = actions.add_parser("token", help="print a new token for a user (the old one stops working)")
    token.add_argument("name", metavar="NAME")
    for parser in (add, listing, revoke, token):
        parser.add_argument(
            "--data", required=True, type=Path, metavar="DIR", help="the service's data folder (serve --data)"
        )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fracsight.service.auth import owner_only
    from fracsight.service.users import UserDirectory, UserError

    if not (args.data / "fracsight.db").exists() and args.action != "add":
        raise ValueError(f"no service data in {args.data}: give the folder of `fracsight serve --data`")
    args.data.mkdir(parents=True, exist_ok=True)
    owner_only(args.data)  # the database holds patient data: made or kept owner-only
    users = UserDirectory.of_data_dir(args.data)
    try:
        if args.action == "add":
            user, secret = users.add(args.name, args.role)
            print(f"user {user.name!r} ({user.role}) added; their token, shown once:", file=sys.stderr)
            print(secret)
        elif args.action == "token":
            secret = users.reissue(args.name)
            print(f"new token for {args.name!r} (the old one no longer works), shown once:", file=sys.stderr)
            print(secret)
        elif args.action == "revoke":
            user = users.revoke(args.name)
            if user is None:
                raise ValueError(f"no user named {args.name!r}")
            print(f"user {user.name!r} revoked at {user.revoked_at}: their token is refused", file=sys.stderr)
        else:
            for user in users.list():
                state = f"revoked {user.revoked_at}" if user.revoked_at else "active"
                print(f"{user.name}\t{user.role}\tadded {user.created_at}\t{state}")
    except UserError as exc:
        raise ValueError(str(exc)) from None
    finally:
        users.close()
    return 0
