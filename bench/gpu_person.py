"""The 2048-record person benchmark on a GPU: raw vLLM against our engines, side by side.

    python bench/gpu_person.py all --model DIR --out RESULTS_DIR

runs, each in its own process so that GPU memory is freed in between:

  offline   raw `LLM.generate` with the JSON schema   vs  `Extractor("vllm")` (in-process engine)
  batch     raw `LLM.generate`                        vs  `extract batch --engine vllm`
  http      raw async openai client, 256 concurrent   vs  `Extractor("vllm-http")` at 256
  lean      the server driven by 4 lean client processes (prebuilt JSON bodies, 256 in flight in all):
            the harder baseline, since one process's openai client can hold the server back
  service   the lean baseline                         vs  our service (`POST /extract/person`), driven by
            the same 4 lean client processes at 256 in all, with its default settings and with 1 worker
  profile   (not in `all` unless asked) `extract batch` again under py-spy: collapsed stacks of every
            thread and of vLLM's engine-core process, for where the time goes (no timing taken)

Raw and ours get the same prompt (the person task's messages), the same strict schema and the
same token budget, with vLLM's default JSON whitespace. Raw runs are timed after a 64-document
warm-up; `extract batch` is timed as a user runs it, from its first document (the engine warms
itself up at start-up). Every phase writes one JSON object; `all` gathers them into
`gpu_person.json` (one object per comparison) and a plot `gpu_person.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.person_records import exact, person_records  # noqa: E402

N = 2048
CONCURRENCY = 256
SEQUENTIAL = 64
#: the service runs with its default settings (in flight and worker processes from the engine's
#: `Capacity`), then with one worker process (`extract serve --workers 1`)
SERVICE_RUNS: tuple[tuple[str, tuple[str, ...]], ...] = (("service_ours", ()), ("service_w1_ours", ("--workers", "1")))
SERVED = "SmolLM2-135M-Instruct"


@functools.cache
def _task() -> Any:
    from extractor import task_from_model
    from schemas import Person

    return task_from_model(Person)


def _response_format() -> dict[str, Any]:
    """The person task's strict schema as the OpenAI API's `response_format`."""
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": _task().strict_schema, "strict": True}}


def _chat_body(text: str) -> dict[str, Any]:
    """The raw chat completion for one person document: our prompt, strict schema and token budget."""
    from extractor.pipeline.prompt import build_messages

    task = _task()
    return {"model": SERVED, "messages": build_messages(task, text), "temperature": 0,
            "max_tokens": task.max_tokens, "response_format": _response_format()}


def _check(texts: list[str | None], records: list[dict[str, Any]]) -> tuple[int, int]:
    """(valid, exact) of raw outputs: valid = parses and validates against the strict schema and the model."""
    from extractor.pipeline.validate import Valid, validate_output

    task = _task()
    valid = ok = 0
    for text, rec in zip(texts, records, strict=True):
        if text is None:
            continue
        outcome = validate_output(task, text, rec["text"])
        if isinstance(outcome, Valid):
            valid += 1
            ok += exact(outcome.value.model_dump(), rec["expected"])
    return valid, ok


def _p50(values: list[float]) -> float | None:
    return round(sorted(values)[len(values) // 2], 2) if values else None


def _device() -> str:
    try:
        import torch

        return str(torch.cuda.get_device_name(0))
    except Exception:
        return "unknown"


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


# -- offline: LLM.generate vs the in-process engine ---------------------------------
def phase_offline_raw(model: str) -> dict[str, Any]:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from extractor.pipeline.prompt import build_messages

    task, records = _task(), person_records(N)
    tok = AutoTokenizer.from_pretrained(model)
    # text prompts, as a raw user passes them: vLLM tokenizes them inside the timed generate()
    prompts = [tok.apply_chat_template(build_messages(task, r["text"]), tokenize=False, add_generation_prompt=True)
               for r in records]
    llm = LLM(model=model, gpu_memory_utilization=0.5, disable_log_stats=True)
    params = SamplingParams(temperature=0, max_tokens=task.max_tokens,
                            structured_outputs=StructuredOutputsParams(json=task.strict_schema))
    llm.generate(prompts[:64], params, use_tqdm=False)  # warm-up (compile, grammar cache)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    texts: list[str | None] = [o.outputs[0].text for o in outs]
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    valid, ok = _check(texts, records)
    return {"docs_per_s": N / elapsed, "tok_per_s": tokens / elapsed, "valid": valid, "exact": ok, "seconds": elapsed}


async def _ours(extractor: Any) -> dict[str, Any]:
    from schemas import Person

    records = person_records(N)
    await asyncio.gather(*(extractor.arun(Person, r["text"]) for r in records[:64]))  # warm-up
    start = time.perf_counter()
    results = await asyncio.gather(*(extractor.arun(Person, r["text"]) for r in records), return_exceptions=True)
    elapsed = time.perf_counter() - start
    good = [(r, rec) for r, rec in zip(results, records, strict=True) if not isinstance(r, BaseException)]
    errors = [repr(r)[:200] for r in results if isinstance(r, BaseException)]
    tokens = sum(r.meta.completion_tokens for r, _ in good)
    return {"docs_per_s": N / elapsed, "tok_per_s": tokens / elapsed, "valid": len(good),
            "exact": sum(exact(r.data.model_dump(), rec["expected"]) for r, rec in good), "seconds": elapsed,
            "retried": sum(r.meta.attempts > 1 for r, _ in good), "errors": errors[:5],
            "records": [r.data_dict() if not isinstance(r, BaseException) else None for r in results]}


def phase_offline_ours(model: str) -> dict[str, Any]:
    from extractor import Extractor

    extractor = Extractor("vllm", model=model, served_model_name=SERVED, gpu_memory_utilization=0.5)
    try:
        return asyncio.run(_ours(extractor))
    finally:
        extractor.engine.close()  # type: ignore[attr-defined]


# -- http: raw openai client vs the vllm-http engine ----------------------------------
async def _raw_http(url: str) -> dict[str, Any]:
    import httpx2
    import openai

    from extractor.pipeline.prompt import build_messages

    task, records = _task(), person_records(N)
    http = httpx2.AsyncClient(limits=httpx2.Limits(max_connections=CONCURRENCY), timeout=600)
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", http_client=http, max_retries=0)
    slots = asyncio.Semaphore(CONCURRENCY)
    fmt = _response_format()

    async def one(rec: dict[str, Any]) -> tuple[str | None, int]:
        async with slots:
            try:
                r = await client.chat.completions.create(model=SERVED, messages=build_messages(task, rec["text"]),  # type: ignore[arg-type]
                                                         temperature=0, max_tokens=task.max_tokens,
                                                         response_format=fmt)  # type: ignore[arg-type]
            except openai.APIError:
                return None, 0
            return r.choices[0].message.content, r.usage.completion_tokens if r.usage else 0

    await asyncio.gather(*(one(r) for r in records[:64]))
    start = time.perf_counter()
    outs = await asyncio.gather(*(one(r) for r in records))
    elapsed = time.perf_counter() - start
    await client.close()
    valid, ok = _check([t for t, _ in outs], records)
    # latency of one request at a time, plain HTTP, for the service's added latency
    walls = []
    async with httpx2.AsyncClient(timeout=60) as plain:
        for rec in records[:SEQUENTIAL]:
            body = _chat_body(rec["text"])
            t0 = time.perf_counter()
            (await plain.post(f"{url}/chat/completions", json=body)).raise_for_status()
            walls.append((time.perf_counter() - t0) * 1000)
    return {"docs_per_s": N / elapsed, "tok_per_s": sum(n for _, n in outs) / elapsed, "valid": valid, "exact": ok,
            "seconds": elapsed, "latency_p50_ms_sequential": _p50(walls)}


def phase_http_raw(url: str) -> dict[str, Any]:
    return asyncio.run(_raw_http(url))


# -- http, lean client: what a server can do when no client process is the bottleneck ---------
LEAN_PROCS = 4


def _lean_bodies(kind: str, records: list[dict[str, Any]]) -> list[bytes]:
    """Prebuilt JSON bodies: vLLM's chat completion ("vllm") or our `POST /extract/person` ("service")."""
    if kind == "service":
        return [json.dumps({"text": r["text"]}).encode() for r in records]
    return [json.dumps(_chat_body(r["text"])).encode() for r in records]


