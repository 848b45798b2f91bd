"""Micro-batching: concurrent requests for one model become one batched model call.

A single session-kNN recommendation costs about 3 ms, nearly all of it the fixed cost of
building sparse matrices; 32 sessions in one `recommend_batch` cost about 0.5 ms each. The
batcher adds no wait: a call is queued and the batch runs as soon as the event loop gets to it,
so under light load every batch has one request, and under heavy load the requests that
arrived while the previous batch ran go together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from serving.metrics import Metrics

BatchFn = Callable[[Sequence[Any]], Sequence[Any]]

MAX_BATCH = 64  # bounds the latency one batch adds to the requests queued behind it


class MicroBatcher:
    def __init__(self, metrics: Metrics, max_batch: int = MAX_BATCH) -> None:
        self.metrics = metrics
        self.max_batch = max_batch
        self._queues: dict[Hashable, tuple[BatchFn, list[tuple[Any, asyncio.Future]]]] = {}

    async def submit(self, key: Hashable, fn: BatchFn, item: Any) -> Any:
        """`fn([item, ...])[i]` for this item, computed together with the other items queued
        under the same key (the same model); `fn`'s exception is raised to every caller."""
        future = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = (fn, [(item, future)])
            asyncio.get_running_loop().call_soon(self._run, key)
        else:
            queue[1].append((item, future))
        return await future

    def _run(self, key: Hashable) -> None:
        fn, queued = self._queues.pop(key)
        if len(queued) > self.max_batch:  # the rest go in the next batch, after other work
            self._queues[key] = (fn, queued[self.max_batch :])
            asyncio.get_running_loop().call_soon(self._run, key)
            queued = queued[: self.max_batch]
        self.metrics.inc("skiff_model_batches_total")
        self.metrics.inc("skiff_model_batch_items_total", len(queued))
        try:
            results = fn([item for item, _ in queued])
        except Exception as exc:
            for _, future in queued:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(queued, results, strict=True):
            if not future.done():  # the caller may have gone (client disconnected)
                future.set_result(result)
