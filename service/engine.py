"""The service's engine: created in the background at start-up (the process
answers /healthz while a model loads), closed at shutdown, and probed by
/readyz with a real tiny generation."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from extractor.adapters.registry import AdapterRegistry
from extractor.engines import Engine, GenerationRequest, adapter_options, create_engine
from extractor.errors import EngineUnavailable, ExtractorError

log = logging.getLogger("extractor.service")

PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
PROBE = GenerationRequest(messages=({"role": "user", "content": 'Answer with the JSON object {"ok": true}.'},),
                          schema=PROBE_SCHEMA, max_tokens=12)


class EngineHolder:
    def __init__(self, name: str, options: dict[str, Any] | None = None, *, engine: Engine | None = None,
                 retry_after_s: int = 1, ready_timeout_s: float = 30.0, ready_cache_s: float = 5.0,
                 adapters: AdapterRegistry | None = None) -> None:
        self.name = engine.name if engine is not None else name
        #: LoRA adapters the engine must apply: it starts with what they need, and is refused (as a
        #: failed start) when they were trained on another base model
        self.adapters = adapters if adapters is not None else AdapterRegistry()
        self._options = {**(adapter_options(name, self.adapters.refs()) if engine is None else {}), **(options or {})}
        self._engine = engine
        self._owned = engine is None
        self._error: BaseException | None = None
        self._loading: asyncio.Task[None] | None = None
        self._retry_after_s = retry_after_s
        self._ready_timeout_s = ready_timeout_s
        self._ready_cache_s = ready_cache_s
        self._ready_at = -1e18
        self._probe_lock = asyncio.Lock()

    def start(self) -> None:
        """Start loading the engine, if it was given by name and is not loading yet."""
        if self._engine is None and self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            engine = await asyncio.to_thread(create_engine, self.name, **self._options)
            try:
                for adapter in self.adapters:
                    adapter.check_base(getattr(engine, "base_config", None), engine.model)
            except Exception:
                await engine.aclose()
                raise
            self._engine = engine
        except Exception as exc:
            self._error = exc
            log.error("engine %s failed to start: %s", self.name, exc)
            return
        log.info("engine %s (%s) ready in %.1f s", self.name, self._engine.model, time.perf_counter() - started)

    def get(self) -> Engine:
        """The engine, or `EngineUnavailable` while it loads or after it failed to."""
        if self._engine is not None:
            return self._engine
        if self._error is not None:
            raise EngineUnavailable(f"engine {self.name} failed to start: {self._error}",
                                    retry_after=self._retry_after_s * 30)
        raise EngineUnavailable(f"engine {self.name} is starting", retry_after=self._retry_after_s * 5)

    async def probe(self) -> dict[str, Any]:
        """Run a tiny generation (a good one is trusted for `ready_cache_s`); `EngineUnavailable` if it fails."""
        engine = self.get()
        async with self._probe_lock:  # concurrent probes share one generation
            if time.monotonic() - self._ready_at < self._ready_cache_s:
                return {"status": "ready", "engine": engine.name, "model": engine.model, "cached": True}
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self._ready_timeout_s):
                    (result,) = await engine.generate([PROBE])
            except TimeoutError as exc:
                # `busy`: it did not answer in time, which a busy engine does too (`failed` ones did answer)
                raise EngineUnavailable(f"engine {engine.name} did not answer within {self._ready_timeout_s:g} s",
                                        retry_after=self._retry_after_s, busy=True) from exc
            except ExtractorError as exc:
                raise EngineUnavailable(f"engine {engine.name} failed its probe: {exc}",
                                        retry_after=self._retry_after_s) from exc
            except Exception as exc:
                raise EngineUnavailable(f"engine {engine.name} failed its probe: {type(exc).__name__}: {exc}",
                                        retry_after=self._retry_after_s) from exc
            if not result.text.strip():
                raise EngineUnavailable(f"engine {engine.name} answered its probe with nothing",
                                        retry_after=self._retry_after_s)
            self._ready_at = time.monotonic()
            return {"status": "ready", "engine": engine.name, "model": engine.model, "cached": False,
                    "probe_ms": round((time.perf_counter() - started) * 1000, 1)}

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            await self._loading  # a model half-loaded in a thread cannot be cancelled; let it finish, then close it
        if not self._owned:
            return  # given by the caller, who closes it; kept for a restarted lifespan
        engine, self._engine, self._loading = self._engine, None, None
        if engine is None:
            return
        await engine.aclose()
