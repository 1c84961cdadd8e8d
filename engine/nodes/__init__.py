"""Node kinds: one module each (command, python, set, llm)."""

from __future__ import annotations

from .base import Context, LLMUsage, RunScope, TaskError, TaskTimeout, execute

__all__ = ["Context", "LLMUsage", "RunScope", "TaskError", "TaskTimeout", "execute"]
