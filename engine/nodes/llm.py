"""``llm:`` nodes (providers arrive with the cost ledger)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..spec.model import Node
from .base import Context, TaskError


def run_llm(node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None) -> Any:
    raise TaskError("llm nodes are not available in this build yet", retryable=False)
