"""The HTML view in a real headless browser (Debian's Chromium): the written page of `extract view`
and the service's pages served by a real uvicorn on loopback. Asserts the highlighted spans are in
the rendered DOM and that a document's `<script>` and `onerror=` never run.

Skipped only when there is no Chromium and $EXTRACTOR_REQUIRE_BROWSER is unset; CI sets it (and
installs Chromium with `make setup-browser`), so there a missing browser fails.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from extractor.cli.main import main
from tests.service_support import DOC, make_app

HOSTILE = (DOC + " <script>document.body.setAttribute('data-pwned','script')</script>"
           "<img src=x onerror=\"document.body.setAttribute('data-pwned','onerror')\">")
MARK = re.compile(r'<mark class="c\d+[^"]*" data-field="([^"]+)" data-match="([^"]+)"[^>]*>([^<]*)</mark>')
PWNED = re.compile(r"<body[^>]*data-pwned")


def chromium() -> str:
    path = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
    if path is None:
        if os.environ.get("EXTRACTOR_REQUIRE_BROWSER"):
            pytest.fail("EXTRACTOR_REQUIRE_BROWSER is set but there is no Chromium (make setup-browser installs it)")
        pytest.skip("no Chromium at /usr/bin/chromium (make setup-browser installs it; CI requires it)")
    return path


def dump_dom(url: str, tmp_path: Path) -> str:
    """The DOM after the page loaded and ran whatever it runs (3 s of virtual time for late events)."""
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def marks(dom: str) -> dict[str, str]:
    return {field: html.unescape(text) for field, _, text in MARK.findall(dom)}


def test_the_check_sees_a_script_that_runs(tmp_path: Path) -> None:
    """Control: the same payload, unescaped, does run in this browser, so the checks below can fail."""
    page = tmp_path / "unsafe.html"
    page.write_text(f"<!DOCTYPE html><html><body><pre>{HOSTILE}</pre></body></html>", encoding="utf-8")
    assert PWNED.search(dump_dom(page.as_uri(), tmp_path))


def test_written_page_shows_highlights_and_runs_no_document_script(tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in [{"id": "a", "text": HOSTILE}]), encoding="utf-8")
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"id": "a", "data": {"name": "Alice Smith", "age": 34, "city": "Lisbon", "email": None},
                                   "meta": {"schema": "person"}}) + "\n", encoding="utf-8")
    page = tmp_path / "page.html"
    assert main(["view", str(results), "--docs", str(docs), "-o", str(page)]) == 0
    dom = dump_dom(page.as_uri(), tmp_path)
    assert marks(dom) == {"name": "Alice Smith", "age": "34", "city": "Lisbon"}
    assert not PWNED.search(dom)
    assert "&lt;script&gt;document.body.setAttribute" in dom  # shown as text


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """The service (scripted engine) under a real uvicorn on a loopback port; its base URL."""
    import uvicorn

    app = make_app(batch_db=str(tmp_path / "batches.sqlite3"), batch_poll_s=0.02)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def test_served_batch_view_in_the_browser(served: str, tmp_path: Path) -> None:
    with httpx2.Client(base_url=served, timeout=30) as http:
        created = http.post("/batches", json={"schema": "person", "items": [{"id": "x", "text": HOSTILE}],
                                              "options": {"spans": True}})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 30
        while http.get(f"/batches/{job_id}").json()["status"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    dom = dump_dom(f"{served}/view/batches/{job_id}", tmp_path)
    assert marks(dom) == {"name": "Alice Smith", "age": "34", "city": "Lisbon"}
    assert not PWNED.search(dom)
    assert 'data-id="x"' in dom
    form = dump_dom(f"{served}/view", tmp_path)
    assert re.search(r'<form method="post" action="/view"', form) and '<option value="person">' in form
