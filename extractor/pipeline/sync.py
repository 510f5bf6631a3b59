"""The sync SDK's event loop: one private loop thread per `Extractor`, for all its sync calls.

`asyncio.run` per call gave every call a fresh loop that closed when the call returned: an
engine's futures, pooled HTTP connections or worker jobs bound to an earlier call's loop then
pointed at a closed loop (a failed `extract_many` left the local engine's worker settling jobs
on it, and the next call hung). One long-lived loop lets every sync call share what the engine
binds to a loop, and several user threads may call at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

R = TypeVar("R")


class LoopThread:
    """An event loop in a daemon thread, started on first use; `run` waits for a coroutine on it."""

    def __init__(self, name: str = "extractor-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run `coro` on the loop and wait for it here; an interrupt (Ctrl-C) cancels it."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("called a sync Extractor method inside an event loop; use the `a...` method and await it")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("called a sync Extractor method on the extractor's own loop")
        future: concurrent.futures.Future[R] = asyncio.run_coroutine_threadsafe(coro, self._started())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and its thread (a later `run` starts a new one)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
