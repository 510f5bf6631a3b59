"""Grammar compilation with a time limit that is enforced: in a child process that is killed.

xgrammar compiles some schemas for a very long time (deep `anyOf`, huge enums, the per-document
schema of a document with thousands of candidate values: minutes and hundreds of MB) and has no
way to cancel a compile, so a thread cannot be stopped. A compile runs in a child process (spawned,
it imports xgrammar only) that is killed past its time limit and replaced on the next compile.

`GrammarProcess.compile` returns the compiled grammar serialized (`CompiledGrammar.serialize_json`)
for the engine to load (`deserialize_json`); `check` only says whether it compiles in time (the
`schemas check` command). Measured on SmolLM2's tokenizer (49,152 tokens; 2 busy CPU cores): the
person schema compiles in 20 ms, its round trip adds about 35 ms; a grounded invoice schema
compiles in 175 ms and its round trip adds about 0.5 s (serializing 2 MB of token masks), paid once
per distinct schema: compiled grammars are cached (`grammar_cache.py`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import multiprocessing as mp
import multiprocessing.util  # its exit handler registered before ours (`_wait_for_starts`), so it runs after
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from extractor.engines.base import JSON_SEPARATORS
from extractor.errors import EngineUnavailable, GrammarTimeout, SchemaRejected

#: seconds one grammar may take to compile, unless the engine or command says otherwise
DEFAULT_COMPILE_TIMEOUT_S = 30.0
_START_TIMEOUT_S = 120.0


#: a compile may take this many times its CPU-time limit in wall time, on a busy machine
WALL_FACTOR = 4.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU seconds of a running process (Linux's /proc), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


#: held while `__main__` is hidden for a child's start (`_start_spawned`)
_MAIN_LOCK = threading.Lock()
#: seconds the interpreter's exit waits for a child's start in progress (`_wait_for_starts`)
_EXIT_WAIT_S = 10.0
#: set at the interpreter's exit: no child is started after it
_EXITING = threading.Event()


class InterpreterExiting(RuntimeError):
    """A grammar child was to be started while the interpreter exits (a background start)."""


def _wait_for_starts() -> None:
    """At exit, let a child's start in progress (a background thread's) finish handing the child
    its preparation data, and start no other. Exiting in between left a child that read a closed
    pipe (`EOFError: Ran out of input`), and a child started after multiprocessing's exit handler
    had terminated the others outlived the parent (`BrokenPipeError` on its greeting): both
    printed a traceback to the parent's stderr, a service's JSON log, on Ctrl-C. A child started
    before this is among multiprocessing's children, which its own exit handler (run after this
    one: atexit runs the last registered first) terminates."""
    acquired = _MAIN_LOCK.acquire(timeout=_EXIT_WAIT_S)
    _EXITING.set()
    if acquired:
        _MAIN_LOCK.release()


atexit.register(_wait_for_starts)


def _start_spawned(proc: Any) -> None:
    """Start a spawned child without `__main__`. Spawn runs the parent's main module again in the
    child (by its path, or by its name under `-m`) unless it is hidden: a user's script with no
    `if __name__ == "__main__":` guard was run a second time in the grammar child, which died
    trying to start its own children, and a program read from standard input ("<stdin>", no file)
    killed it too; the parent then waited `_START_TIMEOUT_S` on every compile. The child needs
    nothing of `__main__`, so its path and spec are hidden while the child starts."""
    main = sys.modules.get("__main__")
    with _MAIN_LOCK:
        if _EXITING.is_set():
            raise InterpreterExiting("the interpreter is exiting: no grammar child is started")
        if main is None:
            proc.start()
            return
        path, spec = main.__dict__.pop("__file__", None), getattr(main, "__spec__", None)
        main.__spec__ = None
        try:
            proc.start()
        finally:
            main.__spec__ = spec
            if path is not None:
                main.__file__ = path


async def wait_event(event: threading.Event, limit_s: float = _START_TIMEOUT_S) -> None:
    """Wait, without a thread, until another thread sets `event` (at most `limit_s`)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not event.is_set() and loop.time() < end:
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class GrammarCheck:
    ok: bool
    reason: str | None
    compile_ms: float
    #: refused because the compile ran past the time limit (and was killed)
    timed_out: bool = False


