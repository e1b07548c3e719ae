"""How an inference route is declared, and what it gets without asking.

Declare it on an `InferenceRouter` and take the admission dependency as a parameter:

    router = InferenceRouter()

    @router.post("/thing", response_class=Response)
    async def thing(work: Annotated[Ticket, admit(cost)], image: ImageField, ...) -> Response:
        ... await state.infer(work, fn, ...) ...

`cost` is a dependency that returns the request's work in decodes (default: one decode), e.g.
`step_count`; the route gets, in this order:

- before the app sees it (service/middleware.py, every route): its metrics label (its path
  template), and the whole body read under FACESR_BODY_TIMEOUT_S and the body limit (408, 413);
- from the router: each form field at most once (422), and the error responses in its docs;
- from `admit`: the API key (401), readiness (503 not_ready), admission by cost and deadline
  (503 overloaded, service/admission.py), and the deadline FACESR_REQUEST_TIMEOUT_S, counted from
  the request's arrival (504). The ticket is released once the endpoint has returned.

An `InferenceRouter` refuses, when the module is imported, a route that does not take `admit`.

No `from __future__ import annotations` here: FastAPI reads the admission dependency's
annotations at runtime, and one of them names the route's `cost`.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute

from service.admission import Refusal, Ticket
from service.api.schemas import ERRORS
from service.api.security import Authorized
from service.errors import InvalidParameter, RequestTimeout, Unavailable
from service.state import ServiceState, StateDep


def one_decode() -> int:
    """The cost of a request that decodes one image."""
    return 1


def arrival(request: Request) -> float:
    """When the request arrived (clock seconds, time.monotonic), stamped by the middleware."""
    return getattr(request.state, "arrived_at", None) or time.monotonic()


def check_ready(state: ServiceState) -> None:
    if not state.ready:
        raise Unavailable(f"not ready: {state.status}", state.settings.retry_after_s, "not_ready")


def admit(cost: Callable[..., float] = one_decode) -> DependsParam:
    """The admission dependency of an inference route whose work is `cost` decodes."""

    async def admission(request: Request, state: StateDep, _: Authorized,
                        decodes: Annotated[float, Depends(cost)]) -> AsyncIterator[Ticket]:
        check_ready(state)
        timeout_s = state.settings.request_timeout_s
        deadline = arrival(request) + timeout_s
        ticket = state.admission.admit(decodes, deadline)
        if isinstance(ticket, Refusal):
            raise Unavailable(ticket.detail, ticket.retry_after_s, "overloaded")
        timer = asyncio.timeout_at(deadline)  # the event loop's clock is time.monotonic
        try:
            async with timer:
                yield ticket
        except TimeoutError:
            if not timer.expired():
                raise
            raise RequestTimeout(f"the request took longer than {timeout_s} s") from None
        finally:
            ticket.release()

    admission.admits = True  # what InferenceRoute looks for
    return Depends(admission, scope="function")  # released before the response is sent


class InferenceRoute(APIRoute):
    """A route of an InferenceRouter: it must take the admission dependency (`admit`)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if not any(getattr(d.call, "admits", False) for d in self.dependant.dependencies):
            raise TypeError(f"inference route {path} ({endpoint.__name__}) does not take the "
                            "admission dependency: add a parameter `work: Annotated[Ticket, "
                            "admit(cost)]` (service/api/inference_route.py)")


async def one_value_per_field(request: Request) -> None:
    """422 when the form holds a field twice (a second `image` would silently win)."""
    form = await request.form()  # the form FastAPI parsed already (cached on the request)
    for name in dict.fromkeys(form.keys()):
        count = len(form.getlist(name))
        if count > 1:
            raise InvalidParameter(f"the form holds {count} '{name}' fields: send exactly one")


class InferenceRouter(APIRouter):
    """The router of inference routes (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(route_class=InferenceRoute, tags=["inference"], responses=ERRORS,
                         dependencies=[Depends(one_value_per_field)], **kwargs)
