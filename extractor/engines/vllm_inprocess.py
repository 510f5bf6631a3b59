"""`vllm`: vLLM in-process, for pipelines on a GPU box (`pip install .[vllm]`).

The same strict schema as every other engine goes to vLLM's guided decoding
through `SamplingParams(structured_outputs=StructuredOutputsParams(json=...))`,
with compact whitespace. Prompts are rendered with the model's own chat
template and passed as token ids, exactly as vLLM's OpenAI server renders
them, so both vLLM engines give the same records for the same input.

vLLM's `AsyncLLM` is bound to the event loop it first runs on; the engine
owns one loop in a daemon thread and every `generate` call, from any loop
(the sync SDK runs one per call), is bridged onto it. Request building
(`sampling_options`, `render_prompt`) is pure and unit-tested; vLLM itself is
imported only when an engine is created.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from ..errors import DocumentTooLarge, EngineError, EngineUnavailable
from .base import FinishReason, GenerationRequest, GenerationResult, TokenLogprob

T = TypeVar("T")

#: where a model folder is found when none is given
MODEL_DIR_ENV = "EXTRACTOR_VLLM_MODEL_DIR"


def sampling_options(request: GenerationRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of `SamplingParams` and of `StructuredOutputsParams` for a request.

    Whitespace and backend are engine-wide in vLLM (`structured_outputs_config`),
    not per request."""
    structured: dict[str, Any] = {"json": dict(request.schema)}
    sampling: dict[str, Any] = {
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "repetition_penalty": request.repetition_penalty,
    }
    if request.temperature > 0:
        sampling["seed"] = request.seed  # greedy decoding needs no generator
    if request.logprobs:
        sampling["logprobs"] = 0  # the chosen token's logprob only
    return sampling, structured


def structured_outputs_config(*, compact_whitespace: bool, backend: str | None) -> dict[str, Any]:
    """vLLM's engine-wide structured output settings."""
    config: dict[str, Any] = {"disable_any_whitespace": compact_whitespace}
    if backend:
        config["backend"] = backend
    elif compact_whitespace:
        config["backend"] = "xgrammar"  # vLLM's "auto" refuses disable_any_whitespace
    return config


def render_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """Token ids of the chat-templated prompt (as vLLM's chat endpoint builds them)."""
    ids = tokenizer.apply_chat_template([dict(m) for m in request.messages], tokenize=True,
                                        add_generation_prompt=True, return_dict=False)
    if isinstance(ids, Mapping):  # transformers >= 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


_MARK = "\x00EXTRACTOR_LAST_MESSAGE\x00"


class PromptCache:
    """`render_prompt`, fast for many documents of one task.

    Every document of a task shares the prompt up to its last message (system
    instructions, few-shot examples). That head is rendered and tokenized once;
    per document only the last message and the template's tail are tokenized.
    The first prompt of each head is also rendered whole and compared: where
    the split would tokenize differently, that head always renders whole.
    """

    def __init__(self, tokenizer: Any, max_heads: int = 64) -> None:
        self.tokenizer = tokenizer
        self.max_heads = max_heads
        self._heads: dict[str, tuple[list[int], str] | None] = {}

    def __call__(self, request: GenerationRequest) -> list[int]:
        messages = [dict(m) for m in request.messages]
        key = json.dumps(messages[:-1], sort_keys=True)
        if key not in self._heads:
            if len(self._heads) >= self.max_heads:
                self._heads.pop(next(iter(self._heads)))
            self._heads[key] = self._split(messages, request)
        head = self._heads[key]
        if head is None:
            return render_prompt(self.tokenizer, request)
        head_ids, tail = head
        content = str(messages[-1]["content"])
        return head_ids + list(self.tokenizer.encode(content + tail, add_special_tokens=False))

    def _split(self, messages: list[dict[str, Any]], request: GenerationRequest) -> tuple[list[int], str] | None:
        marked = [*messages[:-1], {**messages[-1], "content": _MARK}]
        text = self.tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=True)
        head, found, tail = text.partition(_MARK)
        if not found:
            return None
        head_ids = list(self.tokenizer.encode(head, add_special_tokens=False))
        split = head_ids + list(self.tokenizer.encode(str(messages[-1]["content"]) + tail, add_special_tokens=False))
        return (head_ids, tail) if split == render_prompt(self.tokenizer, request) else None


