"""`vllm-http`: any vLLM OpenAI-compatible server, over plain HTTP (httpx2).

Request building (`chat_request`) and response reading (`parse_choice`) are pure and unit-tested;
`VllmHttpEngine` does the I/O: bounded concurrency over small pooled connection sets, timeouts,
backoff with jitter on 429/503 and dropped connections (honouring Retry-After), and a start-up
check that the server really enforces the JSON schema (a server that silently ignores
`response_format` is refused).

The body goes out as prebuilt JSON and the answer is read as plain JSON: the `openai` client's
request options, auth hooks and pydantic parsing of every completion were 43 % of the service's
CPU per request at 64 in flight (py-spy, bench/service_overhead.py), for nothing a JSON body
needs. Tests fake the server at the HTTP layer (`transport=httpx2.MockTransport(...)`).

Every schema goes through a `CompileGuard` (`compile_guard.py`) before the server sees it: compiled
in a child process of ours, killed past `grammar_timeout_s`, and refused (`GrammarTimeout`,
`SchemaRejected`: 422) instead of stalling vLLM's grammar compiler; verdicts are kept by schema hash.

A request with a LoRA `adapter` names the adapter as its `model` (a server
started with `--enable-lora --lora-modules NAME=DIR`); an adapter the
server's `/v1/models` does not list is refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2

from extractor.engines.base import CLOSING_CHARS, Capacity, Engine, GenerationRequest, GenerationResult, OnText, TokenLogprob
from extractor.engines.compile_guard import CompileGuard
from extractor.engines.detok import byte_pieces
from extractor.engines.grammar_check import DEFAULT_COMPILE_TIMEOUT_S, local_tokenizer_dir
from extractor.engines.special_tokens import COMMON
from extractor.engines.vllm_schema import GuardedSchemas
from extractor.errors import (
    DocumentTooLarge,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    ExtractorError,
    GrammarNotEnforced,
    SchemaRejected,
)

#: vLLM's 400 for a prompt (plus max_tokens) over the model's context, across versions
_OVER_CONTEXT = re.compile(r"maximum context length|maximum model length|longer than the maximum|context length is",
                           re.IGNORECASE)

#: vLLM's 400 for a schema its structured-output backend refuses ("Grammar error: Ref recusion limit
#: reached", "Unsupported JSON Schema structure", "features not supported by xgrammar")
_SCHEMA_REFUSED = re.compile(r"grammar|json schema|xgrammar|guidance|structured output", re.IGNORECASE)

#: requests in flight to the server: what vLLM's scheduler batches by default (max_num_seqs 256)
DEFAULT_CONCURRENCY = 256

#: where the server is when no base_url is given
BASE_URL_ENV = "EXTRACTOR_VLLM_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"

#: a schema no model writes by chance: the start-up probe checks the server enforced it
PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"probe": {"type": "string", "enum": ["zq-7-enforced"]}, "n": {"type": "integer", "enum": [7321]}},
    "required": ["probe", "n"],
    "additionalProperties": False,
}


class _StatusError(Exception):
    """A non-2xx answer: its status, the server's message and the Retry-After it sent."""

    def __init__(self, status: int, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


@dataclass
class _Session:
    loop: asyncio.AbstractEventLoop
    http: httpx2.AsyncClient
    slots: asyncio.Semaphore
    start_lock: asyncio.Lock
    #: generation clients, each with its own small connection pool (see POOL_SIZE)
    pools: list[tuple[httpx2.AsyncClient, list[int]]]

    def least_busy(self) -> tuple[httpx2.AsyncClient, list[int]]:
        return min(self.pools, key=lambda p: p[1][0])


#: connections per pool. httpx's pool checks every idle connection of the pool each time a
#: request starts or ends; with one pool of 256 that check was half of the service's CPU per
#: request (py-spy, bench/service_overhead.py), with pools of 16 it is negligible.
POOL_SIZE = 16


def chat_request(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The JSON body of `POST /chat/completions` for one request.

    The schema goes in the standard `response_format`. vLLM takes whitespace and
    backend choices only server-wide (`--structured-outputs-config`); a per-request
    `structured_outputs` without its own schema is even refused with a 400, so
    none is sent.
    """
    body: dict[str, Any] = {
        "model": request.adapter.name if request.adapter is not None else model,
        # the server's tokenizer is out of reach: its common control tokens, as text, are defused
        "messages": [dict(m) for m in COMMON.messages(request.messages)],
        "temperature": request.temperature,
        "seed": request.seed,
        "max_tokens": request.max_tokens,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "extraction", "schema": dict(request.schema), "strict": True},
        },
    }
    if request.logprobs:
        body["logprobs"] = True
    if request.repetition_penalty != 1.0:
        body["repetition_penalty"] = request.repetition_penalty  # a vLLM extension of the OpenAI API
    return body


def parse_choice(response: dict[str, Any]) -> GenerationResult:
    """A chat completion's JSON -> the result of its first choice (KeyError, TypeError, IndexError
    or ValueError for a body that is no chat completion)."""
    choice = response["choices"][0]
    logprobs = None
    content = (choice.get("logprobs") or {}).get("content")
    if content is not None:
        # each token's UTF-8 bytes, where the server sends them, give its exact text (a character
        # split over two tokens is two replacement characters in `token`)
        tokens = ([t["token"] for t in content] if any(t.get("bytes") is None for t in content)
                  else byte_pieces([bytes(t["bytes"]) for t in content]))
        logprobs = tuple(TokenLogprob(token, float(t["logprob"])) for token, t in zip(tokens, content, strict=True))
    usage = response.get("usage") or {}
    text = choice["message"].get("content") or ""
    if not isinstance(text, str):
        raise TypeError(f"message content is {type(text).__name__}, not text")
    return GenerationResult(
        text=text,
        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        logprobs=logprobs,
    )


#: what a streamed request adds to its body: the usage comes in a last chunk of its own
STREAM_FIELDS: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}


class StreamedCompletion:
    """The Server-Sent Events of a streamed chat completion, line by line (`feed`), put back
    together as the JSON of an unstreamed one (`completion`, for `parse_choice`): the content's
    pieces joined, the finish reason, the token logprobs in order, the usage. The text so far goes
    to `on_text` after each piece holding a character that may close a JSON value."""

    def __init__(self, on_text: OnText) -> None:
        self.on_text = on_text
        self.pieces: list[str] = []
        self.finish_reason: str | None = None
        self.logprobs: list[Any] | None = None
        self.usage: dict[str, Any] = {}

    def feed(self, line: str) -> bool:
        """Read one line of the stream; True at its end (`data: [DONE]`). ValueError for a data line
        that is no chunk; an error the server sends mid-stream is an `EngineError`."""
        if not line.startswith("data:"):
            return False
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise ValueError(f"not a JSON object: {data[:120]!r}")
        if "error" in chunk or chunk.get("object") == "error":
            raise EngineError(f"the server failed mid-stream: {str(chunk.get('error') or chunk)[:300]}")
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") or ""
            if piece:
                self.pieces.append(piece)
                if any(c in piece for c in CLOSING_CHARS):
                    self.on_text("".join(self.pieces))
            content = (choice.get("logprobs") or {}).get("content")
            if content:
                if self.logprobs is None:
                    self.logprobs = []
                self.logprobs.extend(content)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return False

    def completion(self) -> dict[str, Any]:
        choice: dict[str, Any] = {"message": {"content": "".join(self.pieces)}, "finish_reason": self.finish_reason}
        if self.logprobs is not None:
            choice["logprobs"] = {"content": self.logprobs}
        return {"choices": [choice], "usage": self.usage}


PROBE_ANSWER = json.dumps({"probe": "zq-7-enforced", "n": 7321}, separators=(",", ":"))


def probe_enforced(result: GenerationResult) -> bool:
    """Whether the probe's answer shows the schema was enforced: the one JSON it allows, or (a
    server that allows any whitespace lets small models pad with newlines until max_tokens) a
    cut-off answer that is, whitespace aside, the start of it. No model writes `{"probe":"zq-7`
    by chance."""
    compact = "".join(result.text.split())
    if result.finish_reason == "stop":
        return compact == PROBE_ANSWER
    return len(compact) >= 2 and PROBE_ANSWER.startswith(compact)


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_message(response: httpx2.Response) -> str:
    """The server's own words: vLLM's `{"error": {"message"}}` / `{"message"}`, else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return response.text[:300]


