"""How `python -m service` runs uvicorn: connection limits, header and idle timeouts, workers.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`), open connections
(`limit_concurrency`: beyond it, new requests get 503) and the size of a request head (h11's
`max_incomplete_event_size`, 16 KiB by default), but not the time a client may take to send its
headers: a connection that sends nothing, or half a request line, stays open forever. The
protocol below (uvicorn's h11 one, plus that timer) closes it after FACESR_HEADER_TIMEOUT_S.
The body has its own deadline in the app (service/middleware.py).

With the uvicorn CLI, pass `--http service.server:GuardedH11Protocol --timeout-keep-alive 5
--limit-concurrency 256` to get the same limits.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import Multiprocess

from service.settings import Settings


@functools.cache
def header_timeout_s() -> float:
    """FACESR_HEADER_TIMEOUT_S, read once per worker (uvicorn builds the protocol itself)."""
    return Settings().header_timeout_s


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is not complete within
    FACESR_HEADER_TIMEOUT_S (from the connection's start, or from the first byte of the next
    request on a kept-alive connection)."""

    header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for (the rest of) a request head
            if self.header_timer is None:
                self._arm_header_timer()
        else:
            self._disarm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._disarm_header_timer()  # the keep-alive timer takes over until the next byte
        super().on_response_complete()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self.header_timer = self.loop.call_later(header_timeout_s(), self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of uvicorn.run for these settings."""
    return {
        "host": settings.host, "port": settings.port, "workers": settings.workers,
        "log_level": settings.log_level, "http": GuardedH11Protocol,
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.max_connections,
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
    }


class TermAwareSupervisor(Multiprocess):
    """uvicorn's multiprocess supervisor, remembering whether SIGTERM stopped it."""

    terminated = False

    def handle_term(self) -> None:
        self.terminated = True
        super().handle_term()


def serve(settings: Settings) -> None:
    """Run the app under uvicorn. With several workers, uvicorn's supervisor returns normally
    after SIGTERM; this process then ends by SIGTERM too (exit status 143), as one worker does."""
    config = uvicorn.Config("service.app:create_app", factory=True, **uvicorn_options(settings))
    if config.workers < 2:
        uvicorn.Server(config).run()  # re-raises the signal that stopped it
        return
    supervisor = TermAwareSupervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    if supervisor.terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
