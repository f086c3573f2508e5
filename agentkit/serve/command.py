"""`agentkit serve [MODEL]`: its arguments and what it runs, kept out of cli.py so the CLI only registers it.

Nothing heavy is imported until the command runs (the CLI's other commands never pay for starlette or
the runtime).
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_serve_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `serve` on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (needs the `server` extra)",
        description="Serve the embedded runtime's engine: /v1/models, /v1/chat/completions, /v1/completions.",
    )
    p.add_argument(
        "model",
        nargs="?",
        default="embedded:tiny",
        help="embedded:tiny (default), a preset name or a checkpoint directory",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=os.environ.get("AGENTKIT_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $AGENTKIT_API_KEY; none: open)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=32,
        help="sequences decoded together; more requests wait in the engine's queue (default 32)",
    )
    p.add_argument("--served-model-name", default=None, help="the model id clients send")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=None,
        help="completion limit for chat requests that give none (default: the rest of the context)",
    )
    return p


def run_serve(args: argparse.Namespace) -> int:
    try:
        from agentkit.serve.server import serve
    except ImportError as exc:
        raise SystemExit(
            f"agentkit serve needs the server extra: pip install 'agentkit[server]' ({exc})"
        ) from exc
    if args.max_concurrency < 1:
        raise SystemExit("--max-concurrency must be >= 1")
    target = args.model.removeprefix("embedded:")
    if ":" in target and not os.path.isdir(target):
        raise SystemExit(
            f"agentkit serve serves an embedded model (a preset or a checkpoint folder), not {args.model!r}"
        )
    serve(
        args.model,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        max_concurrency=args.max_concurrency,
        served_name=args.served_model_name,
        device=args.device,
        default_max_tokens=args.default_max_tokens,
    )
    return 0


__all__ = ["add_serve_parser", "run_serve"]
