"""What the service costs in front of an OpenAI-compatible server, on the CPU, against a FAKE upstream.

    python bench/service_overhead.py [--n 2048] [--sequential 200] [--delay-ms 0] [--concurrency 64 256]

starts, each in its own process:

  upstream   a minimal fake OpenAI-compatible server (`/v1/models`, `/version`, `/v1/chat/completions`) that
             answers at once (or after `--delay-ms`) with the person of the document, and with
             `{"probe":"zq-7-enforced","n":7321}` for the engine's start-up probe schema
  service    `python -m extractor serve --engine vllm-http --engine-option base_url=<upstream>`

and measures, with the same httpx2 client for both paths:

  sequential  one request at a time: p50 latency of the engine's JSON body straight to the upstream
              (`direct`) against `POST /extract/person` (`service`): the difference is the added latency
  throughput  docs/s at each concurrency: direct against through the service, and the service
              process's CPU time per request (steadier than docs/s on a shared box)

Writes bench/results/service_overhead.json and service_overhead.png. The numbers depend on the
machine and its load; repeat a run to see the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.person_records import person_records  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SERVED = "fake-smollm2"
PROBE_ANSWER = '{"probe":"zq-7-enforced","n":7321}'


# -- the fake upstream ---------------------------------------------------------------
def fake_app(delay_s: float) -> Any:
    """A bare ASGI app (no framework: the fake's own cost stays small next to the service's)."""
    answers = {r["text"]: json.dumps({**r["expected"], "email": r["expected"].get("email")}, separators=(",", ":"))
               for r in person_records(4096)}
    fallback = '{"name":"Alice Smith","age":34,"city":"Lisbon","email":null}'
    created = int(time.time())

    def completion(body: dict[str, Any]) -> bytes:
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
        props = schema.get("properties", {})
        if "probe" in props:
            text = PROBE_ANSWER
        elif "ok" in props:
            text = '{"ok":true}'
        else:
            last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
            doc = last.removeprefix("<document>\n").removesuffix("\n</document>")
            text = answers.get(doc, fallback)
        return json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": body.get("model", SERVED),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220},
        }).encode()

    models = json.dumps({"object": "list", "data": [{"id": SERVED, "object": "model", "created": created,
                                                      "owned_by": "fake"}]}).encode()
    version = b'{"version":"fake"}'

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        path, status = scope["path"], 200
        if path == "/v1/chat/completions" and scope["method"] == "POST":
            if delay_s:
                await asyncio.sleep(delay_s)
            payload = completion(json.loads(b"".join(chunks)))
        elif path == "/v1/models":
            payload = models
        elif path in ("/version", "/health"):
            payload = version
        else:
            status, payload = 404, b'{"error":"not found"}'
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


def run_upstream(port: int, delay_ms: float) -> None:
    import uvicorn

    uvicorn.run(fake_app(delay_ms / 1000), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- processes ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout:.0f} s")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- measurements ------------------------------------------------------------------------
def _p(values: list[float], q: float) -> float | None:
    return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 3) if values else None


async def measure(upstream: str, service: str, service_pid: int, upstream_pid: int, *, n: int, sequential: int,
                  concurrencies: list[int], py_spy: Path | None = None) -> dict[str, Any]:
    import httpx2

    from extractor import task_from_model
    from extractor.engines.base import GenerationRequest
    from extractor.engines.vllm_http import chat_request
    from extractor.pipeline.prompt import build_messages
    from schemas import Person

    task, records = task_from_model(Person), person_records(n)

    def direct_body(text: str) -> dict[str, Any]:  # the JSON body the engine sends for a document
        request = GenerationRequest(messages=tuple(build_messages(task, text)), schema=task.strict_schema,
                                    max_tokens=task.max_tokens, temperature=0.0, seed=0)
        return chat_request(request, SERVED)

    bodies = [direct_body(r["text"]) for r in records]

    #: per service request at load: (client wall - meta.engine_ms, - meta.queue_ms as well), ms
    added: list[tuple[float, float]] = []

    async def post(http: httpx2.AsyncClient, target: str, i: int) -> bool:
        if target == "direct":
            r = await http.post(f"{upstream}/chat/completions", json=bodies[i])
        else:
            t0 = time.perf_counter()
            r = await http.post(f"{service}/extract/person", json={"text": records[i]["text"]})
            wall = (time.perf_counter() - t0) * 1000
            meta = r.json().get("meta", {}) if r.status_code == 200 else {}
            if meta.get("engine_ms") is not None:
                added.append((wall - float(meta["engine_ms"]), wall - float(meta["engine_ms"]) - float(meta.get("queue_ms") or 0)))
        return r.status_code == 200

    out: dict[str, Any] = {"sequential": {}, "throughput": []}
    limits = httpx2.Limits(max_connections=max(concurrencies), max_keepalive_connections=max(concurrencies))
    async with httpx2.AsyncClient(timeout=120, limits=limits) as http:
        # sequential: interleaved in rounds so that drifting machine load hits both paths alike
        walls: dict[str, list[float]] = {"direct": [], "service": []}
        for target in walls:
            for i in range(20):  # warm-up: connections, caches
                await post(http, target, i)
        for i in range(sequential):
            for target in walls:
                t0 = time.perf_counter()
                ok = await post(http, target, i % n)
                walls[target].append((time.perf_counter() - t0) * 1000)
                if not ok:
                    raise SystemExit(f"{target} request failed")
        for target, values in walls.items():
            out["sequential"][target] = {"p50_ms": _p(values, 0.5), "p90_ms": _p(values, 0.9), "n": len(values)}
        out["sequential"]["added_p50_ms"] = round(out["sequential"]["service"]["p50_ms"]
                                                  - out["sequential"]["direct"]["p50_ms"], 3)

        for c in concurrencies:
            row: dict[str, Any] = {"concurrency": c}
            for target in ("direct", "service"):
                slots = asyncio.Semaphore(c)

                async def one(i: int, target: str = target, slots: asyncio.Semaphore = slots) -> bool:
                    async with slots:
                        return await post(http, target, i)

                await asyncio.gather(*(one(i) for i in range(min(n, 2 * c))))  # warm-up: open c connections
                spy = None
                if py_spy is not None and target == "service" and c == concurrencies[-1]:
                    spy = subprocess.Popen(["py-spy", "record", "--pid", str(service_pid), "--rate", "200",
                                            "--nonblocking", "--format", "raw", "--output", str(py_spy)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    await asyncio.sleep(1)
                cpu0 = {"service": _cpu_s(service_pid), "upstream": _cpu_s(upstream_pid)}
                added.clear()
                t0 = time.perf_counter()
                oks = await asyncio.gather(*(one(i) for i in range(n)))
                elapsed = time.perf_counter() - t0
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
                row[f"{target}_docs_per_s"] = round(n / elapsed, 1)
                row[f"{target}_ok"] = sum(oks)
                row[f"{target}_upstream_cpu_ms_per_req"] = round((_cpu_s(upstream_pid) - cpu0["upstream"]) * 1000 / n, 3)
                if target == "service":
                    row["service_cpu_ms_per_req"] = round((_cpu_s(service_pid) - cpu0["service"]) * 1000 / n, 3)
                    row["wall_minus_engine_p50_ms"] = _p([a for a, _ in added], 0.5)
                    row["wall_minus_engine_and_queue_p50_ms"] = _p([b for _, b in added], 0.5)
            row["ratio"] = round(row["service_docs_per_s"] / row["direct_docs_per_s"], 3)
            out["throughput"].append(row)
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["throughput"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    xs = range(len(rows))
    a.bar([x - 0.2 for x in xs], [r["direct_docs_per_s"] for r in rows], 0.4, label="direct", color="#999999")
    a.bar([x + 0.2 for x in xs], [r["service_docs_per_s"] for r in rows], 0.4, label="service", color="#4c72b0")
    for x, r in zip(xs, rows, strict=True):
        a.text(x + 0.2, r["service_docs_per_s"], f"{r['ratio']:.2f}x", ha="center", va="bottom", fontsize=7)
    a.set_xticks(list(xs), [f"@{r['concurrency']}" for r in rows])
    a.set_ylabel("docs/s")
    a.legend(loc="lower right", fontsize=7)
    seq = result["sequential"]
    b.bar([0, 1], [seq["direct"]["p50_ms"], seq["service"]["p50_ms"]], color=["#999999", "#4c72b0"])
    b.set_xticks([0, 1], ["direct", "service"])
    b.set_ylabel("sequential p50 ms")
    b.set_title(f"added {seq['added_p50_ms']:.2f} ms", fontsize=8)
    fig.suptitle(f"service overhead, fake upstream (delay {result['delay_ms']:g} ms), {result['cpus']} CPUs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="requests per throughput run")
    ap.add_argument("--sequential", type=int, default=200, help="requests per path, one at a time")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--delay-ms", type=float, default=0.0, help="the fake upstream's fixed answer delay")
    ap.add_argument("--out", type=Path, default=RESULTS / "service_overhead.json")
    ap.add_argument("--py-spy", type=Path, metavar="OUT",
                    help="profile the service with py-spy (collapsed stacks to OUT) during the last service run")
    ap.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.upstream:  # the child process: serve the fake
        run_upstream(args.upstream, args.delay_ms)
        return 0

    up_port, svc_port = _free_port(), _free_port()
    upstream_url, service_url = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{svc_port}"
    with tempfile.TemporaryDirectory(prefix="service-overhead-") as tmp:
        upstream = _spawn([sys.executable, __file__, "--upstream", str(up_port), "--delay-ms", str(args.delay_ms)],
                          Path(tmp, "upstream.log"))
        service = None
        try:
            _wait(f"http://127.0.0.1:{up_port}/version", upstream)
            service = _spawn([sys.executable, "-m", "extractor", "serve", "--engine", "vllm-http",
                              "--engine-option", f"base_url={upstream_url}", "--host", "127.0.0.1",
                              "--port", str(svc_port), "--max-inflight", "256", "--max-waiting", "2048",
                              "--batch-db", str(Path(tmp, "batches.sqlite3"))], Path(tmp, "service.log"))
            _wait(f"{service_url}/readyz", service)
            print(f"upstream pid {upstream.pid} {upstream_url}; service pid {service.pid} {service_url}", flush=True)
            result = asyncio.run(measure(upstream_url, service_url, service.pid, upstream.pid, n=args.n,
                                         sequential=args.sequential, concurrencies=args.concurrency,
                                         py_spy=args.py_spy))
        except BaseException:
            for name in ("upstream", "service"):
                log = Path(tmp, f"{name}.log")
                if log.exists():
                    print(f"--- {name} log (tail)\n{log.read_text()[-2000:]}", file=sys.stderr)
            raise
        finally:
            if service is not None:
                _stop(service)
            _stop(upstream)
    result = {"date": dt.date.today().isoformat(), "python": platform.python_version(), "cpus": os.cpu_count(),
              "delay_ms": args.delay_ms, "n": args.n, **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