async def _lean_part(url: str, path: str, bodies: list[bytes], start_at: float) -> dict[str, Any]:
    """One client process: plain JSON posts, CONCURRENCY / LEAN_PROCS in flight over pools of 16."""
    import httpx2

    per = CONCURRENCY // LEAN_PROCS
    clients = [httpx2.AsyncClient(base_url=url, timeout=600, limits=httpx2.Limits(max_connections=16))
               for _ in range(per // 16)]
    slots = asyncio.Semaphore(per)
    answers: list[dict[str, Any] | None] = [None] * len(bodies)
    walls: list[float] = [0.0] * len(bodies)

    async def one(i: int) -> None:
        async with slots:
            t0 = time.perf_counter()
            r = await clients[i % len(clients)].post(path, content=bodies[i],
                                                     headers={"content-type": "application/json"})
            walls[i] = (time.perf_counter() - t0) * 1000
        if r.status_code == 200:
            answers[i] = r.json()

    await asyncio.gather(*(one(i) for i in range(min(16, len(bodies)))))  # warm-up: open connections
    await asyncio.sleep(max(0.0, start_at - time.time()))
    start = time.time()
    await asyncio.gather(*(one(i) for i in range(len(bodies))))
    end = time.time()
    for c in clients:
        await c.aclose()
    return {"start": start, "end": end, "answers": answers, "walls": walls}


def _lean_worker(args: tuple[str, str, str, int, float]) -> dict[str, Any]:
    url, path, kind, part, start_at = args
    bodies = _lean_bodies(kind, person_records(N)[part::LEAN_PROCS])
    return asyncio.run(_lean_part(url, path, bodies, start_at))


def _lean_run(url: str, path: str, kind: str) -> tuple[list[dict[str, Any] | None], list[float], float]:
    """All N records through LEAN_PROCS client processes that start together: the answers and client
    wall times in record order, and the seconds from the first request to the last answer."""
    import multiprocessing

    start_at = time.time() + 20  # every process has imported and warmed up by then
    with multiprocessing.get_context("spawn").Pool(LEAN_PROCS) as pool:
        parts = pool.map(_lean_worker, [(url, path, kind, k, start_at) for k in range(LEAN_PROCS)])
    answers: list[dict[str, Any] | None] = [None] * N
    walls: list[float] = [0.0] * N
    for k, part in enumerate(parts):
        answers[k::LEAN_PROCS] = part["answers"]
        walls[k::LEAN_PROCS] = part["walls"]
    return answers, walls, max(p["end"] for p in parts) - min(p["start"] for p in parts)


def phase_http_raw_lean(url: str) -> dict[str, Any]:
    """The server's throughput with LEAN_PROCS client processes (CONCURRENCY in flight in all), each
    posting prebuilt JSON bodies: the openai client in one process spends enough CPU per request
    to hold the server back, so this is the harder baseline for the service."""
    answers, _, elapsed = _lean_run(url, "/chat/completions", "vllm")
    texts = [a["choices"][0]["message"]["content"] if a else None for a in answers]
    valid, ok = _check(texts, person_records(N))
    tokens = sum(a["usage"]["completion_tokens"] for a in answers if a)
    return {"docs_per_s": N / elapsed, "tok_per_s": tokens / elapsed, "valid": valid,
            "exact": ok, "seconds": elapsed, "processes": LEAN_PROCS}


def phase_http_ours(url: str) -> dict[str, Any]:
    from extractor import Extractor

    extractor = Extractor("vllm-http", base_url=url, concurrency=CONCURRENCY)
    return asyncio.run(_ours(extractor))


# -- service: our FastAPI service in front of the vLLM server --------------------------------
async def _sequential_latency(url: str, vllm_url: str) -> tuple[list[float], list[float]]:
    """One request at a time, the service and vLLM itself in turns: the service's own added latency."""
    import httpx2

    walls, direct = [], []
    async with httpx2.AsyncClient(base_url=url, timeout=600) as http:
        for rec in person_records(N)[:SEQUENTIAL]:
            body = _chat_body(rec["text"])
            t0 = time.perf_counter()
            (await http.post(f"{vllm_url}/chat/completions", json=body)).raise_for_status()
            direct.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            (await http.post("/extract/person", json={"text": rec["text"]})).raise_for_status()
            walls.append((time.perf_counter() - t0) * 1000)
    return walls, direct


def phase_service(url: str, vllm_url: str) -> dict[str, Any]:
    """The service driven the way the lean baseline drives vLLM: LEAN_PROCS client processes,
    CONCURRENCY in flight in all."""
    records = person_records(N)
    answers, client_walls, elapsed = _lean_run(url, "/extract/person", "service")
    good = [(a, rec) for a, rec in zip(answers, records, strict=True) if a is not None]
    # at 256 in flight: client wall time minus the time the service waited on vLLM
    added = [w - float(a["meta"]["engine_ms"]) for w, a in zip(client_walls, answers, strict=True)
             if a is not None and a["meta"].get("engine_ms") is not None]
    # of that, the time held in the service's own admission queue (meta.queue_ms), and the rest
    queued = [float(a["meta"]["queue_ms"]) for a in answers if a is not None and a["meta"].get("queue_ms") is not None]
    rest = [w - float(a["meta"]["engine_ms"]) - float(a["meta"]["queue_ms"])
            for w, a in zip(client_walls, answers, strict=True)
            if a is not None and a["meta"].get("engine_ms") is not None and a["meta"].get("queue_ms") is not None]
    walls, direct = asyncio.run(_sequential_latency(url, vllm_url))
    return {"docs_per_s": N / elapsed, "valid": len(good), "seconds": elapsed, "processes": LEAN_PROCS,
            "exact": sum(exact(a["data"], rec["expected"]) for a, rec in good),
            "tok_per_s": sum(a["meta"]["tokens"]["completion"] for a, _ in good) / elapsed,
            "latency_p50_ms_sequential": _p50(walls), "vllm_latency_p50_ms_sequential_paired": _p50(direct),
            "wall_minus_engine_p50_ms_at_256": _p50(added), "queue_p50_ms_at_256": _p50(queued),
            "wall_minus_engine_and_queue_p50_ms_at_256": _p50(rest)}


# -- batch: `extract batch` on the in-process engine --------------------------------------
def _py_spy() -> str:
    """The py-spy binary: on PATH, or in the bin/ folder of a --target install on sys.path."""
    import shutil

    found = shutil.which("py-spy")
    for entry in sys.path:
        if found is None and entry and Path(entry, "bin", "py-spy").exists():
            found = str(Path(entry, "bin", "py-spy"))
    if found is None:
        raise SystemExit("py-spy is not installed")
    return found


def phase_batch(model: str, profile: str = "") -> dict[str, Any]:
    """`extract batch` as a user runs it; with `profile` (a file) under py-spy, writing collapsed stacks."""
    import tempfile

    records = person_records(N)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, summary = Path(tmp, "in.jsonl"), Path(tmp, "out.jsonl"), Path(tmp, "summary.json")
        src.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in records))
        spy = [_py_spy(), "record", "-r", "100", "-f", "raw", "--subprocesses", "-o", profile, "--"] if profile else []
        proc = subprocess.run([*spy, sys.executable, "-m", "extractor", "batch", "person", str(src), "-o", str(dst),
                               "--engine", "vllm", "--engine-option", f"model={model}",
                               "--engine-option", "gpu_memory_utilization=0.5", "--concurrency", "2048",
                               "--no-progress", "--summary-json", str(summary)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        if not summary.exists():
            raise SystemExit(f"extract batch failed: {proc.stderr[-2000:]}")
        s = json.loads(summary.read_text())
        by_id = {r["id"]: r for r in records}
        rows = [json.loads(line) for line in dst.read_text().splitlines()]
    good = [r for r in rows if "data" in r]
    return {"docs_per_s": s["docs_per_s"], "valid": len(good), "seconds": s["seconds"], "retried": s["retried"],
            "first_result_s": s.get("first_result_s"),
            "exact": sum(exact(r["data"], by_id[r["id"]]["expected"]) for r in good),
            "tok_per_s": sum(r["meta"]["tokens"]["completion"] for r in good) / s["seconds"]}


# -- orchestration ------------------------------------------------------------------
def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url} not ready after {timeout:.0f} s")


def _phase(name: str, *args: str, timeout: float = 400) -> dict[str, Any]:
    cmd = [sys.executable, __file__, name, *args]
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=timeout, check=False)
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        print(f"{name} failed ({proc.returncode})", flush=True)
        return {"error": f"exit {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    print(f"   {name}: {result.get('docs_per_s', 0):.1f} docs/s, valid {result.get('valid')}, "
          f"exact {result.get('exact')} ({time.perf_counter() - start:.0f} s with start-up)", flush=True)
    return result


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run_all(model: str, out: Path, phases: set[str]) -> None:
    """Every phase asked for; what was measured is written even when a `timeout` cuts the run
    (SIGTERM ends it through the `finally`s: the servers stopped, the results kept; on the H200
    a cut run left `vllm serve` holding half of the GPU and wrote nothing)."""
    out.mkdir(parents=True, exist_ok=True)
    r: dict[str, dict[str, Any]] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        _run_phases(model, out, phases, r)
    finally:
        write_results(r, out, model)


