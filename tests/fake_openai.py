"""A fake vLLM OpenAI server on loopback (a real uvicorn in a thread), for the engine fault tests.

It serves `/v1/models`, `/version` and `/v1/chat/completions`. Chat requests are answered by
`reply(body) -> Reply` (by default: a valid person, the start-up probe's answer, `{"ok": true}`
for the service's readiness probe). It can be stopped and started again on the same port (vLLM
down at start, going down and coming back), answer slowly, with 429/503 and `Retry-After`, with
a body that is no chat completion, or with vLLM's 400 for a prompt over the model's context.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from extractor.engines.vllm_http import PROBE_ANSWER, PROBE_SCHEMA

GOOD = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
MODEL = "SmolLM2-135M-Instruct"
CONTEXT_400 = ("This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
               "(8800 in the messages, 200 in the completion). Please reduce the length of the messages or completion.")


@dataclass
class Reply:
    content: str = GOOD
    finish: str = "stop"
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    #: a raw body instead of a chat completion (an HTML error page, a cut body)
    raw: bytes | None = None
    #: a streamed request (`"stream": true`): the pause between two pieces of the content
    step: float = 0.0
    #: a streamed request: the stream stops after its content, with no finish reason nor [DONE]
    cut: bool = False


def completion(text: str, finish: str = "stop") -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}


def stream_chunks(text: str, finish: str = "stop") -> list[str]:
    """The Server-Sent Events of a streamed completion of `text`, a piece up to each `,`, `}` or
    `]`, then the finish reason, the usage and `[DONE]` (as vLLM sends them)."""
    pieces, start = [], 0
    for end, char in enumerate(text, 1):
        if char in ",}]":
            pieces.append(text[start:end])
            start = end
    if start < len(text):
        pieces.append(text[start:])
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{**head, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({**head, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def default_reply(body: dict[str, Any]) -> Reply:
    props = body["response_format"]["json_schema"]["schema"].get("properties", {})
    if "ok" in props:
        return Reply('{"ok": true}')
    return Reply(GOOD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hold(port: int) -> socket.socket:
    """A bound socket that does not listen: connections to the port are refused, as to a server
    that is down, and no other process's `free_port` can take the port meanwhile."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class FakeOpenAI:
    def __init__(self, reply: Callable[[dict[str, Any]], Reply] = default_reply, *,
                 max_prompt_chars: int | None = None) -> None:
        self.port = free_port()
        #: holds the port while the server is down (other test runs on the machine pick free ports too)
        self._placeholder: socket.socket | None = _hold(self.port)
        self.reply = reply
        self.max_prompt_chars = max_prompt_chars
        #: every chat body received, start-up probes excepted
        self.bodies: list[dict[str, Any]] = []
        self.answered = 0
        #: stop serving (connections refused) once this many chat requests were answered
        self.down_after: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/models", self._models), Route("/version", self._version),
                                     Route("/v1/chat/completions", self._chat, methods=["POST"])])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _version(self, request: Request) -> Response:
        return JSONResponse({"version": "0.26.0"})

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if body["response_format"]["json_schema"]["schema"] == PROBE_SCHEMA:
            return JSONResponse(completion(PROBE_ANSWER))
        with self._lock:
            if self.down_after is not None and self.answered >= self.down_after:
                threading.Thread(target=self.stop, daemon=True).start()  # goes down with this request in flight
                going_down = True
            else:
                going_down = False
                self.bodies.append(body)
        if going_down:
            await asyncio.sleep(30)  # cut by the shutdown
        prompt = sum(len(m["content"]) for m in body["messages"])
        if self.max_prompt_chars is not None and prompt > self.max_prompt_chars:
            return JSONResponse({"object": "error", "message": CONTEXT_400, "type": "BadRequestError", "code": 400},
                                status_code=400)
        reply = self.reply(body)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        with self._lock:
            self.answered += 1
        if reply.raw is not None:
            return Response(reply.raw, status_code=reply.status, headers=reply.headers, media_type="text/html")
        if reply.status != 200:
            return JSONResponse({"object": "error", "message": f"scripted {reply.status}", "code": reply.status},
                                status_code=reply.status, headers=reply.headers)
        if body.get("stream"):
            return StreamingResponse(self._stream(reply), media_type="text/event-stream", headers=reply.headers)
        return JSONResponse(completion(reply.content, reply.finish), headers=reply.headers)

    async def _stream(self, reply: Reply) -> AsyncIterator[str]:
        chunks = stream_chunks(reply.content, reply.finish)
        for chunk in chunks[:-3] if reply.cut else chunks:
            yield chunk
            await asyncio.sleep(reply.step)

    def start(self) -> FakeOpenAI:
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off",
                                timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"fake-openai-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the fake OpenAI server did not start on port {self.port}")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        with self._lock:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.should_exit = True
        if thread is not threading.current_thread():
            thread.join(timeout=30)
            with self._lock:
                if self._server is None and self._placeholder is None:
                    try:
                        self._placeholder = _hold(self.port)
                    except OSError:  # taken meanwhile, or still closing: the port is simply left free
                        pass

    def close(self) -> None:
        self.stop()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None


@contextmanager
def fake_openai(reply: Callable[[dict[str, Any]], Reply] = default_reply, *, start: bool = True,
                max_prompt_chars: int | None = None) -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(reply, max_prompt_chars=max_prompt_chars)
    if start:
        server.start()
    try:
        yield server
    finally:
        server.close()
