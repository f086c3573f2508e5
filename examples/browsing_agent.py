"""A browsing agent: real headless Chromium, confined to an allow-list, answering from a web site.

    python examples/browsing_agent.py --serve-demo-site             # offline: local site, scripted model
    python examples/browsing_agent.py --model deepseek:deepseek-v4-flash \\
        --url https://docs.python.org/3/ "Which Python version do these docs describe?"

The agent gets the `Browser` tool set (`browser_open`, `browser_text`, `browser_find`, `browser_click`,
`browser_type`, `browser_back`, `browser_screenshot`). Pages come back as text in which every link,
button and field carries a number the model clicks or types by. Only the origins in `--allow` (default:
the start URL's origin) load; anything else, navigations and embedded resources alike, is refused and
listed at the end.

`--serve-demo-site` serves a tiny shop on 127.0.0.1 (a home page linking to a pricing table, plus an
image from an outside tracker that the allow-list blocks). `--model scripted` (the default) stands in
for a model offline: it opens the start URL, follows the link that looks like pricing, searches the
page for the plan the question names and answers with the price it found there.
"""

from __future__ import annotations

import argparse
import http.server
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
from agentkit.tools.builtin.browser import Browser, UrlAllowList
from rich.console import Console
from rich.markup import escape

from agentkit import Agent
from agentkit.backends import Model, ModelError, ModelRequest, ScriptedModel, resolve
from agentkit.backends.scripted import scripted_turn
from agentkit.cli import RunStats, stream_run
from agentkit.messages import AssistantMessage, ToolMessage, UserMessage

INSTRUCTIONS = (
    "You answer questions from web pages. Open the start URL, follow links and search pages with the "
    "browser tools, and answer only from what the pages say, naming the page you read it on."
)
TRACKER = "http://tracker.invalid/pixel.gif"


# ------------------------------------------------------------------------------------ the demo site


def demo_pages(team_price: str = "29") -> dict[str, str]:
    """The demo shop's pages by path; `team_price` varies so a test can tell a read price from a guess."""
    style = "<style>body{font-family:sans-serif} td{padding:0 1em}</style>"
    return {
        "/": f"""<!doctype html><html><head><title>Acme Cloud</title>{style}</head><body>
<h1>Acme Cloud</h1>
<p>Hosted notebooks for small teams.</p>
<nav><a href="/about.html">About us</a> <a href="/pricing.html">Pricing</a></nav>
<img src="{TRACKER}" alt="">
</body></html>""",
        "/pricing.html": f"""<!doctype html><html><head><title>Pricing - Acme Cloud</title>{style}</head>
<body><h1>Plans and pricing</h1>
<table>
  <tr> <th>Plan</th> <th>Price</th> <th>Seats</th> </tr>
  <tr> <td>Starter</td> <td>$9 per month</td> <td>1</td> </tr>
  <tr> <td>Team</td> <td>${team_price} per month</td> <td>10</td> </tr>
  <tr> <td>Enterprise</td> <td>ask us</td> <td>unlimited</td> </tr>
</table>
<p><a href="/">Home</a></p>
</body></html>""",
        "/about.html": """<!doctype html><html><head><title>About - Acme Cloud</title></head><body>
<h1>About Acme Cloud</h1><p>Founded in 2021 by three people who were tired of setting up servers.</p>
</body></html>""",
    }


@contextmanager
def serve_demo_site(team_price: str = "29") -> Iterator[str]:
    """Serve the demo shop on 127.0.0.1 (a free port) in a background thread; yields its origin."""
    pages = demo_pages(team_price)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = pages.get(urlsplit(self.path).path)
            data = (body or "<h1>Not found</h1>").encode("utf-8")
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ------------------------------------------------------------------ the offline stand-in for a model


def say(req: ModelRequest, reasoning: str, content: str = "", calls: Sequence[tuple[str, Any]] = ()) -> str:
    """One assistant turn as the model would write it: canonical DSML, in the run's thinking mode."""
    return scripted_turn(reasoning, content, calls, thinking=req.thinking)


def _history(req: ModelRequest) -> tuple[str, list[tuple[str, str]]]:
    """The question, and (tool name, result) for every call since it was asked."""
    msgs = list(req.messages)
    last_user = max(i for i, m in enumerate(msgs) if isinstance(m, UserMessage))
    names: dict[str, str] = {}
    done: list[tuple[str, str]] = []
    for m in msgs[last_user + 1 :]:
        if isinstance(m, AssistantMessage):
            names.update({c.id: c.name for c in m.tool_calls})
        elif isinstance(m, ToolMessage) and m.call_id in names:
            done.append((names[m.call_id], m.content))
    return str(msgs[last_user].content), done


