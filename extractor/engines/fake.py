"""A scripted engine for tests: it replays outputs and records what it was asked, and streams
them (`TextStreaming`) piece by piece, one piece up to each character that may close a value."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from extractor.engines.base import CLOSING_CHARS, Engine, FinishReason, GenerationRequest, GenerationResult, OnText
from extractor.errors import EngineError

Script = Callable[[GenerationRequest], "str | GenerationResult | Exception"]


class ScriptedEngine(Engine):
    """Returns scripted outputs in order (or from a function of the request).

    An item may be a string (a finished output), a `GenerationResult`, or an
    exception to raise. `requests` records every request received.
    """

    name = "fake"

    def __init__(self, outputs: Iterable[str | GenerationResult | Exception] | Script, model: str = "scripted",
                 *, stream_step_s: float = 0.0) -> None:
        self.model = model
        #: the pause between two streamed pieces (`generate_streaming`)
        self.stream_step_s = stream_step_s
        self._script: Script | None = outputs if callable(outputs) else None
        self._queue = [] if callable(outputs) else list(outputs)
        self.requests: list[GenerationRequest] = []

    def _next(self, request: GenerationRequest) -> str | GenerationResult | Exception:
        if self._script is not None:
            return self._script(request)
        if not self._queue:
            raise EngineError("scripted engine has no outputs left")
        return self._queue.pop(0)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for request in requests:
            self.requests.append(request)
            item = self._next(request)
            if isinstance(item, Exception):
                raise item
            if isinstance(item, str):
                finish: FinishReason = "stop"
                item = GenerationResult(text=item, finish_reason=finish, prompt_tokens=sum(
                    len(m["content"].split()) for m in request.messages), completion_tokens=len(item.split()))
            results.append(item)
        return results

    async def generate_streaming(self, request: GenerationRequest, on_text: OnText) -> GenerationResult:
        """The scripted output, its text so far given to `on_text` after each closing character
        (`CLOSING_CHARS`), `stream_step_s` apart, then whole."""
        (result,) = await self.generate([request])
        for end, char in enumerate(result.text, 1):
            if char in CLOSING_CHARS:
                on_text(result.text[:end])
                await asyncio.sleep(self.stream_step_s)
        on_text(result.text)
        return result
