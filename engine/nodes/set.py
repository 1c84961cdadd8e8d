"""``set: {key: value-or-template}`` nodes: a pure state update."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..spec import templates
from ..spec.model import Node
from .base import Context, TaskError, template_scope


def run_set(
    node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None = None
) -> dict[str, Any]:
    scope = template_scope(state, ctx)
    try:
        return {k: _render(v, scope) for k, v in node.body.items()}
    except templates.TemplateError as exc:
        raise TaskError(str(exc), retryable=False, reason="template") from None


def _render(value: Any, scope: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return templates.render(value, scope)
    if isinstance(value, list):
        return [_render(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, scope) for k, v in value.items()}
    return value
