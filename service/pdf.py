"""PDF text, read in worker processes of their own, within limits, cancelled with the request.

pypdf parses content streams in Python: a 4 KB PDF whose pages share one 1 MB compressed content
stream costs about a minute of CPU. Read in the event loop's default thread pool, that minute ran
outside the request's deadline, went on after the client hung up, and starved the batch database
that shares the pool. Here each PDF is read by a child process of a small pool, under
`PdfLimits`: a page count, a bound on the decoded content-stream bytes of all pages together
(a stream shared by many pages counts once per page: that is what extraction reads), and a time
limit. Past the time limit, or when the request is cancelled (its deadline, a client gone), the
child is killed and a fresh one takes its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing as mp
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from extractor.errors import DocumentTooLarge, ExtractorError, UndecodableDocument


@dataclass(frozen=True)
class PdfLimits:
    max_pages: int = 500
    #: decoded content-stream bytes read over all pages (one stream shared by 20 pages counts 20 times)
    max_content_bytes: int = 32 * 1024 * 1024
    timeout_s: float = 20.0


DEFAULT_PDF_LIMITS = PdfLimits()


def pdf_text(raw: bytes, limits: PdfLimits = DEFAULT_PDF_LIMITS) -> str:
    """The text layer of a PDF, pages separated by blank lines; `DocumentTooLarge` past the page or
    content limits (checked before any text is extracted), `UndecodableDocument` if unreadable."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UndecodableDocument("the PDF is encrypted")
        pages = reader.pages
        if len(pages) > limits.max_pages:
            raise DocumentTooLarge(f"the PDF has {len(pages)} pages; the limit is {limits.max_pages}",
                                   limit=limits.max_pages)
        content = 0
        for number, page in enumerate(pages, 1):
            stream = page.get_contents()
            content += len(stream.get_data()) if stream is not None else 0
            if content > limits.max_content_bytes:
                raise DocumentTooLarge(f"the PDF's content streams exceed {limits.max_content_bytes} bytes "
                                       f"(by page {number})", limit=limits.max_content_bytes)
        text = "\n\n".join((page.extract_text() or "").strip() for page in pages).strip()
        return text.replace("\x00", "")  # unmapped glyphs: no part of the text
    except ExtractorError:
        raise
    except Exception as exc:  # pypdf raises many types on malformed input; all mean "unreadable"
        raise UndecodableDocument(f"not a readable PDF: {type(exc).__name__}: {exc}") from exc


def _serve(conn: Connection, limits: PdfLimits) -> None:
    while True:
        try:
            raw = conn.recv_bytes()
        except EOFError:
            return
        try:
            conn.send(("ok", pdf_text(raw, limits)))
        except ExtractorError as exc:
            conn.send(("error", exc))


class _Child:
    def __init__(self, limits: PdfLimits) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc: Any = ctx.Process(target=_serve, args=(child, limits), name="pdf-reader", daemon=True)
        self.proc.start()
        child.close()
        self._kill_lock = threading.Lock()

    def read(self, raw: bytes, timeout_s: float) -> tuple[str, Any]:
        """Blocking: ("ok", text), ("error", ExtractorError), or ("timeout" | "died", None)."""
        try:
            self.conn.send_bytes(raw)
            if not self.conn.poll(timeout_s):
                return "timeout", None
            verdict, payload = self.conn.recv()
            return verdict, payload
        except (EOFError, OSError):
            return "died", None

    def kill(self) -> None:
        """Kill the child and close its pipe, once: a cancelled read kills it from the event loop
        while its waiting thread, seeing it die, kills it too (two closes of one pipe raced, and
        one raised `OSError: Bad file descriptor`)."""
        with self._kill_lock:
            if self.conn.closed:
                return
            self.proc.kill()
            self.proc.join(5)
            self.conn.close()


class PdfReaders:
    """At most `workers` PDFs read at once, each in a child process; started on first use."""

    def __init__(self, workers: int = 2, limits: PdfLimits = DEFAULT_PDF_LIMITS) -> None:
        self.limits = limits
        self._idle: list[_Child] = []
        self._lock = threading.Lock()
        self._workers = workers
        # its own threads wait on the children: never the default pool (the batch database's)
        self._waiters = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pdf-wait")

    def _take(self) -> _Child:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Child(self.limits)

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            self._idle.append(child)

    def _read(self, raw: bytes, state: dict[str, Any]) -> tuple[str, Any]:
        child = self._take()
        state["child"] = child
        if state.get("cancelled"):
            child.kill()
            return "cancelled", None
        verdict, payload = child.read(raw, self.limits.timeout_s)
        if verdict in ("ok", "error"):
            self._give_back(child)
        else:
            child.kill()
        return verdict, payload

    async def text(self, raw: bytes) -> str:
        state: dict[str, Any] = {}
        # at most `workers` reads at once: the rest wait for a thread of the pool
        future = asyncio.get_running_loop().run_in_executor(self._waiters, self._read, raw, state)
        try:
            verdict, payload = await asyncio.shield(future)
        except asyncio.CancelledError:  # the request's deadline, or its client gone: stop the read
            state["cancelled"] = True
            child = state.get("child")
            if child is not None:
                child.kill()
            raise
        if verdict == "ok":
            return str(payload)
        if verdict == "error":
            raise payload
        if verdict == "timeout":
            raise DocumentTooLarge(f"reading the PDF took longer than {self.limits.timeout_s:g} s",
                                   limit=self.limits.timeout_s)
        raise UndecodableDocument("the PDF reader crashed on this PDF")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            with contextlib.suppress(Exception):
                child.kill()
        # a later read (the app started again) gets new threads
        waiters, self._waiters = self._waiters, ThreadPoolExecutor(self._workers, thread_name_prefix="pdf-wait")
        waiters.shutdown(wait=False, cancel_futures=True)
