"""Node kinds: one module each (command, python, set, llm), found through ``registry``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import attributes

if TYPE_CHECKING:
    from ..records import LLMUsage
    from .base import Context, RunScope, TaskError, TaskTimeout
else:  # mypy sees the imports above, and flags any other name
    __getattr__ = attributes(
        __name__,
        {
            "LLMUsage": "..records",
            **{name: ".base" for name in ("Context", "RunScope", "TaskError", "TaskTimeout")},
        },
    )

__all__ = ["Context", "LLMUsage", "RunScope", "TaskError", "TaskTimeout"]
