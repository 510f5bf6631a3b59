"""The load driver (bench/load_test.py) works: a few seconds against the service on a scripted
engine, served by a real uvicorn on loopback, write its JSON and plot. No timing is asserted:
the 10-minute run against the local engine is a benchmark (bench/results/load_test.json)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bench.load_test import main, queue_depth
from tests.fake_openai import free_port
from tests.service_support import make_app

EXPECTED_BAD = {"bad-json": "400", "unknown-schema": "404", "empty-document": "422", "oversized": "413",
                "wrong-content-type": "415", "binary": "400"}


@pytest.fixture
def service_url() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(max_document_chars=200_000), host="127.0.0.1", port=port,
                                          log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_driver_sends_the_mix_and_writes_json_and_a_plot(service_url: str, tmp_path: Path) -> None:
    code = main(["--url", service_url, "--server-pid", str(os.getpid()), "--duration", "3", "--concurrency", "3",
                 "--sample-s", "0.5", "--max-inflight", "32", "--max-waiting", "128", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "load_test.json").read_text())
    assert (tmp_path / "load_test.png").stat().st_size > 0
    assert code == 0, result["checks"]
    assert result["checks"] == {"no_5xx_for_good": True, "bad_all_4xx": True, "queue_bounded": True}
    for kind, status in EXPECTED_BAD.items():
        assert set(result["by_kind"][kind]) == {status}, (kind, result["by_kind"][kind])
    assert result["by_kind"]["good-json"]["200"] > 0  # the scripted engine answers person documents
    assert result["requests"] == sum(result["by_status"].values())
    window = result["throughput"]["window_s"]
    assert round(sum(result["throughput"]["bad_per_s"]) * window) == result["bad"]["sent"]
    assert result["rss_mb"]["start"] > 0 and len(result["samples"]) >= 2
    assert {"unknown-schema", "malformed-request", "empty-document"} <= set(result["errors_by_type"])


def test_queue_depth_is_read_from_prometheus_text() -> None:
    text = "# HELP x\nextractor_queue_inflight 3.0\nextractor_queue_waiting 0.0\nextractor_queue_inflight_other 9\n"
    assert queue_depth(text) == {"inflight": 3.0, "waiting": 0.0}


@pytest.fixture
def hostile_service_url() -> Iterator[str]:
    port = free_port()
    app = make_app(max_document_chars=200_000, body_timeout_s=1.0)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_hostile_overload_driver_sends_every_kind_and_judges_it(hostile_service_url: str, tmp_path: Path) -> None:
    from bench.hostile_load import HOSTILE_KINDS
    from bench.hostile_load import main as hostile_main

    hostile_main(["--url", hostile_service_url, "--server-pid", str(os.getpid()), "--rate", "12", "--duration", "4",
                  "--hostile-share", "0.5", "--body-timeout", "1", "--warmup-s", "1", "--sample-s", "0.5",
                  "--out", str(tmp_path)])
    result = json.loads((tmp_path / "hostile_load.json").read_text())
    assert (tmp_path / "hostile_load.png").stat().st_size > 0
    run = result["overload"]
    # on the scripted engine every kind gets its expected answer (the invoice: no valid record, 422)
    expected = {"invoice-400": "422", "pdf-shared-stream": "413", "slow-body": "408", "special-tokens": "200",
                "zero-width": "200", "invisible-only": "422", "binary": "400", "oversized": "413"}
    sent = {kind: run["hostile"][kind]["sent"] for kind in HOSTILE_KINDS}
    assert all(sent.values()), sent
    for kind, status in expected.items():
        assert set(run["by_kind"][kind]) == {status}, (kind, run["by_kind"][kind])
    assert run["zero_width_records"] == {"same": sent["zero-width"]}  # the clean record through the invisible ones
    assert run["good"]["5xx"] == 0 and run["good"]["ok"] > 0
    assert result["checks"]["no_5xx_for_good"] and result["checks"]["zero_width_same_record"]
    assert run["requests"] == sum(run["by_status"].values()) and run["healthz"]["probes"] > 0