def _page_url(page_text: str) -> str:
    found = re.search(r"^URL: (\S+)$", page_text, re.MULTILINE)
    return found.group(1) if found else "the page"


def scripted_policy(req: ModelRequest) -> str:
    """Open the URL in the question, click the pricing link, find the named plan, quote its price."""
    question, done = _history(req)
    plan = re.search(r"(\w+) plan", question)
    url = re.search(r"https?://[^\s,]+", question)
    if plan is None or url is None:
        return say(req, "I need a start URL and a plan name.", "Ask about '<Name> plan' on an http(s) URL.")
    if not done:
        start = url.group(0).rstrip(".?!")
        return say(req, "Open the site first.", calls=[("browser_open", {"url": start})])
    name, result = done[-1]
    if name in ("browser_open", "browser_click") and sum(n == "browser_click" for n, _ in done) == 0:
        link = re.search(r"\[(\d+)\] link \"[^\"]*pric[^\"]*\"", result, re.IGNORECASE)
        if link is None:
            return say(req, "No pricing link.", f"I found no pricing page on {_page_url(result)}.")
        return say(
            req, "Prices are behind the pricing link.", calls=[("browser_click", {"ref": int(link[1])})]
        )
    if name == "browser_click":
        return say(req, f"Look for the {plan[1]} row.", calls=[("browser_find", {"text": plan[1]})])
    if name == "browser_find":
        page = _page_url(next(r for n, r in reversed(done) if n == "browser_click"))
        price = re.search(r"\$\d+(?:\.\d\d)?(?: per \w+)?", result)
        if price is None:
            return say(req, "No price on that line.", f"{page} does not list a price for the {plan[1]} plan.")
        return say(req, "Found it.", f"The {plan[1]} plan costs {price[0]} (according to {page}).")
    return say(req, "Unexpected result.", f"Stopping: {name} said {result[:200]}")


def make_model(spec: str | Model) -> Model:
    """`scripted` is this file's offline stand-in; any other string goes to `agentkit.backends.resolve`
    (a malformed spec raises ValueError there, before anything starts)."""
    if spec == "scripted":
        return ScriptedModel([scripted_policy] * 12)
    return resolve(spec)


# ------------------------------------------------------------------------------------ running it


@dataclass(slots=True)
class Outcome:
    stats: RunStats
    blocked: list[str]


async def browse(
    question: str, allow: Sequence[str], model: str | Model = "scripted", console: Console | None = None
) -> Outcome:
    """Answer `question` with a fresh Chromium that may load only `allow`; streamed to `console`."""
    console = console or Console(highlight=False)
    async with Browser(allow=allow) as browser:
        agent: Agent[None, str] = Agent(make_model(model), browser.tools(), instructions=INSTRUCTIONS)
        stats = await stream_run(agent, question, console)
        blocked = list(browser.blocked)
    for url in blocked:
        console.print(f"[red]blocked by the allow-list:[/] {url}")
    return Outcome(stats, blocked)


def origin(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url must be an absolute http(s) URL, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("question", nargs="?", default=None, help="default: the Team plan's price on --url")
    p.add_argument(
        "--model", default="scripted", help="scripted | deepseek:<name> | completions:<url>#<name>"
    )
    p.add_argument("--url", default=None, help="where the agent starts")
    p.add_argument("--allow", action="append", default=None, help="allowed origin or host (repeatable)")
    p.add_argument("--serve-demo-site", action="store_true", help="serve the demo shop on 127.0.0.1")
    p.add_argument("--team-price", default="29", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    console = console or Console(highlight=False)
    if args.serve_demo_site == (args.url is not None):
        p.error("give exactly one of --serve-demo-site and --url")
    try:
        model = make_model(args.model)
        if args.url is not None:
            UrlAllowList(args.allow or [origin(args.url)])
    except (ValueError, ModelError) as exc:
        p.error(str(exc))

    def ask(url: str) -> int:
        question = args.question or f"According to {url}, how much does the Team plan cost per month?"
        if url not in question:
            question = f"{question} (start at {url})"
        try:
            outcome = anyio.run(browse, question, args.allow or [origin(url)], model, console)
        except ModelError as exc:  # the server is unreachable, refused the key, or broke the protocol
            console.print(f"[red]model error:[/] {escape(str(exc))}")
            return 1
        return 0 if outcome.stats.status == "completed" else 1

    if args.serve_demo_site:
        with serve_demo_site(args.team_price) as url:
            console.print(f"demo site: {url}")
            return ask(url + "/")
    return ask(args.url)


if __name__ == "__main__":
    sys.exit(main())
