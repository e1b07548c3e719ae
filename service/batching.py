"""Dynamic micro-batching of concurrent /superresolve requests, one batcher per model.

A request waits at most `max_wait_s` for others to join it; a batch closes at `max_batch`
requests. One batch per model runs at a time, in the inference thread pool, so the event loop
stays free; requests that arrive meanwhile form the next batch. The queue is bounded by
admission (service/admission.py). `drain()` stops intake and finishes everything queued.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.errors import InferenceFailed, Unavailable

log = logging.getLogger("facesr.batching")


@dataclass
class BatchResult:
    image: np.ndarray  # uint8 (128,128,3)
    queue_s: float
    inference_s: float
    batch_size: int
    started_at: float  # time.monotonic() when its batch started


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    enqueued: float


class MicroBatcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], executor: Executor,
                 max_batch: int, max_wait_s: float,
                 on_batch: Callable[[int], None] | None = None, name: str = "") -> None:
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.on_batch, self.name = on_batch, name
        self._items: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop(), name=f"batcher-{self.name}")

    async def submit(self, x: np.ndarray, retry_after_s: int = 1) -> BatchResult:
        """Queue one input x (3,128,128); returns its output once its batch has run."""
        if self._closing or self._task is None:
            raise Unavailable("the service is shutting down", retry_after_s, "shutting_down")
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(x, future, time.perf_counter()))
        self._wake.set()
        return await future

    async def drain(self) -> None:
        """Stop accepting work, run everything already queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        while True:
            if not self._items:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._collect()
            if batch:
                await self._run_batch(batch)

    async def _collect(self) -> list[_Item]:
        deadline = time.perf_counter() + self.max_wait_s
        while len(self._items) < self.max_batch and not self._closing:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                break
        batch: list[_Item] = []
        while self._items and len(batch) < self.max_batch:
            item = self._items.popleft()
            if not item.future.done():  # skip requests that timed out or went away
                batch.append(item)
        return batch

    def _timed_run(self, xs: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        started_at, start = time.monotonic(), time.perf_counter()
        out = self.run(xs)
        return out, start, time.perf_counter(), started_at

    async def _run_batch(self, batch: list[_Item]) -> None:
        xs = np.stack([item.x for item in batch])
        if self.on_batch:
            self.on_batch(len(batch))
        loop = asyncio.get_running_loop()
        try:
            out, start, end, started_at = await loop.run_in_executor(self.executor,
                                                                     self._timed_run, xs)
        except Exception as exc:  # noqa: BLE001 - every waiter gets a 500, the loop lives on
            log.exception("batch of %d on %s failed", len(batch), self.name)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(
                        InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}"))
            return
        for item, image in zip(batch, out, strict=True):
            if not item.future.done():
                item.future.set_result(BatchResult(image, start - item.enqueued, end - start,
                                                   len(batch), started_at))
