"""Who a request acts as, for the API's routes: the signed-in user (set on the request by the
web app's guard once its token is checked) and the administrator requirement.

One definition for every router (web, reader studies), so a route cannot check identity its own
way. FastAPI dependencies only; the accounts themselves live in :mod:`fracsight.service.users`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from fracsight.service.users import User

__all__ = ["Administrator", "SignedIn", "administrator", "signed_in"]


def signed_in(request: Request) -> User:
    """The user the request's token signed in as (the guard refused the request otherwise)."""
    return request.state.user


SignedIn = Annotated[User, Depends(signed_in)]


def administrator(user: SignedIn) -> User:
    if not user.is_admin:
        raise HTTPException(403, "administrators only")
    return user


Administrator = Annotated[User, Depends(administrator)]
