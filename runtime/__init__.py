"""The embedded DeepSeek-V4 runtime (imported as `agentkit.runtime`).

The engine's names are exported lazily (`from agentkit.runtime import Engine`), so importing the package
stays free of torch until something from it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentkit.runtime.engine import Engine, EngineStats, StepRecord
    from agentkit.runtime.engine_request import (
        EngineClosed,
        EngineError,
        EngineResult,
        RequestError,
        RequestHandle,
    )
    from agentkit.runtime.prefix_cache import CacheStats, PrefixCache

_LAZY = {
    "Engine": "engine",
    "EngineStats": "engine",
    "StepRecord": "engine",
    "EngineClosed": "engine_request",
    "EngineError": "engine_request",
    "EngineResult": "engine_request",
    "RequestError": "engine_request",
    "RequestHandle": "engine_request",
    "CacheStats": "prefix_cache",
    "PrefixCache": "prefix_cache",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "CacheStats",
    "Engine",
    "EngineClosed",
    "EngineError",
    "EngineResult",
    "EngineStats",
    "PrefixCache",
    "RequestError",
    "RequestHandle",
    "StepRecord",
]
