"""`extract serve --workers 2`: real processes, in front of a fake OpenAI-compatible upstream
(bench/service_overhead.py's, on loopback). Every worker answers, and /metrics counts them all."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
N = 24


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url}: the server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} not ready after {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def _post(url: str, text: str) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def test_two_workers_serve_and_report_metrics_together(tmp_path: Path) -> None:
    up, svc = _port(), _port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "service_overhead.py"), "--upstream", str(up)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    service = None
    log = tmp_path / "service.log"
    try:
        _wait(f"http://127.0.0.1:{up}/version", upstream)
        service = subprocess.Popen(
            [sys.executable, "-m", "extractor", "serve", "--engine", "vllm-http", "--engine-option",
             f"base_url=http://127.0.0.1:{up}/v1", "--port", str(svc), "--workers", "2",
             "--batch-db", str(tmp_path / "batches.sqlite3"), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True, env=env)
        base = f"http://127.0.0.1:{svc}"
        _wait(f"{base}/readyz", service)
        # uvicorn's supervisor spawned two worker processes (next to multiprocessing's resource tracker)
        spawned = [p for p in _children(service.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(spawned) == 2
        texts = [f"Alice Smith is 34 and lives in Lisbon. (copy {i})" for i in range(N)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda t: _post(f"{base}/extract/person", t), texts))
        assert all(status == 200 for status, _ in answers)
        assert {json.dumps(body["data"]) for _, body in answers} == {
            json.dumps({"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None})}
        # the sum over both processes, whichever answers /metrics; a request is counted just after
        # its response is sent, so the last ones may take a moment to show
        served, deadline = 0.0, time.monotonic() + 20
        while served < N and time.monotonic() < deadline:
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
                metrics = r.read().decode()
            served = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                         if line.startswith("extractor_http_requests_total{") and 'route="/extract/person"' in line)
            time.sleep(0.2)
        assert served == N
    except BaseException:
        print(f"--- service log\n{log.read_text(errors='replace')[-3000:] if log.exists() else ''}")
        raise
    finally:
        if service is not None:
            _stop(service)
        _stop(upstream)


@pytest.mark.parametrize(("protocol_name", "nodelay"), [("H11Protocol", False), ("NoDelayH11Protocol", True)])
def test_connections_get_tcp_nodelay_on_a_shared_listening_socket(protocol_name: str, nodelay: bool) -> None:
    """The multi-worker case: a listening socket made with proto 0 (as uvicorn shares it with its
    workers) hands out connections asyncio leaves with Nagle on; our protocol turns it off."""
    import asyncio

    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState

    from service.server import NoDelayH11Protocol

    protocol_class = {"H11Protocol": H11Protocol, "NoDelayH11Protocol": NoDelayH11Protocol}[protocol_name]

    async def app(scope: object, receive: object, send: object) -> None:  # never called
        raise AssertionError

    async def check() -> int:
        config = uvicorn.Config(app, http=protocol_class, log_config=None)
        config.load()
        listener = socket.socket(socket.AF_INET)  # proto 0, like uvicorn's bind_socket
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol_class(config=config, server_state=ServerState(), app_state={}), sock=conn)
        value = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        transport.close()
        client.close()
        listener.close()
        return value

    assert bool(asyncio.run(check())) is nodelay