def _child(conn: Connection, tokenizer_info_json: str | None, tokenizer: str | None = None) -> None:
    try:
        _serve(conn, tokenizer_info_json, tokenizer)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent is gone (it exited, or closed this child): nothing to say, no traceback


def _serve(conn: Connection, tokenizer_info_json: str | None, tokenizer: str | None) -> None:
    import xgrammar as xgr

    compiler = None
    learned = None
    if tokenizer_info_json is None and tokenizer is not None:
        try:  # here, not in the parent: a thin client (vllm-http) never imports transformers
            from transformers import AutoTokenizer

            tokenizer_info_json = learned = xgr.TokenizerInfo.from_huggingface(
                AutoTokenizer.from_pretrained(tokenizer)).serialize_json()
        except Exception as exc:
            conn.send(f"no tokenizer: {type(exc).__name__}: {exc}"[:500])
            return
    if tokenizer_info_json is not None:
        info = xgr.TokenizerInfo.deserialize_json(tokenizer_info_json)
        compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    # the tokenizer read here goes back to the parent: the next child starts from it, not from the
    # tokenizer's folder (a child killed past its limit is replaced; on the GPU box 12 children
    # started at once took 13 to 18 s each)
    conn.send(("ready", learned))
    while True:
        message = conn.recv()
        if message is None:
            return
        schema_json, serialize = message
        try:
            options: dict[str, Any] = {"any_whitespace": False, "separators": JSON_SEPARATORS, "strict_mode": True}
            if compiler is not None:
                grammar = compiler.compile_json_schema(schema_json, **options)
                conn.send(("ok", grammar.serialize_json() if serialize else None))
            else:
                xgr.Grammar.from_json_schema(schema_json, **options)
                conn.send(("ok", None))
        except Exception as exc:
            conn.send(("error", f"xgrammar: {exc}".splitlines()[0][:500]))