def chosen_logprobs(token_ids: Sequence[int], logprobs: Any) -> tuple[TokenLogprob, ...] | None:
    """vLLM's per-position {token_id: Logprob} dicts -> the logprob of each chosen token."""
    if logprobs is None:
        return None
    out = []
    for tok, position in zip(token_ids, logprobs, strict=False):
        entry = position.get(tok)
        if entry is None:
            continue
        out.append(TokenLogprob(entry.decoded_token or "", float(entry.logprob)))
    return tuple(out)


class VllmEngine:
    """vLLM's `AsyncLLM` in this process.

    `model` is a model folder (or `$EXTRACTOR_VLLM_MODEL_DIR`); any other
    keyword goes to vLLM's `AsyncEngineArgs` (e.g. `gpu_memory_utilization`,
    `max_model_len`, `dtype`).
    """

    name = "vllm"

    def __init__(self, model: str | None = None, *, served_model_name: str | None = None,
                 compact_whitespace: bool = True, backend: str | None = None, **engine_args: Any) -> None:
        path = model or os.environ.get(MODEL_DIR_ENV)
        if not path:
            raise EngineUnavailable(f"the vllm engine needs a model folder: pass model=... or set ${MODEL_DIR_ENV}")
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
            from vllm.config import StructuredOutputsConfig
            from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        except ImportError as exc:
            raise EngineUnavailable(f"the vllm engine needs vLLM: pip install '.[vllm]' ({exc})") from exc
        from transformers import AutoTokenizer

        self.model = served_model_name or os.path.basename(os.path.normpath(path))
        self._sampling_params = SamplingParams
        self._final_only = RequestOutputKind.FINAL_ONLY
        self._structured_params = StructuredOutputsParams
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self._prompts = PromptCache(self.tokenizer)
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        try:
            config = StructuredOutputsConfig(**structured_outputs_config(compact_whitespace=compact_whitespace,
                                                                          backend=backend))
        except ValueError as exc:
            raise EngineUnavailable(f"vLLM refused the structured output settings: {exc}") from exc
        args = {"model": path, "disable_log_stats": True, "structured_outputs_config": config, **engine_args}

        async def build() -> Any:
            return AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**args))

        try:
            self._engine = self._call(build())
        except Exception as exc:
            self._stop_loop()
            raise EngineUnavailable(f"vLLM could not start {path}: {exc}") from exc
        self.context_length = int(self._engine.model_config.max_model_len)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- generation -------------------------------------------------------------
    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self._thread.is_alive():
            raise EngineUnavailable("the vllm engine has been closed")
        futures = [asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._one(r), self._loop)) for r in requests]
        return list(await asyncio.gather(*futures))

    async def _one(self, request: GenerationRequest) -> GenerationResult:
        prompt = self._prompts(request)
        if len(prompt) + request.max_tokens > self.context_length:
            raise DocumentTooLarge(
                f"prompt of {len(prompt)} tokens plus an output budget of {request.max_tokens} exceeds "
                f"the model's context of {self.context_length} tokens")
        sampling, structured = sampling_options(request)
        # one output per request when it finishes, as LLM.generate asks: streaming every
        # step's cumulative output to 2048 waiting requests costs a third of the throughput
        params = self._sampling_params(**sampling, structured_outputs=self._structured_params(**structured),
                                       output_kind=self._final_only)
        final = None
        try:
            async for output in self._engine.generate({"prompt_token_ids": prompt}, params, f"x{next(self._ids)}"):
                final = output
        except Exception as exc:
            raise EngineError(f"vLLM failed: {exc}") from exc
        if final is None or not final.outputs:
            raise EngineError("vLLM returned no output")
        choice = final.outputs[0]
        finish: FinishReason = "length" if choice.finish_reason == "length" else "stop"
        return GenerationResult(
            text=choice.text,
            finish_reason=finish,
            prompt_tokens=len(final.prompt_token_ids or prompt),
            completion_tokens=len(choice.token_ids),
            logprobs=chosen_logprobs(choice.token_ids, choice.logprobs) if request.logprobs else None,
        )

    # -- shutdown ---------------------------------------------------------------
    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        engine = getattr(self, "_engine", None)

        async def shutdown() -> None:
            if engine is not None:
                engine.shutdown()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._call(shutdown())
        finally:
            self._stop_loop()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
