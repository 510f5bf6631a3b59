"""First contact (issue 17, item 10): the API docs work offline (Swagger UI and ReDoc served by the
service itself, no CDN)."""

from __future__ import annotations

import re

import pytest

from tests.service_support import call, make_app


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_another_host(page: str) -> None:
    app = make_app()
    r = call(app, "GET", page)
    assert r.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert urls and all(u.startswith("/") for u in urls), urls  # every script and style from this service
    for url in urls:
        asset = call(app, "GET", url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text
