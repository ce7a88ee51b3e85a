"""The thread that does a replica's blocking disk work (server/replica.py's
replica loop hands it each round that must be persisted or is heavy to apply)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any


class IOThread:
    """One thread for the store's blocking writes, and a cheap way back: the
    result goes straight to an asyncio future (no concurrent.futures in between:
    that hop and the way there were measured at 0.3-0.6 ms a round)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, fut, fn, args = job
            result, error = None, None
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting task
                error = exc if isinstance(exc, Exception) and not isinstance(exc, StopIteration) else RuntimeError(
                    f"the I/O thread failed: {exc!r}")
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, fut, result, error)

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._jobs.put((loop, fut, fn, args))
        return fut

    def shutdown(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)


def _settle(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if not fut.done():
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)
