"""What one app holds while it runs (`ServiceState`), and the dependency that hands it to the
endpoints (`StateDep`). The lifespan (service/app.py) fills it; the routers (service/api/) read it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from service.admission import Admission, PriorityPool, Refused, Ticket
from service.batching import MicroBatcher
from service.engine import Runner
from service.errors import InferenceFailed, ServiceError, Unavailable
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("facesr")
T = TypeVar("T")


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    runners: dict[int, Runner] = field(default_factory=dict)
    batchers: dict[int, MicroBatcher] = field(default_factory=dict)
    pool: PriorityPool | None = None
    admission: Admission = field(default_factory=Admission)
    ready: bool = False
    status: str = "starting"  # public: what /health/ready says
    detail: str = ""  # the cause behind a not-ready status: the log and /v1/models only
    closing: bool = False

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(sorted(self.runners))

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    async def infer(self, ticket: Ticket, fn: Callable[..., T],
                    *args: Any) -> tuple[T, float, float]:
        """Run fn in the inference pool, in the ticket's lane: (result, queue seconds,
        inference seconds). 503 when, by the time it would start, it can no longer finish."""
        submitted = time.perf_counter()

        def timed() -> tuple[T, float, float]:
            refusal = self.admission.too_late(ticket)
            if refusal is not None:
                raise Refused(refusal)
            ticket.start()
            start = time.perf_counter()
            try:
                return fn(*args), start, time.perf_counter()
            finally:
                ticket.finish()

        loop = asyncio.get_running_loop()
        try:
            out, start, end = await asyncio.wrap_future(
                self.pool.submit(ticket.lane, timed), loop=loop)
        except Refused as exc:
            raise Unavailable(exc.refusal.detail, exc.refusal.retry_after_s,
                              "overloaded") from None
        except ServiceError:
            raise
        except Exception as exc:
            log.exception("inference failed")
            raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from exc
        return out, start - submitted, end - start


def get_state(request: Request) -> ServiceState:
    """The app's ServiceState (a FastAPI dependency)."""
    return request.app.state.svc


StateDep = Annotated[ServiceState, Depends(get_state)]
