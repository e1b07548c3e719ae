"""The app factory: `uvicorn --factory service.app:create_app`, or `python -m service`.

Start-up loads every model and checks its provider. A bad model (missing, corrupt, inconsistent)
leaves the process up but never ready, with one `not ready: <cause>` log line; provider settings
that cannot be met (FACESR_REQUIRE_GPU without a GPU) stop it. Then it warms up in the
background, one model after the other, with a log line as each begins and ends:
/health/live answers at once, /health/ready and the inference endpoints answer 503 until every
model is warm (every batch bucket on a GPU, batch 1 on the CPU; see service/engine.py). SIGTERM
during warm-up stops it before its next graph call. Shutdown (SIGTERM) lets
uvicorn finish in-flight requests, then drains the micro-batchers and the inference pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.admission import Admission, Lane, PriorityPool
from service.api import health, inference, models, page, photo
from service.batching import MicroBatcher
from service.docs import app_with_local_docs
from service.engine import EngineError, ModelError, Runner, load_models
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import Gate
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("facesr")


async def _warm_up(state: ServiceState) -> None:
    loop = asyncio.get_running_loop()
    try:
        for scale in state.scales:
            if state.closing:
                return
            runner = state.runners[scale]
            name, (encoder_sizes, decoder_sizes) = runner.manifest.name, runner.warmup_sizes()
            state.status = f"warming up model {name}"
            log.info("warming up %s (x%d) on %s: encoder batch sizes %s, decoder %s", name,
                     scale, runner.provider, encoder_sizes, decoder_sizes)
            seconds = await loop.run_in_executor(state.pool.lane(Lane.HEAVY), runner.warmup,
                                                 lambda: state.closing)
            if seconds is None:  # shutdown began during the warm-up
                return
            log.info("warmed up %s in %.2f s", name, seconds)
    except Exception as exc:  # noqa: BLE001 - reported by /health/ready, the process stays up
        log.exception("warm-up failed")
        state.status, state.detail = "warm-up failed", f"{type(exc).__name__}: {exc}"
        return
    if state.closing:
        return
    state.ready, state.status = True, "ready"
    state.metrics.ready.set(1)
    log.info("ready: scales %s", ", ".join(f"x{s}" for s in state.scales))


def _start_models(state: ServiceState, runners: dict[int, Runner]) -> None:
    s, m = state.settings, state.metrics
    state.runners = runners
    for scale, runner in runners.items():
        man = runner.manifest
        m.model_info.labels(name=man.name, scale=str(scale), version=man.version,
                            provider=runner.provider, precision=runner.precision).set(1)
        state.batchers[scale] = MicroBatcher(
            runner.superresolve, state.pool.lane(Lane.LIGHT), s.max_batch, s.max_wait_ms / 1000,
            on_batch=m.batch_size.labels(scale=str(scale)).observe, name=man.name)
        state.batchers[scale].start()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.svc
    s = state.settings
    state.metrics.ready.set(0)
    state.pool = PriorityPool(s.run_concurrency, on_start=state.admission.lane_started)
    warm = None
    try:
        runners = await asyncio.to_thread(load_models, s)
    except ModelError as exc:  # stay up, not ready: the log and /v1/models say why
        log.error("not ready: %s", exc)
        state.status, state.detail = "model error (the log and /v1/models say which)", str(exc)
    except EngineError as exc:
        log.error("cannot start: %s", exc)
        state.pool.shutdown(wait=False)
        raise
    else:
        _start_models(state, runners)
        warm = _begin_serving(state)
    try:
        yield
    finally:
        await _shutdown(state, warm)


def _begin_serving(state: ServiceState) -> asyncio.Task | None:
    """Warm up in the background (ready afterwards), or be ready at once without warm-up."""
    if state.settings.warmup:
        return asyncio.create_task(_warm_up(state))
    state.ready, state.status = True, "ready (warm-up disabled)"
    state.metrics.ready.set(1)
    return None


async def _shutdown(state: ServiceState, warm: asyncio.Task | None) -> None:
    state.ready, state.status, state.closing = False, "shutting down", True
    state.metrics.ready.set(0)
    if warm is not None:
        await warm  # it stops before its next graph call once `closing` is set
    for batcher in state.batchers.values():
        await batcher.drain()
    if state.pool is not None:
        await asyncio.to_thread(state.pool.shutdown, True)
    state.metrics.process_exit()
    log.info("shut down cleanly")


def configure_logging(level: str) -> None:
    """Level for the facesr loggers; a stderr handler unless logging is configured already."""
    logger = logging.getLogger("facesr")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app; settings default to the FACESR_* environment."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()
    admission = Admission(settings.run_concurrency, settings.max_in_flight,
                          min_retry_s=settings.retry_after_s, on_change=metrics.set_admitted)
    state = ServiceState(settings, metrics, admission=admission)
    app = app_with_local_docs(
        title="FaceSR", version=__version__, lifespan=lifespan,
        description="Stochastic face super-resolution (Cho et al.): the ICAP mean, best-of-n "
                    "samples and latent traversals, on ONNX Runtime.")
    app.state.svc = state
    install_error_handlers(app, lambda kind: metrics.errors.labels(kind=kind).inc())
    for router in (inference.router, photo.router, health.router, models.router, page.router):
        app.include_router(router)
    app.add_middleware(Gate, state=state, router=app.router)
    return app
