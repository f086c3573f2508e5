"""Checks a model string must pass before the CLI loads anything: credentials, reachability, files.

A missing API key or a server nobody runs used to surface as a 57-line traceback at the first request,
after the user had watched the model "load". These checks run first, in well under a second for a
local server and at most `timeout` seconds for a remote one, and fail with one line that says what is
wrong and what to do (`PreflightError`). They only look; nothing is loaded or started.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PreflightError", "check_model"]


class PreflightError(Exception):
    """A model string that cannot work here; the message is the one line the CLI prints."""


def check_model(spec: str, *, timeout: float = 5.0) -> None:
    """Raise PreflightError when `spec` cannot work: a bad form, a missing key, an unreachable server,
    or a checkpoint folder that is not one."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        if (Path(spec) / "config.json").is_file() or kind == "scripted":
            return
        raise PreflightError(
            f"model {spec!r} is not a model string; use embedded:tiny, embedded:<checkpoint dir>, "
            "deepseek:<model>, completions:<base_url>#<model> or chat:<base_url>#<model>"
        )
    if kind == "embedded":
        _check_embedded(rest)
    elif kind == "deepseek":
        from agentkit.backends.chat import DEEPSEEK_BASE_URL

        key = os.environ.get("DEEPSEEK_API_KEY")
        if not key:
            raise PreflightError(
                "DEEPSEEK_API_KEY is not set; export your DeepSeek API key "
                "(https://platform.deepseek.com/api_keys) or choose another --model"
            )
        _check_reachable(DEEPSEEK_BASE_URL, key, timeout)
    elif kind in ("completions", "chat"):
        url, hash_, model = rest.rpartition("#")
        if not hash_ or not url or not model:
            raise PreflightError(f"model string must look like '{kind}:<base_url>#<model>', got {spec!r}")
        _check_reachable(url, os.environ.get("OPENAI_API_KEY"), timeout)


def _check_embedded(target: str) -> None:
    if not target:
        raise PreflightError("embedded: needs a name or a checkpoint folder (embedded:tiny, embedded:<dir>)")
    if target == "tiny":
        return
    if "/" not in target and not Path(target).exists():
        from agentkit.runtime.config import _PRESETS

        if target in _PRESETS:
            raise PreflightError(
                f"no weights ship for the {target!r} preset (only tiny's do); download a V4 checkpoint "
                "and pass embedded:<checkpoint dir>"
            )
        raise PreflightError(
            f"embedded:{target} is neither the shipped model (embedded:tiny) nor a checkpoint folder"
        )
    path = Path(target)
    if not path.is_dir():
        raise PreflightError(f"no checkpoint folder at {target} (embedded:<dir> needs a folder)")
    if not (path / "config.json").is_file():
        raise PreflightError(f"{target} is not a checkpoint folder: it has no config.json")


def _check_reachable(base_url: str, key: str | None, timeout: float) -> None:
    """One GET of the server's /v1/models: any HTTP answer but 401/403 means it is there for us."""
    import httpx

    from agentkit.backends._http import api_root

    try:
        root = api_root(base_url)
    except ValueError as e:
        raise PreflightError(str(e)) from None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.get(f"{root}/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        why = str(e) or type(e).__name__
        raise PreflightError(
            f"cannot reach {base_url} ({why}); is the server running and the URL right?"
        ) from None
    if r.status_code in (401, 403):
        raise PreflightError(f"{base_url} refused the API key (HTTP {r.status_code}); check the key")
