"""The API key: `Authorization: Bearer <FACESR_API_KEY>` (the scheme in any case, RFC 7235),
checked by a dependency that also declares the scheme in the OpenAPI document."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized
from service.state import StateDep

bearer = HTTPBearer(auto_error=False, description="FACESR_API_KEY (only when it is set)")


async def authorized(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 unless FACESR_API_KEY is unset or the request carries it as its bearer token."""
    key = state.settings.api_key.get_secret_value()
    if not key:
        return
    token = credentials.credentials.strip() if credentials is not None else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")


Authorized = Annotated[None, Depends(authorized)]
