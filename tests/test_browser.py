"""Browser tools against real Chromium and a small site served on 127.0.0.1 by the test.

A second server plays "the outside world": the allow-list must keep every request away from it,
whether the page navigates there, redirects there, or embeds a resource from there.
"""

from __future__ import annotations

import http.server
import re
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from agentkit.tools.builtin._allowlist import UrlAllowList
from agentkit.tools.builtin.browser import Browser
from agentkit.tools.tool import ToolOutcome

pytestmark = [pytest.mark.anyio, pytest.mark.browser]


class Site:
    """A threaded HTTP server with a few pages; records every path it was asked for."""

    def __init__(self, pages: dict[str, Any]) -> None:
        self.hits: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                site.hits.append(self.path)
                page = pages.get(urlsplit(self.path).path)
                if callable(page):
                    page = page(self)
                if page is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                status, headers, body = page if isinstance(page, tuple) else (200, {}, page)
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def outside() -> Iterator[Site]:
    site = Site({"/secret": "<html><body><p>SECRET PAGE</p></body></html>", "/pixel.png": "x"})
    yield site
    site.close()


@pytest.fixture(scope="module")
def site(outside: Site) -> Iterator[Site]:
    def search(handler: http.server.BaseHTTPRequestHandler) -> str:
        q = parse_qs(urlsplit(handler.path).query)
        return f"<html><body><h1>Results</h1><p>You searched for: {q.get('q', [''])[0]}</p></body></html>"

    pages = {
        "/": """<html><head><title>Home</title><style>.x{color:red}</style></head><body>
            <h1>Welcome home</h1>
            <p>This is the <b>front</b> page.</p>
            <p style="display:none">invisible text</p>
            <ul><li><a href="/about">About us</a></li><li><a href="/form">Search form</a></li></ul>
            <script>document.title = "Home";</script>
            </body></html>""",
        "/about": """<html><head><title>About</title></head><body>
            <h2>About</h2><p>We make agents.</p><a href="/">Back home</a></body></html>""",
        "/form": """<html><head><title>Form</title></head><body>
            <form action="/search" method="get">
              <label for="q">Query</label> <input id="q" name="q" type="text">
              <select name="lang"><option>en</option><option>fr</option></select>
              <button type="submit">Search</button>
            </form></body></html>""",
        "/search": search,
        "/hop": (302, {"Location": "/about"}, ""),
        "/escape": (302, {"Location": f"{outside.origin}/secret"}, ""),
        "/escape-chain": (302, {"Location": "/escape"}, ""),
        "/embeds": f"""<html><head><title>Embeds</title></head><body><p>with an outside image</p>
            <img src="{outside.origin}/pixel.png"><script src="{outside.origin}/secret"></script>
            <script>fetch("{outside.origin}/secret").catch(() => {{}});</script></body></html>""",
        "/popup": f"""<html><body>
            <a href="{outside.origin}/secret" target="_blank">outside</a></body></html>""",
    }
    s = Site(pages)
    yield s
    s.close()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # Playwright's async API runs on asyncio only


@pytest.fixture(scope="module")
async def browser(site: Site, anyio_backend: str) -> AsyncIterator[Browser]:
    async with Browser(allow=[site.origin]) as b:
        yield b


async def run(b: Browser, name: str, **args: Any) -> ToolOutcome:
    tools = {t.name: t for t in b.tools()}
    return await tools[name].invoke(args)


def ref_of(text: str, label: str) -> int:
    m = re.search(r"\[(\d+)\] [a-z ]+\"" + re.escape(label), text)
    assert m, f"no element labelled {label!r} in:\n{text}"
    return int(m.group(1))


async def test_tool_set_and_schemas(browser: Browser) -> None:
    tools = browser.tools()
    assert [t.name for t in tools] == [
        "browser_open",
        "browser_text",
        "browser_find",
        "browser_click",
        "browser_type",
        "browser_back",
        "browser_screenshot",
    ]
    assert all(t.sequential for t in tools)
    assert tools[3].parameters_schema["properties"] == {
        "ref": {"description": 'The element\'s number, e.g. 3 for "[3] link ...".', "type": "integer"}
    }


async def test_open_extracts_readable_text_with_numbered_links(browser: Browser, site: Site) -> None:
    out = await run(browser, "browser_open", url=site.origin + "/")
    assert not out.is_error, out.content
    lines = out.content.splitlines()
    assert lines[0] == "Page: Home" and lines[1] == f"URL: {site.origin}/"
    assert "# Welcome home" in lines
    assert "This is the front page." in lines
    assert '[1] link "About us" (/about)' in lines
    assert '[2] link "Search form" (/form)' in lines
    assert (
        "invisible" not in out.content
        and "color:red" not in out.content
        and "document.title" not in out.content
    )


async def test_click_navigates_and_back_returns(browser: Browser, site: Site) -> None:
    home = await run(browser, "browser_open", url=site.origin + "/")
    out = await run(browser, "browser_click", ref=ref_of(home.content, "About us"))
    assert not out.is_error, out.content
    assert out.content.startswith("Page: About\n") and "We make agents." in out.content
    out = await run(browser, "browser_back")
    assert out.content.startswith("Page: Home\n")
    out = await run(browser, "browser_click", ref=99)
    assert out.error_kind == "error" and "no element [99]" in out.content


