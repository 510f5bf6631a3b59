"""Where a long benchmark run spends its time, recorded from inside the process (no py-spy on the
GPU box): a stack sampler over every thread, and a timeline of the compile guard's children
(each start, each compile with its verdict).

    hooks = ProfileHooks.install(interval_s=2.0, autosave=path)  # before the engine starts
    hooks.requests.wrap(engine)        # per item: seconds in the compile guard and in generation
    ...                                # each item run under RequestTimes.current.set(item_id)
    hooks.write(path)                  # the hottest stacks per thread, the guard's timeline

With `VLLM_ENABLE_V1_MULTIPROCESSING=0` vLLM runs its engine core in this process, so the
sampler sees the scheduler and the grammar threads too.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter, defaultdict
from contextvars import ContextVar
from pathlib import Path
from typing import Any

#: frames kept per sample, innermost first
DEPTH = 6


def _frame_label(frame: Any) -> str:
    code = frame.f_code
    path = code.co_filename
    for marker in ("site-packages/", "/extractor/", "/bench/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = Path(path).name  # the standard library's
    return f"{path}:{code.co_name}:{frame.f_lineno}"


class StackSampler:
    """Every `interval_s`, the innermost `DEPTH` frames of each thread, counted per thread name."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.samples = 0
        self.stacks: dict[str, Counter[str]] = defaultdict(Counter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stack-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval_s):
            names = {t.ident: t.name for t in threading.enumerate()}
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                labels = []
                f: Any = frame
                while f is not None and len(labels) < DEPTH:
                    labels.append(_frame_label(f))
                    f = f.f_back
                name = names.get(ident, str(ident)).rstrip("0123456789_-")
                self.stacks[name][" < ".join(labels)] += 1

    def summary(self, top: int = 8) -> dict[str, Any]:
        return {"samples": self.samples, "interval_s": self.interval_s,
                "threads": {name: [{"count": n, "stack": s} for s, n in Counter(dict(c)).most_common(top)]
                            for name, c in sorted(list(self.stacks.items()))}}


class GuardTimeline:
    """Each start and each compile of the compile guard's children, with its time and verdict."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, **event: Any) -> None:
        with self._lock:
            self.events.append({"at_s": round(time.perf_counter() - self.t0, 2), **event})

    def install(self) -> None:
        from extractor.engines import grammar_check

        cls = grammar_check.GrammarProcess
        started, ask = cls._started, cls._ask
        timeline = self

        def timed_started(process: Any) -> Any:
            if process._conn is not None:
                return started(process)
            begin = time.perf_counter()
            try:
                return started(process)
            finally:
                timeline.add(event="child_start", seconds=round(time.perf_counter() - begin, 2))

        def timed_ask(process: Any, schema_json: str, serialize: bool) -> Any:
            begin = time.perf_counter()
            verdict, payload, ms = ask(process, schema_json, serialize)
            timeline.add(event="compile", verdict=verdict, bytes=len(schema_json), compile_ms=round(ms),
                         seconds=round(time.perf_counter() - begin, 2))
            return verdict, payload, ms

        cls._started = timed_started  # type: ignore[method-assign]
        cls._ask = timed_ask  # type: ignore[method-assign]

    def summary(self) -> dict[str, Any]:
        starts = [e["seconds"] for e in self.events if e["event"] == "child_start"]
        compiles = [e for e in self.events if e["event"] == "compile"]
        return {"child_starts": len(starts), "child_start_seconds": round(sum(starts), 1),
                "compiles": dict(Counter(e["verdict"] for e in compiles)),
                "compile_seconds": round(sum(e["seconds"] for e in compiles), 1),
                "events": self.events}


class RequestTimes:
    """Per item of the run (`current`, set by the benchmark around each item): the seconds its
    engine calls spent in the compile guard (`prepare`) and in generation, and the tokens."""

    current: ContextVar[str | None] = ContextVar("profile_item", default=None)

    def __init__(self) -> None:
        self.items: dict[str, Counter[str]] = defaultdict(Counter)

    def wrap(self, engine: Any) -> None:
        """Time `engine`'s generation, and its guard's checks where it has one (`schemas.check` of
        the vLLM engines: inside `generate` too, so `generate_s` includes `guard_s`), else `prepare`."""
        owner = getattr(engine, "schemas", None)
        owner, name = (owner, "check") if owner is not None and hasattr(owner, "check") else (engine, "prepare")
        check, generate = getattr(owner, name), engine.generate
        items, current = self.items, self.current

        async def timed_check(schema: Any) -> Any:
            begin = time.perf_counter()
            try:
                return await check(schema)
            finally:
                items[current.get() or "?"]["guard_s"] += time.perf_counter() - begin

        async def timed_generate(requests: Any) -> Any:
            begin = time.perf_counter()
            key = current.get() or "?"
            try:
                results = await generate(requests)
            finally:
                items[key]["generate_s"] += time.perf_counter() - begin
                items[key]["calls"] += 1
            items[key]["completion_tokens"] += sum(r.completion_tokens for r in results)
            items[key]["prompt_tokens"] += sum(r.prompt_tokens for r in results)
            return results

        setattr(owner, name, timed_check)
        engine.generate = timed_generate

    def summary(self) -> dict[str, Any]:
        return {key: {k: round(v, 2) for k, v in list(c.items())} for key, c in list(self.items.items())}


class ProfileHooks:
    def __init__(self, interval_s: float) -> None:
        self.sampler = StackSampler(interval_s)
        self.guard = GuardTimeline()
        self.requests = RequestTimes()

    @classmethod
    def install(cls, interval_s: float = 2.0, autosave: Path | None = None, every_s: float = 30.0) -> ProfileHooks:
        """Start sampling; with `autosave`, the profile is also written there every `every_s`
        (a run cut by `timeout` keeps it)."""
        hooks = cls(interval_s)
        hooks.guard.install()
        hooks.sampler.start()
        if autosave is not None:
            def save() -> None:
                while not hooks.sampler._stop.wait(every_s):
                    try:
                        hooks.save(autosave)
                    except Exception as exc:  # a profile is never worth the run
                        print(f"profile: not saved: {exc}", file=sys.stderr)
            threading.Thread(target=save, name="profile-autosave", daemon=True).start()
        return hooks

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stacks": self.sampler.summary(), "guard": self.guard.summary(),
                                    "requests": self.requests.summary()}, indent=1), encoding="utf-8")

    def write(self, path: Path) -> None:
        self.sampler.stop()
        try:
            self.save(path)
        except Exception as exc:  # the run's own results are written after this
            print(f"profile: not saved: {exc}", file=sys.stderr)
