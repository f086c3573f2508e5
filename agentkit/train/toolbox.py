"""The tools synthetic episodes use, under the name the training code has always imported them by.

They are runtime tools, defined in `agentkit.tiny.tools` (the CLI offers them without importing training
code); this module only re-exports them.
"""

from __future__ import annotations

from agentkit.tiny.tools import EPISODE_TOOLS, all_tools, calculator, convert_units, count_words, days_between

__all__ = ["EPISODE_TOOLS", "all_tools", "calculator", "convert_units", "count_words", "days_between"]
