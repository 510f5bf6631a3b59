"""A schema's grammar compiled in our killable child before it goes to an engine that compiles
it where we cannot stop it.

vLLM (in process and over HTTP alike) compiles each new JSON schema's grammar inside its engine,
with no time limit: one hostile schema can keep its grammar threads and memory for minutes,
stalling every request behind it. The `local` engine compiles in a child process killed past its
limit (`grammar_check.py`); `CompileGuard` gives the vLLM engines the same limit: before a schema
they have not sent yet goes out, it is compiled by xgrammar in a `GrammarProcess` child, killed
past `timeout_s`, and refused past it (`GrammarTimeout`) or when xgrammar refuses it
(`SchemaRejected`), both 422 (`extractor/errors.py`). Nothing reaches vLLM then.

Each verdict is kept by the SHA-256 of the schema's JSON (a bounded LRU of `max_entries`
verdicts, refusals included: a refused schema sent again is refused at once), and concurrent
checks of one schema share one compile; engines of one process with the same tokenizer and limit
share one guard (`CompileGuard.shared`). Compiles run in a pool of up to `processes` children
(started on demand; the first in the background at once), driven from threads of the guard's own,
never on the event loop nor in the default thread pool. The per-document schemas of grounded
decoding (and of a long document's rows) are not compiled here: each is the task's schema, which
passed here, with its strings narrowed to the document's text and its size bounded
(`ConstraintBudget.max_schema_bytes`), so it is `admit`ted unchecked and vLLM compiles it in its
own grammar threads. Checking each of them in turn in one child held 256 receipts at once behind
one another past their compile budget (on the H200: 113 of 300 valid, 0.48x plain docs/s), and a
long document's rows 15 to 30 s each.

The compile is xgrammar's with the tokenizer given (a `TokenizerInfo` serialized, or a Hugging Face
tokenizer's folder or name, loaded in the child); without one it builds the grammar alone,
without token masks (a cheaper, weaker check). It is our compile, not
vLLM's own (another backend, or its whitespace setting, may take longer), and costs a compile
per distinct schema: with grounded decoding, one per document. `grammar_timeout_s=0` on a vLLM
engine turns the guard off (schemas you trust only).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from extractor.engines.grammar_check import (
    DEFAULT_COMPILE_TIMEOUT_S,
    GrammarCheck,
    GrammarProcess,
    InterpreterExiting,
    wait_event,
)
from extractor.errors import GrammarTimeout, SchemaRejected

log = logging.getLogger(__name__)

#: verdicts kept (a digest and a short reason each: about 200 bytes)
DEFAULT_MAX_ENTRIES = 4096

#: None: compiles within the limit; else (timed out, why not)
Verdict = tuple[bool, str] | None


#: how much later than a schema of 0 bytes a larger one waiting with it is due: 1 s per KB
AGING_BYTES_PER_S = 1000.0


_SHARED: dict[tuple[str | None, float, int], CompileGuard] = {}
_SHARED_LOCK = threading.Lock()


def schema_digest(schema: Mapping[str, Any]) -> str:
    """The SHA-256 of the schema's JSON as it is sent (key order kept: it is the order written)."""
    return hashlib.sha256(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


class CompileGuard:
    """`await guard.check(schema)`: returns when the schema compiles within `timeout_s`, raises
    `GrammarTimeout` or `SchemaRejected` when it does not (see the module docstring)."""

    #: the order waiting schemas are compiled in (`bench/guard_queue.py` records it): the one whose
    #: arrival plus its size at `AGING_BYTES_PER_S` comes first, so a small schema is not held behind
    #: the large ones that arrived with it (on the H200 119 of 346 real-world schemas under 1.5 KB
    #: waited over 200 s behind the heavy ones of their run), and a large one waits at most its size
    #: at that rate for smaller ones that arrive after it
    ORDER = "smallest first, aged"

    def __init__(self, tokenizer_info_json: str | None = None, *, tokenizer: str | None = None,
                 timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S, processes: int = 1,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if processes < 1 or max_entries < 1:
            raise ValueError("processes and max_entries must be at least 1")
        self.timeout_s = timeout_s
        self.processes = processes
        self.max_entries = max_entries
        self._info, self._tokenizer = tokenizer_info_json, tokenizer
        self._idle: queue.SimpleQueue[GrammarProcess] = queue.SimpleQueue()
        self._all: list[GrammarProcess] = []
        self._pool_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=processes, thread_name_prefix="compile-guard")
        #: digest -> None (compiles in time) or (timed out, reason)
        self._verdicts: OrderedDict[str, Verdict] = OrderedDict()
        self._pending: dict[str, Future[Verdict]] = {}
        #: schemas waiting for a child: (when it is due, arrival order, digest, JSON, its future)
        self._waiting: list[tuple[float, int, str, str, Future[Verdict]]] = []
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        #: compiles run, refusals included
        self.compiles = 0
        self._closed = False
        self.warmed = threading.Event()
        threading.Thread(target=self._warm, name="compile-guard-start", daemon=True).start()

    @classmethod
    def shared(cls, *, tokenizer: str | None = None, timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
               processes: int = 1) -> CompileGuard:
        """The guard of this process for these settings: engines with the same tokenizer and limit
        share its children and verdicts (an engine per call or per test would otherwise start
        children of its own). Never closed by an engine; its children end with the process."""
        key = (tokenizer, float(timeout_s), int(processes))
        with _SHARED_LOCK:
            guard = _SHARED.get(key)
            if guard is None or guard._closed:
                guard = _SHARED[key] = cls(tokenizer=tokenizer, timeout_s=timeout_s, processes=processes)
            return guard

    # -- the child processes -----------------------------------------------------------------
    def _warm(self) -> None:
        """Start the first child now: importing xgrammar (and loading a tokenizer) takes seconds."""
        process = self._take()
        try:
            process.start()
        except InterpreterExiting:
            pass
        except Exception as exc:  # the first check starts one again and says why
            log.warning("compile guard: the grammar compiler process did not start: %s", exc)
        finally:
            self._idle.put(process)
            self.warmed.set()

    async def ready(self) -> None:
        """Return once the first child has started (or failed to: the next check says why)."""
        await wait_event(self.warmed)

    def _take(self) -> GrammarProcess:
        """An idle child, a new one while the pool has room, else wait for one."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._pool_lock:
            if len(self._all) < self.processes:
                # a tokenizer one child read already: the new child need not read it again
                self._info = self._info or next((p.tokenizer_info_json for p in self._all if p.tokenizer_info_json), None)
                process = GrammarProcess(self._info, timeout_s=self.timeout_s, tokenizer=self._tokenizer)
                self._all.append(process)
                return process
        return self._idle.get()

    def _compile(self, schema_json: str) -> GrammarCheck:
        process = self._take()
        try:
            process.timeout_s = self.timeout_s
            return process.check(schema_json)
        finally:
            self._idle.put(process)

    # -- verdicts ------------------------------------------------------------------------------
    def known(self, schema: Mapping[str, Any]) -> bool:
        """Whether a verdict on `schema` is kept (it will not be compiled again)."""
        with self._lock:
            return schema_digest(schema) in self._verdicts

    def admit(self, schema: Mapping[str, Any]) -> None:
        """Keep `schema` as compiling in time without compiling it: one the library derived from a
        schema this guard passed, or bounded by construction (`Engine.admit`). A refusal kept
        stays; a time-out kept does not: a compile past the limit says as much about the load of
        the moment as about the schema (on the H200, with 12 children at 256 schemas in flight,
        schemas of 139 characters that compile in 12 ms here timed out, and a raw schema's
        skeleton is often the schema itself)."""
        key = schema_digest(schema)
        with self._lock:
            verdict = self._verdicts.get(key)
            if verdict is not None and not verdict[0]:  # a refusal
                self._verdicts.move_to_end(key)
            else:
                self._keep(key, None)

    def _keep(self, key: str, verdict: Verdict) -> None:
        """Keep a verdict, the least recently used ones past `max_entries` dropped (under the lock)."""
        self._verdicts[key] = verdict
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > self.max_entries:
            self._verdicts.popitem(last=False)

    async def check(self, schema: Mapping[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("the compile guard is closed")
        key = schema_digest(schema)
        with self._lock:
            if key in self._verdicts:
                self._verdicts.move_to_end(key)
                _refuse(self._verdicts[key])
                return
            pending = self._pending.get(key)
            if pending is None:
                text = json.dumps(dict(schema))
                pending = self._pending[key] = Future()
                due = time.monotonic() + len(text) / AGING_BYTES_PER_S
                heapq.heappush(self._waiting, (due, next(self._arrivals), key, text, pending))
                self._executor.submit(self._next)  # one run per schema: it compiles the first due
        # shielded: a caller that gives up (its deadline, grounded decoding's compile budget) does not
        # stop the compile, whose verdict is kept for the next caller; concurrent callers share it
        _refuse(await asyncio.shield(asyncio.wrap_future(pending)))

    def _next(self) -> None:
        """Compile the waiting schema that is due first (`ORDER`), in a guard thread."""
        with self._lock:
            if not self._waiting:
                return
            _, _, key, text, future = heapq.heappop(self._waiting)
        try:
            future.set_result(self._settle(key, text))
        except BaseException as exc:
            future.set_exception(exc)

    def _settle(self, key: str, schema_json: str) -> Verdict:
        """Compile (in a guard thread), keep the verdict and return it. A compiler that cannot
        start raises: no verdict is kept, the next call tries again."""
        try:
            result = self._compile(schema_json)
        except BaseException:
            with self._lock:
                self._pending.pop(key, None)
            raise
        verdict = None if result.ok else (result.timed_out, result.reason or "the grammar does not compile")
        with self._lock:
            self.compiles += 1
            if verdict is not None and verdict[0] and key in self._verdicts and self._verdicts[key] is None:
                verdict = None  # admitted while this compile ran (`admit`): a time-out does not undo it
            self._keep(key, verdict)
            self._pending.pop(key, None)
        if verdict is not None:
            log.warning("compile guard: schema %s refused: %s", key[:12], verdict[1])
        return verdict

    def close(self) -> None:
        """Stop the children (killed: a compile in progress is dropped)."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            waiting, self._waiting = self._waiting, []
            for *_, key, _text, future in waiting:
                self._pending.pop(key, None)
                future.set_exception(RuntimeError("the compile guard is closed"))
        with self._pool_lock:
            processes, self._all = self._all, []
        for process in processes:
            process.close(kill=True)


def _refuse(verdict: Verdict) -> None:
    """Raise the typed error of a refusal (nothing for a schema that compiles in time)."""
    if verdict is not None:
        timed_out, reason = verdict
        raise (GrammarTimeout if timed_out else SchemaRejected)("$", f"{reason} (checked before it went to vLLM)")
