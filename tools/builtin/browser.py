"""Browser tools: real Chromium through Playwright, confined to a URL allow-list.

`Browser(allow=[...])` owns one headless Chromium (Debian's, at /usr/bin/chromium; nothing is
downloaded) with a fresh profile. Its tools read a page as text in which every link, button and form
field carries a number (`[3] link "Docs"`); the model then clicks or types by that number, which is
sturdier than asking it to write CSS selectors. Nothing outside the allow-list loads: navigation is
checked up front, every request is routed through a check, and all traffic goes through a filtering
proxy that also sees redirect hops (see `_allowlist`). Playwright's async API needs asyncio.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import anyio
from agentkit.tools.tool import Tool, ToolError, tool

from ._allowlist import AllowListProxy, UrlAllowList

__all__ = ["CHROMIUM_ARGS", "Browser", "UrlAllowList"]

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
REF_ATTR = "data-agentkit-ref"
# Bound on a whole browser action: Playwright's own per-step timeout does not cover `evaluate`, and a
# page spinning in JavaScript must not hang the agent.
TOOL_TIMEOUT_S = 60.0

# Walks the visible DOM once: text in reading order, one line per block, headings marked with '#',
# and each interactive element numbered (the number is stored on the element for click/type).
_SNAPSHOT_JS = """
() => {
  const ATTR = "%(attr)s";
  document.querySelectorAll("[" + ATTR + "]").forEach(e => e.removeAttribute(ATTR));
  const SKIP = new Set(["SCRIPT", "STYLE", "NOSCRIPT", "TEMPLATE", "SVG", "HEAD", "IFRAME", "OBJECT"]);
  const BLOCK = new Set(["ADDRESS", "ARTICLE", "ASIDE", "BLOCKQUOTE", "BR", "DD", "DIV", "DL", "DT",
    "FIELDSET", "FIGCAPTION", "FIGURE", "FOOTER", "FORM", "H1", "H2", "H3", "H4", "H5", "H6", "HEADER",
    "HR", "LI", "MAIN", "NAV", "OL", "P", "PRE", "SECTION", "TABLE", "TR", "UL", "BODY"]);
  const lines = [];
  let line = "";
  let n = 0;
  const flush = () => { const t = line.replace(/\\s+/g, " ").trim(); if (t) lines.push(t); line = ""; };
  const clean = s => (s || "").replace(/\\s+/g, " ").trim();
  const visible = el => {
    if (el.hidden) return false;
    const s = getComputedStyle(el);
    return s.display !== "none" && s.visibility !== "hidden";
  };
  const labelOf = el => {
    const aria = el.getAttribute("aria-label");
    if (aria) return clean(aria);
    if (el.labels && el.labels.length) return clean(el.labels[0].innerText);
    return clean(el.getAttribute("placeholder") || el.getAttribute("title") || "");
  };
  const kindOf = el => {
    const tag = el.tagName;
    if (tag === "A" && el.hasAttribute("href")) return "link";
    if (tag === "BUTTON") return "button";
    if (tag === "SELECT") return "select";
    if (tag === "TEXTAREA") return "textarea";
    if (tag === "SUMMARY") return "summary";
    if (tag === "INPUT") {
      const t = (el.getAttribute("type") || "text").toLowerCase();
      if (t === "hidden") return null;
      if (["submit", "button", "reset", "image"].includes(t)) return "button";
      return "input " + t;
    }
    const role = el.getAttribute("role");
    if (role === "button" || role === "link") return role;
    return null;
  };
  const describe = (el, kind, ref) => {
    let d = "[" + ref + "] " + kind;
    if (kind === "link") {
      d += ' "' + (clean(el.innerText) || labelOf(el)) + '" (' + el.getAttribute("href") + ")";
    } else if (kind === "button" || kind === "summary" || kind === "link") {
      d += ' "' + (clean(el.innerText) || clean(el.value) || labelOf(el)) + '"';
    } else if (kind === "select") {
      const opts = Array.from(el.options).map(o => (o.selected ? "*" : "") + clean(o.text));
      d += (labelOf(el) ? ' "' + labelOf(el) + '"' : "") + " options: " + opts.join(" | ");
    } else {
      const label = labelOf(el);
      if (label) d += ' "' + label + '"';
      if (el.name) d += " name=" + el.name;
      if (el.type === "checkbox" || el.type === "radio") d += el.checked ? " checked" : " unchecked";
      else if (el.value) d += ' value="' + clean(el.value).slice(0, 200) + '"';
    }
    return d;
  };
  const walk = node => {
    if (node.nodeType === Node.TEXT_NODE) { line += node.textContent; return; }
    if (node.nodeType !== Node.ELEMENT_NODE) return;
    const el = node;
    if (SKIP.has(el.tagName) || !visible(el)) return;
    const kind = kindOf(el);
    if (kind) {
      n += 1;
      el.setAttribute(ATTR, String(n));
      line += " " + describe(el, kind, n) + " ";
      return;
    }
    const block = BLOCK.has(el.tagName);
    if (block) flush();
    const h = /^H([1-6])$/.exec(el.tagName);
    if (h) line += "#".repeat(Number(h[1])) + " ";
    for (const child of el.childNodes) walk(child);
    if (block) flush();
  };
  if (document.body) walk(document.body);
  flush();
  return { title: document.title, url: location.href, lines: lines, refs: n };
}
""".replace("%(attr)s", REF_ATTR)


class Browser:
    """One Chromium with a fresh profile, its allow-list, and the tools that drive it.

    Use `async with Browser(allow=["http://127.0.0.1:8000"]) as b: agent_tools = b.tools()`; the
    browser also starts lazily on the first tool call, so it can be handed to an agent before any
    event loop runs. All its tools are `sequential`: they share one page.
    """

    def __init__(
        self,
        allow: Iterable[str] | UrlAllowList = (),
        *,
        executable_path: str = CHROMIUM_PATH,
        timeout: float = 15.0,
        screenshot_dir: str | None = None,
        viewport: tuple[int, int] = (1280, 800),
    ) -> None:
        self.allow = allow if isinstance(allow, UrlAllowList) else UrlAllowList(allow)
        self.executable_path = executable_path
        self.timeout = timeout
        self.viewport = viewport
        self.screenshot_dir = screenshot_dir
        # Everything refused, by routing (full URLs) or by the proxy (URLs, or host:port for tunnels).
        self.blocked: list[str] = []
        self.last_screenshot: bytes | None = None
        self._proxy = AllowListProxy(self.allow, self.blocked)
        self._pw: Any = None
        self._context: Any = None
        self._profile: str | None = None
        self._shots = 0

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> Browser:
        if self._context is not None:
            return self
        if not await anyio.Path(self.executable_path).exists():
            raise RuntimeError(f"Chromium not found at {self.executable_path} (install Debian's `chromium`)")
        from playwright.async_api import async_playwright

        port = await self._proxy.start()
        self._profile = tempfile.mkdtemp(prefix="agentkit-chromium-")
        try:
            self._pw = await async_playwright().start()
            self._context = await self._pw.chromium.launch_persistent_context(
                self._profile,
                executable_path=self.executable_path,
                headless=True,
                args=list(CHROMIUM_ARGS),
                proxy={"server": f"http://127.0.0.1:{port}", "bypass": "<-loopback>"},
                service_workers="block",
                accept_downloads=False,
                viewport={"width": self.viewport[0], "height": self.viewport[1]},
            )
            self._context.set_default_timeout(self.timeout * 1000)
            await self._context.route("**/*", self._route)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        context, pw, self._context, self._pw = self._context, self._pw, None, None
        try:
            if context is not None:
                await context.close()
            if pw is not None:
                await pw.stop()
        finally:
            await self._proxy.close()
            if self._profile:
                shutil.rmtree(self._profile, ignore_errors=True)
                self._profile = None

    async def __aenter__(self) -> Browser:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _route(self, route: Any) -> None:
        url = route.request.url
        if self.allow.allows(url):
            await route.continue_()
        else:
            self.blocked.append(url)
            await route.abort("blockedbyclient")

    async def _page(self) -> Any:
        await self.start()
        pages = [p for p in self._context.pages if not p.is_closed()]
        return pages[-1] if pages else await self._context.new_page()

    def tools(self) -> list[Tool]:
        """The browser tools bound to this browser, in the order they are shown to the model."""
        return [self.open, self.page_text, self.find, self.click, self.type, self.back, self.screenshot]

    # -- helpers ------------------------------------------------------------------------------------

    def _check_url(self, url: str) -> None:
        if not self.allow.allows(url):
            allowed = ", ".join(self.allow.patterns) or "nothing (the allow-list is empty)"
            raise ToolError(f"URL not allowed: {url}. This browser may only visit: {allowed}.")

    async def _snapshot(self, page: Any) -> str:
        await _settle(page)
        if not self.allow.allows(page.url) and page.url != "about:blank":
            url = page.url
            await page.goto("about:blank")
            raise ToolError(f"the page ended up at {url}, which is outside the allow-list; it was closed")
        snap = await _evaluate_settled(page, _SNAPSHOT_JS)
        header = f"Page: {snap['title'] or '(untitled)'}\nURL: {snap['url']}"
        body = "\n".join(snap["lines"]) or "(no visible text)"
        return f"{header}\n\n{body}"

    async def _element(self, page: Any, ref: int) -> Any:
        locator = page.locator(f'[{REF_ATTR}="{ref}"]')
        if await locator.count() == 0:
            raise ToolError(
                f"no element [{ref}] on the current page; call browser_text to get fresh element numbers"
            )
        return locator.first

    # -- tools --------------------------------------------------------------------------------------

    @tool(name="browser_open", sequential=True, timeout=TOOL_TIMEOUT_S)
    async def open(self, url: str) -> str:
        """Open a URL in the browser and return the page as text with numbered links and fields.

        Args:
            url: Absolute http(s) URL to open.
        """
        self._check_url(url)
        page = await self._page()
        try:
            await page.goto(url, wait_until="domcontentloaded")
        except Exception as exc:
            raise ToolError(f"could not open {url}: {_first_line(exc)}") from exc
        return await self._snapshot(page)

    @tool(name="browser_text", sequential=True, timeout=TOOL_TIMEOUT_S)
    async def page_text(self) -> str:
        """Return the current page as readable text, with numbered links, buttons and form fields."""
        return await self._snapshot(await self._page())

    @tool(name="browser_find", sequential=True, timeout=TOOL_TIMEOUT_S)
    async def find(self, text: str) -> str:
        """Find the lines of the current page that contain some text (case-insensitive).

        Args:
            text: The text to look for.
        """
        page_text = await self._snapshot(await self._page())
        needle = text.lower()
        hits = [line for line in page_text.split("\n\n", 1)[-1].splitlines() if needle in line.lower()]
        if not hits:
            return f"{text!r} does not occur on the current page."
        return f"{len(hits)} line(s) contain {text!r}:\n" + "\n".join(hits)

    @tool(name="browser_click", sequential=True, timeout=TOOL_TIMEOUT_S)
    async def click(self, ref: int) -> str:
        """Click a link or button by its number from the page text; returns the resulting page.

        Args:
            ref: The element's number, e.g. 3 for "[3] link ...".
        """
        page = await self._page()
        element = await self._element(page, ref)
        try:
            await element.click()
        except Exception as exc:
            raise ToolError(f"could not click [{ref}]: {_first_line(exc)}") from exc
        return await self._snapshot(await self._page())

    @tool(name="browser_type", sequential=True, timeout=TOOL_TIMEOUT_S)
    async def type(self, ref: int, text: str, submit: bool = False) -> str:
        """Type text into a form field (replacing what it held); optionally press Enter to submit.

        Args:
            ref: The field's number from the page text.
            text: The text to enter.
            submit: Press Enter afterwards (submits most forms).
        """
        page = await self._page()
        element = await self._element(page, ref)
        try:
            tag = await element.evaluate("e => e.tagName")
            if tag == "SELECT":
                await element.select_option(label=text)
            else:
                await element.fill(text)
            if submit:
                await element.press("Enter")
        except Exception as exc:
            raise ToolError(f"could not type into [{ref}]: {_first_line(exc)}") from exc
        if submit:
            return await self._snapshot(await self._page())
        return f"Typed into [{ref}]. Call browser_click on the form's button, or type with submit=true."

    @tool(name="browser_back", sequential=True, timeout=TOOL_TIMEOUT_S)
    async def back(self) -> str:
        """Go back to the previous page and return it as text."""
        page = await self._page()
        if await page.go_back(wait_until="domcontentloaded") is None and page.url == "about:blank":
            raise ToolError("there is no previous page")
        return await self._snapshot(page)

    @tool(name="browser_screenshot", sequential=True, timeout=TOOL_TIMEOUT_S)
    async def screenshot(self, full_page: bool = False) -> str:
        """Save a PNG screenshot of the current page and say where it is.

        Args:
            full_page: Capture the whole scrollable page instead of the visible part.
        """
        page = await self._page()
        await _settle(page)
        data: bytes = await page.screenshot(full_page=full_page, type="png")
        self.last_screenshot = data
        folder = self.screenshot_dir or os.path.join(tempfile.gettempdir(), "agentkit-screenshots")
        os.makedirs(folder, exist_ok=True)
        self._shots += 1
        path = os.path.join(folder, f"shot-{os.getpid()}-{id(self):x}-{self._shots}.png")
        with open(path, "wb") as f:  # noqa: ASYNC230 (a small local file)
            f.write(data)
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return f"Screenshot of {page.url} saved to {path} ({width}x{height} PNG, {len(data)} bytes)."


async def _settle(page: Any) -> None:
    """Wait for the DOM of whatever navigation a click or submit started; never fail on it."""
    with contextlib.suppress(Exception):  # a page that never settles is still worth reading as it is
        await page.wait_for_load_state("domcontentloaded")


async def _evaluate_settled(page: Any, script: str, attempts: int = 3) -> Any:
    """Evaluate once the page holds still: a navigation started by the last action can replace the
    document mid-evaluation ("execution context was destroyed"); then wait for it and read again."""
    for attempt in range(attempts):
        try:
            return await page.evaluate(script)
        except Exception as exc:
            if attempt == attempts - 1 or "context" not in str(exc).lower():
                raise ToolError(f"could not read the page: {_first_line(exc)}") from exc
            await _settle(page)
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