class VllmHttpEngine(Engine):
    name = "vllm-http"

    def __init__(self, base_url: str | None = None, *, model: str | None = None, api_key: str = "EMPTY",
                 concurrency: int = DEFAULT_CONCURRENCY, timeout: float = 120.0, http_retries: int = 4, backoff_s: float = 0.5,
                 verify_grammar: bool = True, transport: httpx2.AsyncBaseTransport | None = None,
                 max_backoff_s: float = 30.0, grammar_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                 grammar_check_processes: int = 1, tokenizer: str | None = None,
                 compile_guard: CompileGuard | None = None) -> None:
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        self.model = model or ""
        self.http_retries = http_retries
        self.backoff_s = backoff_s
        #: no wait between retries is longer, whatever a server's Retry-After asks
        self.max_backoff_s = max_backoff_s
        self.verify_grammar = verify_grammar
        self.server_version: str | None = None
        self._api_key, self._timeout, self._concurrency, self._transport = api_key, timeout, concurrency, transport
        self._session: _Session | None = None
        self._started = False
        #: what the server's /v1/models lists: the base model and any LoRA adapters
        self.served: list[str] = []
        #: every schema is compiled here, killed past `grammar_timeout_s`, before the server sees it
        #: (`compile_guard.py`; the tokenizer: `tokenizer`, else the local model's when it is converted)
        if compile_guard is None and grammar_timeout_s > 0:
            compile_guard = CompileGuard.shared(tokenizer=tokenizer or local_tokenizer_dir(),
                                                timeout_s=grammar_timeout_s, processes=grammar_check_processes)
        #: schemas in the form vLLM hands to xgrammar, checked by the guard (`vllm_schema.py`)
        self.schemas = GuardedSchemas(compile_guard)

    @classmethod
    def capacity(cls, options: Mapping[str, Any]) -> Capacity:
        """As many in flight as the engine's own concurrency (256: what vLLM batches), and a few
        server processes on a box with cores to spare: one event loop spends a few ms of CPU per
        request, which caps a single process near 200-250 requests/s."""
        cores = os.cpu_count() or 1
        return Capacity(inflight=int(options.get("concurrency", DEFAULT_CONCURRENCY)), processes=max(1, min(4, cores // 4)))

    def _current(self) -> _Session:
        """The client of the running event loop: pooled connections belong to one loop, and the
        sync SDK runs a new loop per call."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.loop is not loop:
            n = self._concurrency
            clients = [self._new_client(min(POOL_SIZE, n - i)) for i in range(0, n, POOL_SIZE)]
            self._session = _Session(loop, clients[0], asyncio.Semaphore(n), asyncio.Lock(),
                                     [(c, [0]) for c in clients])
        return self._session

    def _new_client(self, connections: int) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=self._transport, timeout=self._timeout,
                                  headers={"authorization": f"Bearer {self._api_key}",
                                           "content-type": "application/json"},
                                  limits=httpx2.Limits(max_connections=connections,
                                                       max_keepalive_connections=connections))

    @property
    def _http(self) -> httpx2.AsyncClient:
        return self._current().http

    async def _request(self, client: httpx2.AsyncClient, method: str, path: str,
                       body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call: the answer's JSON, or `_StatusError` for a non-2xx answer (httpx2's transport
        errors pass through); a 2xx body that is not a JSON object is a `ValueError`."""
        content = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        response = await client.request(method, f"{self.base_url}{path}", content=content)
        if response.status_code >= 400:
            raise _StatusError(response.status_code, _error_message(response), _retry_after(response))
        answer = json.loads(response.content)
        if not isinstance(answer, dict):
            raise ValueError(f"not a JSON object: {response.text[:120]!r}")
        return answer

    # -- start-up -------------------------------------------------------------
    async def start(self) -> None:
        """Read the served models and version; check the grammar is enforced (once)."""
        session = self._current()
        async with session.start_lock:
            if not self._started:
                await self._start()
                self._started = True

    async def _start(self) -> None:
        try:
            models = await self._call(self._request, client=self._http, method="GET", path="/models")
            served = self.served = [str(m["id"]) for m in models["data"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineUnavailable(f"{self.base_url}/models is no model list: {str(models)[:120]!r}") from exc
        if not served:
            raise EngineUnavailable(f"{self.base_url} serves no model")
        if not self.model:
            self.model = served[0]
        elif self.model not in served:
            raise EngineUnavailable(f"{self.base_url} does not serve {self.model!r}; it serves {', '.join(served)}")
        root = self.base_url.removesuffix("/v1")
        try:
            version = await self._http.get(f"{root}/version")
            self.server_version = version.json().get("version") if version.status_code == 200 else None
        except (httpx2.HTTPError, ValueError):
            self.server_version = None
        if self.verify_grammar:
            await self._probe()

    async def _probe(self) -> None:
        probe = GenerationRequest(messages=({"role": "user", "content": "Say hello in one word."},),
                                  schema=PROBE_SCHEMA, max_tokens=64)
        result = self._parsed(await self._call(self._post_chat, client=self._http, body=self._body(probe)))
        if not probe_enforced(result):
            raise GrammarNotEnforced(
                f"{self.base_url} (vLLM {self.server_version or 'unknown version'}) ignored the JSON schema in "
                f"response_format: it answered {result.text[:80]!r}; refusing to trust its outputs")

    # -- generation -------------------------------------------------------------
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
        requests = await self._ready(requests)
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def generate_streaming(self, request: GenerationRequest, on_text: OnText) -> GenerationResult:
        """`TextStreaming`: the completion streamed (`"stream": true`, Server-Sent Events), its text
        so far handed to `on_text` after each piece that may close a JSON value."""
        (request,) = await self._ready([request])
        result = await self._one(request, on_text)
        on_text(result.text)
        return result

    async def _ready(self, requests: Sequence[GenerationRequest]) -> list[GenerationRequest]:
        """Requests in vLLM's form, their schemas checked (`vllm_schema.py`) and their adapters served."""
        await self.start()
        ready = await self.schemas.requests(requests)
        for adapter in {r.adapter for r in ready if r.adapter is not None}:
            if adapter.name not in self.served:
                raise EngineUnavailable(
                    f"{self.base_url} does not serve the adapter {adapter.name!r} (it serves {', '.join(self.served)}); "
                    f"start vLLM with --enable-lora --max-lora-rank {max(16, adapter.rank)} "
                    f"--lora-modules {adapter.name}={adapter.path}")
        return list(ready)

    async def _one(self, request: GenerationRequest, on_text: OnText | None = None) -> GenerationResult:
        session = self._current()
        async with session.slots:
            client, busy = session.least_busy()
            busy[0] += 1
            try:
                if on_text is None:
                    response = await self._call(self._post_chat, client=client, body=self._body(request))
                else:
                    response = await self._call(self._post_chat_stream, client=client, body=self._body(request),
                                                on_text=on_text)
            finally:
                busy[0] -= 1
        return self._parsed(response)

    def _parsed(self, response: Any) -> GenerationResult:
        """The completion's result; a body that is no chat completion (an HTML error page of a proxy,
        no choices, a cut body) is a typed engine error, never an AttributeError."""
        try:
            return parse_choice(response)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"{self.base_url} answered with no chat completion ({type(exc).__name__}: {exc}): "
                              f"{str(response)[:120]!r}") from exc

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt + 1`: the server's Retry-After if it sent one, else
        exponential (`backoff_s` x 2^attempt, jittered x0.5 to x1.5); never more than `max_backoff_s`."""
        delay = retry_after if retry_after is not None else self.backoff_s * 2 ** attempt * (0.5 + random.random())
        return max(0.0, min(delay, self.max_backoff_s))

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        return chat_request(request, self.model)

    async def _post_chat(self, client: httpx2.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._request(client, "POST", "/chat/completions", body)
        except ValueError as exc:  # a 200 that is no JSON object: an HTML page of a proxy, a cut body
            raise EngineError(f"{self.base_url} answered with no chat completion ({exc})") from exc

    async def _post_chat_stream(self, client: httpx2.AsyncClient, body: dict[str, Any],
                                on_text: OnText) -> dict[str, Any]:
        """A streamed chat completion, read as it comes and put back together as the JSON of an
        unstreamed one (`streamed_completion`); a retry after a dropped stream starts it again."""
        content = json.dumps({**body, **STREAM_FIELDS}, ensure_ascii=False).encode()
        async with client.stream("POST", f"{self.base_url}/chat/completions", content=content) as response:
            if response.status_code >= 400:
                await response.aread()
                raise _StatusError(response.status_code, _error_message(response), _retry_after(response))
            reader = StreamedCompletion(on_text)
            try:
                async for line in response.aiter_lines():
                    if reader.feed(line):
                        break
            except ValueError as exc:  # a data line that is no JSON chunk
                raise EngineError(f"{self.base_url} streamed no chat completion ({exc})") from exc
        if reader.finish_reason is None:  # cut before its end (a proxy, a server going down): sent again
            raise _StatusError(502, "the stream ended before its finish reason", None)
        return reader.completion()

    async def _call(self, fn: Any, **kwargs: Any) -> Any:
        """Call the server; back off and retry on 429, 5xx and dropped connections."""
        for attempt in range(self.http_retries + 1):
            try:
                return await fn(**kwargs)
            except _StatusError as exc:
                if exc.status not in (429, 500, 502, 503, 504) or attempt == self.http_retries:
                    raise self._typed(exc) from None
                delay = exc.retry_after
            except httpx2.TimeoutException as exc:
                if attempt == self.http_retries:
                    raise EngineTimeout(f"{self.base_url} did not answer in time") from exc
                delay = None
            except httpx2.TransportError as exc:
                if attempt == self.http_retries:
                    raise EngineUnavailable(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}",
                                            unreachable=True) from exc
                delay = None
            await asyncio.sleep(self.backoff_delay(attempt, delay))
        raise AssertionError("unreachable")

    def _typed(self, exc: _StatusError) -> ExtractorError:
        status = exc.status
        detail = f"{self.base_url} answered {status}: {exc.message}"[:500]
        if status == 400 and _OVER_CONTEXT.search(exc.message):
            return DocumentTooLarge(detail)  # this document's fault, not the engine's: the batch goes on
        if status == 400 and _SCHEMA_REFUSED.search(exc.message):
            return SchemaRejected("$", f"vLLM's grammar backend refused the schema: {detail}")  # 422; see grammar_fallback
        if status == 429:
            return EngineOverloaded(detail, retry_after=exc.retry_after)
        if status == 504:
            return EngineTimeout(detail)
        if status >= 500:
            return EngineUnavailable(detail, retry_after=exc.retry_after)
        return EngineError(detail)

    async def aclose(self) -> None:
        if self._session is not None:
            for client, _ in self._session.pools:
                await client.aclose()
            self._session = None
