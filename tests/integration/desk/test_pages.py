"""The desk's pages over plain HTTP: routes, headers, static files."""

from __future__ import annotations

import aiohttp
import pytest

from cti.web import setup_web
from tests.integration.desk.conftest import Desk

pytestmark = pytest.mark.integration


async def test_pages_routes_and_security_headers(desk: Desk) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{desk.base_url}/", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/desk/"
        async with http.get(f"{desk.base_url}/desk/") as resp:
            assert resp.status == 200
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe" not in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            page = await resp.text()
            assert 'src="/desk/static/desk.js"' in page and "http" not in page
        for name, kind in (
            ("desk.js", "javascript"),
            ("sms.js", "javascript"),
            ("desk.css", "css"),
        ):
            async with http.get(f"{desk.base_url}/desk/static/{name}") as resp:
                assert resp.status == 200 and kind in resp.content_type
                body = await resp.text()
                assert "innerHTML" not in body and "http://" not in body and "https://" not in body
        async with http.get(f"{desk.base_url}/desk/static/../../app.py") as resp:
            assert resp.status in (403, 404)
        async with http.get(f"{desk.base_url}/api/v1/health") as resp:
            assert "Content-Security-Policy" not in resp.headers


def test_setup_web_twice_is_harmless() -> None:
    from aiohttp import web

    app = web.Application()
    setup_web(app)
    setup_web(app)
    assert sum(1 for r in app.router.routes() if r.method == "GET") == 4