def _run_phases(model: str, out: Path, phases: set[str], r: dict[str, dict[str, Any]]) -> None:
    if "offline" in phases:
        r["offline_raw"] = _phase("offline-raw", "--model", model)
        r["offline_ours"] = _phase("offline-ours", "--model", model)
    if "batch" in phases:
        r["batch_ours"] = _phase("batch", "--model", model)
    if "profile" in phases:
        r["batch_profile"] = _phase("batch", "--model", model, "--profile", str(out / "batch_profile.txt"))
    if phases & {"http", "lean", "service"}:
        port = 8011
        server = _spawn([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                         "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
                         "--gpu-memory-utilization", "0.5", "--disable-log-stats"],
                        out / "vllm_server.log")
        service = None
        try:
            _wait(f"http://127.0.0.1:{port}/health", server, 300)
            url = f"http://127.0.0.1:{port}/v1"
            if "http" in phases:
                r["http_raw"] = _phase("http-raw", "--url", url)
                r["http_ours"] = _phase("http-ours", "--url", url)
            if "lean" in phases:
                r["http_raw_lean"] = _phase("http-raw-lean", "--url", url)
            if "service" in phases:
                for key, flags in SERVICE_RUNS:
                    service = _spawn([sys.executable, "-m", "extractor", "serve", "--engine", "vllm-http",
                                      "--engine-option", f"base_url={url}", "--host", "127.0.0.1", "--port", "8020",
                                      *flags, "--batch-db", str(out / f"batches-{key}.sqlite3")],
                                     out / f"service-{key}.log")
                    try:
                        _wait("http://127.0.0.1:8020/readyz", service, 120)
                        r[key] = _phase("service", "--url", "http://127.0.0.1:8020", "--vllm-url", url)
                    except SystemExit as exc:
                        print(f"service phase failed: {exc}", flush=True)
                        r[key] = {"error": str(exc)}
                    finally:
                        _stop(service)
                        service = None
        finally:
            if service is not None:
                _stop(service)
            _stop(server)


