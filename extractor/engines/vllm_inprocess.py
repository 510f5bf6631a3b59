"""`vllm`: vLLM in-process, for pipelines on a GPU box (`pip install .[vllm]`).

The same strict schema as every other engine goes to vLLM's guided decoding
through `SamplingParams(structured_outputs=StructuredOutputsParams(json=...))`.
Prompts are rendered with the model's own chat template and passed as token
ids, exactly as vLLM's OpenAI server renders them, so both vLLM engines give
the same records for the same input.

One worker thread owns vLLM's engine (`LLM(...).llm_engine`) and runs the
loop `LLM.generate` runs: add the requests that arrived, `step()`, hand out
the finished outputs. Requests keep arriving while it steps (retries, new
documents), so the batch never drains between callers. Measured on the GPU
benchmark, `AsyncLLM` with one asyncio task per request reached only about
half of `LLM.generate`'s throughput; this loop is `LLM.generate`'s own.
Request building (`sampling_options`, `PromptCache`) is pure and unit-tested;
vLLM itself is imported only when an engine is created.

Schemas: each one it has not seen is compiled first in a child process of ours, killed past
`grammar_timeout_s`, and refused past it (`CompileGuard`, `compile_guard.py`), since vLLM compiles
grammars with no time limit; verdicts are kept by schema hash.

LoRA adapters: started with `enable_lora=True` (`adapter_options` gives the
settings for a set of adapters), a request with an `adapter` is added with
its `LoRARequest`, so several schemas' adapters run in one engine, batched
together with base-model requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import queue
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from extractor.engines.base import (
    AdapterRef,
    Capacity,
    Engine,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    Message,
    OnText,
    TokenLogprob,
)
from extractor.engines.compile_guard import CompileGuard
from extractor.engines.detok import GrowingText, closing_token_ids, token_pieces
from extractor.engines.grammar_check import DEFAULT_COMPILE_TIMEOUT_S
from extractor.engines.special_tokens import Defuser, tokenizer_special_tokens
from extractor.engines.vllm_schema import GuardedSchemas
from extractor.engines.worker import Job, abandoned, notify, settle, submit
from extractor.errors import DocumentTooLarge, EngineError, EngineUnavailable, SchemaRejected

log = logging.getLogger(__name__)

#: where a model folder is found when none is given
MODEL_DIR_ENV = "EXTRACTOR_VLLM_MODEL_DIR"

#: the schema of the start-up warm-up generation
WARM_UP_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"greeting": {"type": "string", "maxLength": 8}},
                                  "required": ["greeting"], "additionalProperties": False}


def sampling_options(request: GenerationRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of `SamplingParams` and of `StructuredOutputsParams` for a request.

    Whitespace and backend are engine-wide in vLLM (`structured_outputs_config`),
    not per request."""
    structured: dict[str, Any] = {"json": dict(request.schema)}
    sampling: dict[str, Any] = {
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "repetition_penalty": request.repetition_penalty,
        # no incremental detokenization per step: the engine decodes each output once when it
        # finishes (`to_result`); there are no stop strings that would need the text as it grows
        "detokenize": False,
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


def refusal(exc: BaseException) -> Exception:
    """The typed error of a request vLLM refused as it was added: `SchemaRejected` (422) where its
    structured-output backend refused the schema (on the H200, 13 of the real-world schemas that
    our xgrammar compiled: "Ref recusion limit reached: 3", "Unsupported JSON Schema structure
    false", from the backend vLLM's "auto" picked), else `EngineError`."""
    frames = traceback.extract_tb(exc.__traceback__)
    if any("structured_output" in frame.filename for frame in frames):
        return SchemaRejected("$", f"vLLM's grammar backend refused the schema: {exc}"[:500])
    return EngineError(f"vLLM refused the request: {exc}")


#: the ranks vLLM accepts as max_lora_rank
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_settings(adapters: Sequence[AdapterRef]) -> dict[str, Any]:
    """vLLM engine arguments that let these adapters run side by side (empty without adapters)."""
    if not adapters:
        return {}
    rank = max(a.rank for a in adapters)
    return {"enable_lora": True, "max_lora_rank": next((r for r in LORA_RANKS if r >= rank), rank),
            "max_loras": len({a.name for a in adapters})}


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
        #: every special token of the tokenizer, written as text in any message, stays text
        self.defuse = Defuser(tokenizer_special_tokens(tokenizer))
        self.max_heads = max_heads
        self._heads: dict[str, tuple[list[int], str] | None] = {}

    def __call__(self, request: GenerationRequest) -> list[int]:
        request = replace(request, messages=tuple(self.defuse.messages(request.messages)))
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


def chosen_logprobs(token_ids: Sequence[int], logprobs: Any,
                    decode: Callable[[list[int]], str] | None = None) -> tuple[TokenLogprob, ...] | None:
    """vLLM's per-position {token_id: Logprob} dicts -> the logprob of each chosen token. With
    `decode` (the tokenizer's), each token's text is what it adds to the decoded output
    (`detok.token_pieces`), else vLLM's one-token `decoded_token`."""
    if logprobs is None:
        return None
    pieces = token_pieces(decode, token_ids) if decode is not None else None
    out = []
    for k, (tok, position) in enumerate(zip(token_ids, logprobs, strict=False)):
        entry = position.get(tok)
        if entry is None:
            continue
        out.append(TokenLogprob(pieces[k] if pieces is not None else entry.decoded_token or "", float(entry.logprob)))
    return tuple(out)


def to_result(output: Any, prompt_len: int, want_logprobs: bool,
              decode: Callable[[list[int]], str] | None = None) -> GenerationResult:
    """A finished vLLM `RequestOutput` -> our `GenerationResult`. With `decode` (the tokenizer's)
    the text is the output's token ids decoded once (requests are sent with `detokenize=False`),
    else vLLM's own text."""
    choice = output.outputs[0]
    finish: FinishReason = "length" if choice.finish_reason == "length" else "stop"
    return GenerationResult(
        text=decode(list(choice.token_ids)) if decode is not None else choice.text,
        finish_reason=finish,
        prompt_tokens=len(output.prompt_token_ids or ()) or prompt_len,
        completion_tokens=len(choice.token_ids),
        logprobs=chosen_logprobs(choice.token_ids, choice.logprobs, decode) if want_logprobs else None,
    )


class VllmEngine(Engine):
    """vLLM in this process.

    `model` is a model folder (or `$EXTRACTOR_VLLM_MODEL_DIR`); any other
    keyword goes to vLLM's engine arguments (e.g. `gpu_memory_utilization`,
    `max_model_len`, `dtype`). `compact_whitespace` makes vLLM's grammar allow no
    free whitespace (off by default: on SmolLM2 it forced unnatural tokens and
    cost speed and accuracy on the benchmark).
    """

    name = "vllm"

    @classmethod
    def capacity(cls, options: Mapping[str, Any]) -> Capacity:
        """vLLM batches up to max_num_seqs (256 by default) in one step: keep that many in flight."""
        return Capacity(inflight=int(options.get("max_num_seqs", 256)), processes=1)
    @staticmethod
    def adapter_options(adapters: Sequence[AdapterRef]) -> dict[str, Any]:
        """Engine options for serving these adapters (an `Extractor` with adapters adds them)."""
        return lora_settings(adapters)

    def __init__(self, model: str | None = None, *, served_model_name: str | None = None,
                 compact_whitespace: bool = False, backend: str | None = None,
                 grammar_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S, grammar_check_processes: int = 1,
                 compile_guard: CompileGuard | None = None, **engine_args: Any) -> None:
        path = model or os.environ.get(MODEL_DIR_ENV)
        if not path:
            raise EngineUnavailable(f"the vllm engine needs a model folder: pass model=... or set ${MODEL_DIR_ENV}")
        try:
            from vllm import LLM, SamplingParams
            from vllm.config import StructuredOutputsConfig
            from vllm.lora.request import LoRARequest
            from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        except ImportError as exc:
            raise EngineUnavailable(f"the vllm engine needs vLLM: pip install '.[vllm]' ({exc})") from exc
        from transformers import AutoTokenizer

        self.model = served_model_name or os.path.basename(os.path.normpath(path))
        self._sampling_params = SamplingParams
        self._lora_request = LoRARequest
        self._final_only = RequestOutputKind.FINAL_ONLY
        self._cumulative = RequestOutputKind.CUMULATIVE  # a streaming request's outputs at every step
        self._structured_params = StructuredOutputsParams
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        try:
            with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
                #: the HF config of the base model (adapters are checked against it)
                self.base_config: dict[str, Any] | None = json.load(f)
        except (OSError, ValueError):
            self.base_config = None
        self._lora_enabled = bool(engine_args.get("enable_lora"))
        self._lora_ids: dict[str, tuple[int, str]] = {}  # adapter name -> (lora_int_id, path)
        self._prompts = PromptCache(self.tokenizer)
        #: a streaming request's text is decoded after each of these tokens (`generate_streaming`)
        self._closing_ids = closing_token_ids(self.tokenizer)
        self._growing: dict[str, GrowingText] = {}  # request id -> its text so far (worker thread only)
        self.special_tokens = self._prompts.defuse.tokens
        # the output text as vLLM's detokenizer writes it: special tokens skipped, no clean-up of spaces
        self._decode: Callable[[list[int]], str] = lambda ids: str(self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        try:
            config = StructuredOutputsConfig(**structured_outputs_config(compact_whitespace=compact_whitespace,
                                                                          backend=backend))
        except ValueError as exc:
            raise EngineUnavailable(f"vLLM refused the structured output settings: {exc}") from exc
        try:
            self._llm = LLM(model=path, disable_log_stats=True, structured_outputs_config=config, **engine_args)
        except Exception as exc:
            raise EngineUnavailable(f"vLLM could not start {path}: {exc}") from exc
        self._engine: Any = self._llm.llm_engine
        self.context_length = int(self._engine.model_config.max_model_len)
        #: every schema is compiled in a child of ours, killed past `grammar_timeout_s`, before vLLM
        #: compiles it (where nothing can stop it): `compile_guard.py`
        if compile_guard is None and grammar_timeout_s > 0:
            compile_guard = CompileGuard.shared(tokenizer=path, timeout_s=grammar_timeout_s,
                                                processes=grammar_check_processes)
        #: schemas in the form vLLM hands to xgrammar, checked by the guard (`vllm_schema.py`)
        self.schemas = GuardedSchemas(compile_guard)
        self._warm_up()
        self._ids = itertools.count()
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._failed: BaseException | None = None
        self._worker = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._worker.start()

    # -- public -------------------------------------------------------------
    async def compiler_ready(self) -> None:
        await self.schemas.ready()

    def admit(self, schema: Mapping[str, Any]) -> bool:
        return self.schemas.admit(schema)

    async def prepare(self, schema: Mapping[str, Any]) -> None:
        """Check that `schema`, in the form vLLM gets it (`vllm_schema.py`), compiles within the
        limit (grounded decoding's per-document schemas come here first, within their own
        compile budget)."""
        await self.schemas.check(schema)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return await submit(self._inbox.put, Job, await self._ready(requests))

    async def generate_streaming(self, request: GenerationRequest, on_text: OnText) -> GenerationResult:
        """`TextStreaming`: one request, stepped with all the others; vLLM reports it at every step
        (`RequestOutputKind.CUMULATIVE`) and its text so far goes to `on_text` after each token that
        may close a JSON value (decoded on the engine thread only then)."""
        (result,) = await submit(self._inbox.put, Job, await self._ready([request]), on_text)
        on_text(result.text)
        return result

    async def _ready(self, requests: Sequence[GenerationRequest]) -> Sequence[GenerationRequest]:
        """The requests in vLLM's form, their schemas checked (`vllm_schema.py`), if the engine runs."""
        if self._failed is not None or not self._worker.is_alive():
            raise EngineUnavailable(f"the vllm engine is not running ({self._failed or 'closed'})")
        return await self.schemas.requests(requests)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the rendered prompt (`TokenBudget`), as `_add` counts them."""
        return len(render_prompt(self.tokenizer, GenerationRequest(messages=messages, schema={}, max_tokens=1)))

    def close(self) -> None:
        if self._worker.is_alive():
            self._inbox.put(None)
            self._worker.join(timeout=60)
        shutdown = getattr(getattr(self._engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def _warm_up(self) -> None:
        """One tiny guided generation at start-up, so that what vLLM and the grammar backend build
        on their first guided request (kernels compiled on first use, the grammar compiler's
        thread pool) is ready before the first document, not inside it."""
        warm = GenerationRequest(messages=({"role": "user", "content": "Say hello."},), schema=WARM_UP_SCHEMA,
                                 max_tokens=16)
        sampling, structured = sampling_options(warm)
        params = self._sampling_params(**sampling, structured_outputs=self._structured_params(**structured))
        try:
            self._llm.generate([{"prompt_token_ids": self._prompts(warm)}], params, use_tqdm=False)
        except Exception as exc:
            raise EngineUnavailable(f"vLLM could not run a guided generation: {exc}") from exc

    # -- worker -------------------------------------------------------------
    def _add(self, job: Job, running: dict[str, tuple[Job, int]]) -> None:
        request = job.request
        prompt = self._prompts(request)
        if len(prompt) + request.max_tokens > self.context_length:
            raise DocumentTooLarge(
                f"prompt of {len(prompt)} tokens plus an output budget of {request.max_tokens} exceeds "
                f"the model's context of {self.context_length} tokens")
        sampling, structured = sampling_options(request)
        params = self._sampling_params(**sampling, structured_outputs=self._structured_params(**structured),
                                       output_kind=self._final_only if job.on_text is None else self._cumulative)
        request_id = f"x{next(self._ids)}"
        lora = self._lora(request.adapter) if request.adapter is not None else None
        self._engine.add_request(request_id, {"prompt_token_ids": prompt}, params, lora_request=lora)
        running[request_id] = (job, len(prompt))
        if job.on_text is not None:
            self._growing[request_id] = GrowingText(self._decode, self._closing_ids)

    def _lora(self, adapter: AdapterRef) -> Any:
        """The `LoRARequest` of an adapter: one stable `lora_int_id` per adapter name."""
        if not self._lora_enabled:
            raise EngineError(f"a request with the adapter {adapter.name!r} reached a vllm engine started without "
                              "LoRA: start it with enable_lora=true (and max_lora_rank, max_loras)")
        known = self._lora_ids.get(adapter.name)
        if known is None:
            known = self._lora_ids[adapter.name] = (len(self._lora_ids) + 1, adapter.path)
        elif known[1] != adapter.path:
            raise EngineError(f"two adapters named {adapter.name!r}: {known[1]} and {adapter.path}")
        return self._lora_request(adapter.name, known[0], adapter.path)

    def _run(self) -> None:
        running: dict[str, tuple[Job, int]] = {}
        closing = False
        while not (closing and not running):
            # take what has arrived; wait only when there is nothing to step
            arrived: list[Job | None] = []
            if not running and not closing:
                arrived.append(self._inbox.get())
            while True:
                try:
                    arrived.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for job in arrived:
                if job is None:
                    closing = True
                    continue
                if abandoned(job):  # its caller gave up while it queued
                    continue
                try:
                    self._add(job, running)
                except Exception as exc:
                    settle(job, exc if isinstance(exc, (DocumentTooLarge, EngineError)) else refusal(exc))
            self._abort_abandoned(running)
            if not running:
                continue
            try:
                outputs = self._engine.step()
            except Exception as exc:  # the engine is broken: fail everyone, refuse new work
                log.exception("vLLM engine step failed")
                self._failed = exc
                for job, _ in running.values():
                    settle(job, EngineUnavailable(f"vLLM failed: {exc}"))
                running.clear()
                self._growing.clear()
                self._drain_inbox(exc)
                return
            for output in outputs:
                if output.request_id not in running:
                    continue
                if not output.finished:
                    self._stream(running[output.request_id][0], output)
                    continue
                job, prompt_len = running.pop(output.request_id)
                self._growing.pop(output.request_id, None)
                try:
                    settle(job, to_result(output, prompt_len, job.request.logprobs, self._decode))
                except Exception as exc:
                    settle(job, EngineError(f"vLLM returned an unreadable output: {exc}"))

    def _stream(self, job: Job, output: Any) -> None:
        """A streaming request's text so far to its caller, when a token since its last step may
        close a value (`GrowingText`)."""
        grown = self._growing.get(output.request_id)
        if grown is not None and output.outputs and (text := grown.update(output.outputs[0].token_ids)) is not None:
            notify(job, text)

    def _abort_abandoned(self, running: dict[str, tuple[Job, int]]) -> None:
        """Abort in vLLM the requests whose caller gave up (deadline, client gone): they stop
        taking batch slots and KV cache at once."""
        gone = [request_id for request_id, (job, _) in running.items() if abandoned(job)]
        if not gone:
            return
        try:
            self._engine.abort_request(gone)
        except Exception:  # an abort that fails leaves them to finish; their results are dropped
            log.exception("vLLM could not abort %d request(s)", len(gone))
            return
        for request_id in gone:
            running.pop(request_id, None)
            self._growing.pop(request_id, None)

    def _drain_inbox(self, exc: BaseException) -> None:
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                settle(job, EngineUnavailable(f"vLLM failed: {exc}"))
