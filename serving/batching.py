"""Micro-batching: concurrent requests for one model become one batched model call, run in a
worker thread so that the event loop keeps answering while a model computes.

A single session-kNN recommendation costs about 3 ms, nearly all of it the fixed cost of
building sparse matrices; 32 sessions in one `recommend_batch` cost about 0.5 ms each. The
batcher adds no wait: a call is queued and its batch starts as soon as the event loop gets to
it, so under light load every batch has one request. Each model (key) has at most one batch in
flight; the requests that arrive while it runs go together into the next one (at most
`max_batch`), so under heavy load batches grow instead of queueing threads.

Decision: a thread, not a process. numpy, scipy's sparse products, torch and scikit-learn's
predictors release the GIL for most of their work, and even pure Python that holds it is made
to yield every 5 ms (`sys.getswitchinterval`): with a model that burns the CPU in pure Python
for 2 s, /readyz still answered in tens of milliseconds (tests/test_serving_production.py).
A process would copy every model and every request across a pipe. The pool is small
(`SKIFF_SERVE_INFERENCE_THREADS`, default 1): the machine's cores are few, and a batch of one
model never runs beside another batch of the same model anyway. Each worker thread limits
OpenMP and BLAS to one thread itself (`predict.single_threaded`): OpenMP's limit is per thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serving.metrics import Metrics

BatchFn = Callable[[Sequence[Any]], Sequence[Any]]
Queued = list[tuple[Any, asyncio.Future]]

MAX_BATCH = 64  # bounds the latency one batch adds to the requests queued behind it


def _worker_started() -> None:
    from serving.predict import single_threaded

    single_threaded()


class MicroBatcher:
    def __init__(self, metrics: Metrics, max_batch: int = MAX_BATCH, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.metrics = metrics
        self.max_batch = max_batch
        self._queues: dict[Hashable, tuple[BatchFn, Queued]] = {}
        self._draining: dict[Hashable, asyncio.Task] = {}  # one per key with work in flight
        # threads start on the first batch, so an app that never scores starts none
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="skiff-inference", initializer=_worker_started
        )

    async def submit(self, key: Hashable, fn: BatchFn, item: Any) -> Any:
        """`fn([item, ...])[i]` for this item, computed in a worker thread together with the
        other items queued under the same key (the same model); `fn`'s exception is raised to
        every caller."""
        future = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = (fn, [(item, future)])
        else:
            queue[1].append((item, future))
        if key not in self._draining:
            self._draining[key] = asyncio.get_running_loop().create_task(self._drain(key))
        return await future

    async def _drain(self, key: Hashable) -> None:
        """Run the key's batches one after the other until its queue is empty."""
        queued: Queued = []
        try:
            while key in self._queues:
                fn, queued = self._queues.pop(key)
                if len(queued) > self.max_batch:  # the rest go in the next batch
                    self._queues[key] = (fn, queued[self.max_batch :])
                    queued = queued[: self.max_batch]
                queued = [(item, f) for item, f in queued if not f.done()]  # callers gone
                if queued:
                    await self._run(fn, queued)
        except BaseException as exc:  # cancelled (shutdown): nobody is left waiting forever
            left = self._queues.pop(key, None)
            for _, future in queued + (left[1] if left else []):
                if not future.done():
                    future.set_exception(RuntimeError(f"the model call was abandoned: {exc!r}"))
            raise
        finally:
            self._draining.pop(key, None)

    async def _run(self, fn: BatchFn, queued: Queued) -> None:
        self.metrics.inc("skiff_model_batches_total")
        self.metrics.inc("skiff_model_batch_items_total", len(queued))
        items = [item for item, _ in queued]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, fn, items)
            if len(results) != len(items):
                raise ValueError(f"a batch of {len(items)} got {len(results)} answers")
        except Exception as exc:
            for _, future in queued:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(queued, results, strict=True):
            if not future.done():  # the caller may have gone (client disconnected)
                future.set_result(result)

    def close(self) -> None:
        """Stop the worker threads: the running batch finishes, queued ones are dropped."""
        self._executor.shutdown(wait=True, cancel_futures=True)