async def test_fill_and_submit_a_form(browser: Browser, site: Site) -> None:
    form = await run(browser, "browser_open", url=site.origin + "/form")
    assert '"Query" name=q' in form.content and "options: *en | fr" in form.content
    out = await run(browser, "browser_type", ref=ref_of(form.content, "Query"), text="deep seek")
    assert not out.is_error and out.content.startswith("Typed into")
    text = (await run(browser, "browser_text")).content
    assert 'value="deep seek"' in text
    # choose from a select by its label, then submit through the button
    select_ref = int(re.search(r"\[(\d+)\] select", text).group(1))  # type: ignore[union-attr]
    await run(browser, "browser_type", ref=select_ref, text="fr")
    out = await run(browser, "browser_click", ref=ref_of(text, "Search"))
    assert out.content.startswith("Page: (untitled)") or "Results" in out.content
    assert "You searched for: deep seek" in out.content
    assert any(h.startswith("/search?q=deep+seek&lang=fr") for h in site.hits)
    # typing with submit=true presses Enter
    form = await run(browser, "browser_open", url=site.origin + "/form")
    out = await run(browser, "browser_type", ref=ref_of(form.content, "Query"), text="again", submit=True)
    assert "You searched for: again" in out.content


async def test_find(browser: Browser, site: Site) -> None:
    await run(browser, "browser_open", url=site.origin + "/")
    out = await run(browser, "browser_find", text="FRONT")
    assert out.content == "1 line(s) contain 'FRONT':\nThis is the front page."
    out = await run(browser, "browser_find", text="nowhere")
    assert out.content == "'nowhere' does not occur on the current page."


async def test_allowed_redirect_is_followed(browser: Browser, site: Site) -> None:
    out = await run(browser, "browser_open", url=site.origin + "/hop")
    assert out.content.startswith("Page: About\n") and f"URL: {site.origin}/about" in out.content


async def test_url_outside_the_allow_list_is_refused(browser: Browser, outside: Site) -> None:
    before = len(outside.hits)
    for url in [
        outside.origin + "/secret",
        "file:///etc/passwd",
        "http://127.0.0.1:1/",
        "javascript:alert(1)",
    ]:
        out = await run(browser, "browser_open", url=url)
        assert out.error_kind == "error" and out.content.startswith("URL not allowed: "), url
    assert len(outside.hits) == before


async def test_redirects_and_subresources_cannot_escape(browser: Browser, site: Site, outside: Site) -> None:
    before = len(outside.hits)
    for path in ["/escape", "/escape-chain"]:
        browser.blocked.clear()
        out = await run(browser, "browser_open", url=site.origin + path)
        assert "SECRET PAGE" not in out.content, out.content
        # Routing never sees redirect hops; the proxy refused the hop and the tool says so.
        assert out.error_kind == "error" and "outside the allow-list" in out.content
        assert f"{outside.origin}/secret" in browser.blocked
    out = await run(browser, "browser_open", url=site.origin + "/embeds")
    assert "with an outside image" in out.content
    popup = await run(browser, "browser_open", url=site.origin + "/popup")
    clicked = await run(browser, "browser_click", ref=ref_of(popup.content, "outside"))
    assert "SECRET PAGE" not in clicked.content
    assert outside.hits[before:] == []
    assert any(u.startswith(outside.origin) for u in browser.blocked)


async def test_screenshot(browser: Browser, site: Site, tmp_path: Any) -> None:
    await run(browser, "browser_open", url=site.origin + "/")
    out = await run(browser, "browser_screenshot")
    m = re.fullmatch(r"Screenshot of .* saved to (\S+) \((\d+)x(\d+) PNG, (\d+) bytes\)\.", out.content)
    assert m, out.content
    assert (int(m.group(2)), int(m.group(3))) == (1280, 800)
    assert browser.last_screenshot is not None and browser.last_screenshot.startswith(b"\x89PNG")
    assert await anyio.Path(m.group(1)).read_bytes() == browser.last_screenshot


async def test_empty_allow_list_allows_nothing(site: Site) -> None:
    async with Browser() as b:
        out = await run(b, "browser_open", url=site.origin + "/")
        assert out.error_kind == "error" and "nothing (the allow-list is empty)" in out.content


@pytest.mark.parametrize(
    ("patterns", "url", "allowed"),
    [
        (["http://127.0.0.1:8000"], "http://127.0.0.1:8000/a?b=1", True),
        (["http://127.0.0.1:8000"], "http://127.0.0.1:8001/", False),
        (["http://127.0.0.1:8000"], "https://127.0.0.1:8000/", False),
        (["https://example.com"], "https://example.com/x", True),
        (["https://example.com"], "https://example.com:443/x", True),
        (["https://example.com"], "wss://example.com/socket", True),
        (["https://example.com"], "http://example.com/", False),
        (["https://example.com"], "https://example.com.evil.org/", False),
        (["https://example.com"], "https://evil.org/?u=https://example.com", False),
        (["https://example.com"], "https://example.com@evil.org/", False),
        (["example.com"], "http://example.com:8080/", True),
        (["example.com"], "https://sub.example.com/", False),
        (["*.example.com"], "https://a.b.example.com/", True),
        (["*.example.com"], "https://example.com/", False),
        (["*.example.com"], "https://badexample.com/", False),
        (["example.com"], "ftp://example.com/", False),
        (["example.com"], "data:text/html,hi", False),
        ([], "http://127.0.0.1/", False),
    ],
)
def test_allow_list_rules(patterns: list[str], url: str, allowed: bool) -> None:
    assert UrlAllowList(patterns).allows(url) is allowed


@pytest.mark.parametrize(
    "pattern", ["https://example.com/docs", "ftp://example.com", "http://user:pw@example.com", "exa mple.com"]
)
def test_allow_list_rejects_unenforceable_entries(pattern: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry"):
        UrlAllowList([pattern])
