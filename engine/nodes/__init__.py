"""Node kinds: one module each (command, python, set, llm)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import attributes

if TYPE_CHECKING:
    from .base import Context, LLMUsage, RunScope, TaskError, TaskTimeout, execute
else:  # mypy sees the imports above, and flags any other name
    __getattr__ = attributes(
        __name__,
        {
            name: ".base"
            for name in ("Context", "LLMUsage", "RunScope", "TaskError", "TaskTimeout", "execute")
        },
    )

__all__ = ["Context", "LLMUsage", "RunScope", "TaskError", "TaskTimeout", "execute"]