class GrammarProcess:
    """Compiles schemas one at a time in a child process; kills it past `timeout_s`.

    `tokenizer_info_json` (an xgrammar `TokenizerInfo` serialized), or `tokenizer` (a Hugging Face
    tokenizer's folder or name, loaded in the child), makes real token-mask compiles; without
    either the child only builds the tokenizer-free grammar (a cheaper check)."""

    def __init__(self, tokenizer_info_json: str | None = None, *, timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                 tokenizer: str | None = None) -> None:
        self.timeout_s = timeout_s
        self._info = tokenizer_info_json
        self._tokenizer = tokenizer
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one compile at a time: the child is one process
        #: set once the first start has ended, started or failed (`wait_event` awaits it)
        self.start_tried = threading.Event()

    @property
    def tokenizer_info_json(self) -> str | None:
        """The tokenizer this process compiles with, serialized: as given, or as its child read it
        from the tokenizer's folder (then the next child starts from it)."""
        return self._info

    @property
    def _ready(self) -> bool:
        return self._proc is not None

    def start(self) -> None:
        """Start the child now (it takes seconds to import xgrammar) instead of on first compile."""
        try:
            with self._lock:
                self._started()
        finally:
            self.start_tried.set()

    def _started(self) -> Connection:
        if self._conn is not None:
            return self._conn
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, self._info, self._tokenizer), name="grammar-compiler",
                           daemon=True)
        try:
            _start_spawned(proc)
        finally:
            child.close()
        self._proc = proc
        try:
            if not parent.poll(_START_TIMEOUT_S):
                raise RuntimeError(f"did not start within {_START_TIMEOUT_S:g} s")
            greeting = parent.recv()
            if not (isinstance(greeting, tuple) and greeting[0] == "ready"):
                raise RuntimeError(greeting)
            if greeting[1] is not None:
                self._info = greeting[1]
        except (EOFError, OSError, RuntimeError) as exc:
            self._stop(kill=True)
            if _EXITING.is_set():  # terminated by multiprocessing's exit handler: not a failure
                raise InterpreterExiting("the interpreter exited while the grammar child started") from exc
            raise EngineUnavailable(f"the grammar compiler process failed to start: {exc}") from exc
        self._conn = parent
        return parent

    def _ask(self, schema_json: str, serialize: bool) -> tuple[str, str | None, float]:
        """(verdict, payload, ms): verdict "ok", "error" (payload: why), "timeout" or "crash"."""
        with self._lock:
            conn = self._started()
            start = time.perf_counter()
            pid = self._proc.pid if self._proc is not None else None
            cpu_start = _cpu_seconds(pid)
            conn.send((schema_json, serialize))
            if not self._answered(conn, start, pid, cpu_start):
                self._stop(kill=True)
                return "timeout", None, (time.perf_counter() - start) * 1000
            try:
                verdict, payload = conn.recv()
            except (EOFError, OSError):  # the compiler died on this schema (a crash, the OOM killer)
                self._stop(kill=True)
                return "crash", None, (time.perf_counter() - start) * 1000
            return verdict, payload, (time.perf_counter() - start) * 1000

    def _answered(self, conn: Connection, start: float, pid: int | None, cpu_start: float | None) -> bool:
        """Wait for the child's answer: at most `timeout_s` of its CPU time, and at most
        `WALL_FACTOR` times that in all. The limit is the schema's cost, not the machine's load: on
        the H200, with 12 children and vLLM on 16 cores, 64 compiles of one run that would have
        been cut at 5 s of wall time finished within 5 s of CPU time, 5 to 8 s of wall time (each
        cut one is a child killed and restarted, the restarts loading the machine further). Where
        the child's CPU time cannot be read (no /proc), the limit is `timeout_s` of wall time."""
        if conn.poll(self.timeout_s):
            return True
        while time.perf_counter() - start < self.timeout_s * WALL_FACTOR:
            now = _cpu_seconds(pid)
            if now is None or cpu_start is None:
                return False
            used = now - cpu_start
            if used >= self.timeout_s:
                return False
            if conn.poll(min(0.25, max(0.01, self.timeout_s - used))):
                return True
        return False

    def _reason(self, verdict: str, payload: str | None) -> str:
        if verdict == "timeout":
            return f"grammar compilation took longer than {self.timeout_s:g}s (of the compiler's CPU time)"
        if verdict == "crash":
            return "the grammar compiler crashed on this schema"
        return payload or "xgrammar refused the schema"

    def compile(self, schema_json: str) -> str:
        """The compiled grammar, serialized; `SchemaRejected` (`GrammarTimeout` past the limit)."""
        verdict, payload, _ = self._ask(schema_json, serialize=True)
        if verdict == "ok" and payload is not None:
            return payload
        reason = self._reason(verdict, payload)
        raise (GrammarTimeout if verdict == "timeout" else SchemaRejected)("$", reason)

    def check(self, strict_schema: Mapping[str, Any] | str) -> GrammarCheck:
        """Whether the schema (a mapping, or its JSON) compiles within the limit; nothing is kept."""
        schema_json = strict_schema if isinstance(strict_schema, str) else json.dumps(strict_schema)
        verdict, payload, ms = self._ask(schema_json, serialize=False)
        return GrammarCheck(verdict == "ok", None if verdict == "ok" else self._reason(verdict, payload), ms,
                            timed_out=verdict == "timeout")

    def _stop(self, kill: bool) -> None:
        if self._proc is not None:
            if kill:
                self._proc.kill()
            elif self._conn is not None:
                with contextlib.suppress(OSError):  # a child that died already
                    self._conn.send(None)
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self, kill: bool = False) -> None:
        with self._lock:
            self._stop(kill)

    def __enter__(self) -> GrammarProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def local_tokenizer_info_json() -> str | None:
    """The local model's tokenizer, serialized for the child, when the model is converted already."""
    try:
        import xgrammar as xgr
        from transformers import AutoTokenizer

        from extractor.engines.local import converted_model_dir, packaged_gguf

        gguf = packaged_gguf()
        folder = converted_model_dir(gguf)
        tok = AutoTokenizer.from_pretrained(folder)
        return str(xgr.TokenizerInfo.from_huggingface(tok).serialize_json())
    except Exception:
        return None


def local_tokenizer_dir() -> str | None:
    """The local model's folder, tokenizer included, when it is converted already (nothing is
    converted or imported here)."""
    try:
        from extractor.engines.local import converted_model_path

        target = converted_model_path()
    except Exception:
        return None
    return str(target) if (target / "tokenizer.json").exists() else None


class GrammarChecker(GrammarProcess):
    """`schemas check`: real compiles against the local model's tokenizer when it is cached,
    otherwise the tokenizer-free grammar build."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        super().__init__(local_tokenizer_info_json(), timeout_s=timeout_s)
