"""Grammar compilation check with a time bound, in a process that can be killed.

xgrammar compiles some schemas for a very long time (deep `anyOf`, huge
enums); a compile runs in a child process and is killed past its timeout.
The child uses the local model's tokenizer when it is cached, otherwise a
tokenizer-free grammar build.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from extractor.errors import EngineUnavailable


@dataclass(frozen=True)
class GrammarCheck:
    ok: bool
    reason: str | None
    compile_ms: float


def _child(conn: Connection) -> None:
    import xgrammar as xgr

    compiler = None
    try:
        from transformers import AutoTokenizer

        from extractor.engines.local import converted_model_dir

        tok = AutoTokenizer.from_pretrained(converted_model_dir())
        compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok), max_threads=1, cache_enabled=False)
    except Exception:
        compiler = None
    conn.send("ready")
    while True:
        schema_json = conn.recv()
        if schema_json is None:
            return
        try:
            if compiler is not None:
                compiler.compile_json_schema(schema_json, any_whitespace=False, strict_mode=True)
            else:
                xgr.Grammar.from_json_schema(schema_json, any_whitespace=False, strict_mode=True)
            conn.send(None)
        except Exception as exc:
            conn.send(f"xgrammar: {exc}".splitlines()[0][:500])


class GrammarChecker:
    """Compiles schemas one by one in a worker process, restarting it after a timeout."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child,), daemon=True)
        self._proc.start()
        try:
            if not parent.poll(120):
                raise RuntimeError("did not start within 120 s")
            parent.recv()
        except (EOFError, OSError, RuntimeError) as exc:
            self.close(kill=True)
            raise EngineUnavailable(f"the grammar checker process failed to start: {exc}") from exc
        self._conn = parent
        return parent

    def check(self, strict_schema: dict[str, Any]) -> GrammarCheck:
        conn = self._conn or self._start()
        start = time.perf_counter()
        conn.send(json.dumps(strict_schema))
        if not conn.poll(self.timeout_s):
            self.close(kill=True)
            return GrammarCheck(False, f"grammar compilation took longer than {self.timeout_s:g}s",
                                (time.perf_counter() - start) * 1000)
        try:
            reason = conn.recv()
        except (EOFError, OSError):  # the compiler died on this schema (a crash, the OOM killer)
            self.close(kill=True)
            return GrammarCheck(False, "the grammar compiler crashed on this schema",
                                (time.perf_counter() - start) * 1000)
        return GrammarCheck(reason is None, reason, (time.perf_counter() - start) * 1000)

    def close(self, kill: bool = False) -> None:
        if self._proc is not None:
            if kill:
                self._proc.kill()
            elif self._conn is not None:
                with contextlib.suppress(OSError):  # a child that died already
                    self._conn.send(None)
            self._proc.join(5)
        self._proc = self._conn = None

    def __enter__(self) -> GrammarChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