def write_results(r: dict[str, dict[str, Any]], out: Path, model: str) -> None:
    meta = {"device": _device(), "vllm": _vllm_version(), "date": dt.date.today().isoformat(),
            "model": Path(model).name, "total": N, "concurrency": CONCURRENCY}
    rows = []
    pairs = [("offline", "vllm", "LLM.generate", "offline_ours", "offline_raw"),
             ("batch", "extract batch --engine vllm", "LLM.generate", "batch_ours", "offline_raw"),
             ("http", "vllm-http", "openai async client @256", "http_ours", "http_raw"),
             ("http_lean", "vllm-http", f"{LEAN_PROCS} lean client processes @256", "http_ours", "http_raw_lean"),
             ("service_lean", "service (default settings) -> vllm-http", f"{LEAN_PROCS} lean client processes @256",
             "service_ours", "http_raw_lean"),
            ("service_w1_lean", "service --workers 1 -> vllm-http", f"{LEAN_PROCS} lean client processes @256",
             "service_w1_ours", "http_raw_lean")]
    for bench, engine, baseline, ours_key, raw_key in pairs:
        ours, raw = r.get(ours_key), r.get(raw_key)
        if not ours or not raw or "error" in ours or "error" in raw:
            continue
        row = {"benchmark": f"person_{N}_{bench}", "engine": engine, "baseline": baseline,
               "ours_docs_per_s": round(ours["docs_per_s"], 1), "baseline_docs_per_s": round(raw["docs_per_s"], 1),
               "ratio": round(ours["docs_per_s"] / raw["docs_per_s"], 3),
               "valid": ours["valid"], "baseline_valid": raw["valid"], "exact": ours["exact"],
               "baseline_exact": raw["exact"], "ours_tok_per_s": round(ours["tok_per_s"], 1),
               "baseline_tok_per_s": round(raw["tok_per_s"], 1), "retried": ours.get("retried"),
               **meta}
        if bench.startswith("service"):
            # vLLM's own latency measured in the same phase, in turns with the service's
            ours_p50, raw_p50 = ours.get("latency_p50_ms_sequential"), ours.get("vllm_latency_p50_ms_sequential_paired")
            if ours_p50 is not None and raw_p50 is not None:
                row["added_latency_p50_ms"] = round(ours_p50 - raw_p50, 2)
            row["service_p50_ms_sequential"], row["vllm_p50_ms_sequential"] = ours_p50, raw_p50
            for key in ("wall_minus_engine_p50_ms_at_256", "queue_p50_ms_at_256",
                        "wall_minus_engine_and_queue_p50_ms_at_256"):
                row[key] = ours.get(key)
        rows.append(row)
    a, b = r.get("offline_ours", {}).get("records"), r.get("http_ours", {}).get("records")
    if a and b:
        same = sum(x == y for x, y in zip(a, b, strict=True))
        for row in rows:
            row["records_same_inprocess_vs_http"] = same
    (out / "gpu_person.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "gpu_person_raw.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items() if kk != "records"} for k, v in r.items()}, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    if rows:
        plot(rows, out / "gpu_person.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [row["baseline_docs_per_s"] for row in rows], 0.4, label="raw vLLM", color="#999999")
    ax.bar([x + 0.2 for x in xs], [row["ours_docs_per_s"] for row in rows], 0.4, label="ours", color="#4c72b0")
    for x, row in zip(xs, rows, strict=True):
        ax.text(x + 0.2, row["ours_docs_per_s"], f"{row['ratio']:.2f}x\n{row['valid']}/{row['total']} valid",
                ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{row['benchmark'].removeprefix(f'person_{N}_')}\nvs " + row["baseline"].split(" @")[0].replace(
        " client processes", " clients").replace(" async client", "") for row in rows],
                  fontsize=7)
    ax.set_ylim(0, 1.25 * max(max(row["ours_docs_per_s"], row["baseline_docs_per_s"]) for row in rows))
    ax.set_ylabel("docs/s")
    ax.set_title(f"person x{N}, SmolLM2-135M, vLLM {rows[0]['vllm']}, {rows[0]['device']}", fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["all", "offline-raw", "offline-ours", "batch", "http-raw", "http-raw-lean", "http-ours",
                                     "service"])
    ap.add_argument("--model", default=os.environ.get("SMOLLM2_DIR", ""))
    ap.add_argument("--url", default="")
    ap.add_argument("--vllm-url", default="", help="the service phase: vLLM's own URL, for the paired latency")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--phases", default="offline,batch,http,lean,service", help="also: profile")
    ap.add_argument("--profile", default="", help="the batch phase: run under py-spy, collapsed stacks to this file")
    args = ap.parse_args()
    if args.phase == "all":
        run_all(args.model, Path(args.out), set(args.phases.split(",")))
        return
    fn = {"offline-raw": lambda: phase_offline_raw(args.model), "offline-ours": lambda: phase_offline_ours(args.model),
          "batch": lambda: phase_batch(args.model, args.profile),
          "http-raw": lambda: phase_http_raw(args.url), "http-ours": lambda: phase_http_ours(args.url),
          "http-raw-lean": lambda: phase_http_raw_lean(args.url),
          "service": lambda: phase_service(args.url, args.vllm_url)}[args.phase]
    print(json.dumps(fn()), flush=True)


if __name__ == "__main__":
    main()
