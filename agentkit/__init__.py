"""agentkit: agents on DeepSeek-V4's DSML tool calls and interleaved thinking.

The public surface is deliberately small: an `Agent`, the `tool` decorator, a sandbox class and a model
string. Names are re-exported here lazily so `import agentkit` stays cheap (torch is only imported when
the embedded runtime is actually used).
"""

from __future__ import annotations

__version__ = "0.1.0"
