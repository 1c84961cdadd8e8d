"""Workflow files: YAML loading with positions, validation, templates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import attributes

if TYPE_CHECKING:
    from .model import END, Config, Node, RetryPolicy, Route, StateKey, Workflow
    from .validate import file_changed, load_workflow, parse_duration
else:  # lazy: the model's records without the YAML loader, the validator and Jinja2
    __getattr__ = attributes(
        __name__,
        {
            "END": ".model",
            "Config": ".model",
            "Node": ".model",
            "RetryPolicy": ".model",
            "Route": ".model",
            "StateKey": ".model",
            "Workflow": ".model",
            "file_changed": ".validate",
            "load_workflow": ".validate",
            "parse_duration": ".validate",
        },
    )

__all__ = [
    "END",
    "Config",
    "Node",
    "RetryPolicy",
    "Route",
    "StateKey",
    "Workflow",
    "file_changed",
    "load_workflow",
    "parse_duration",
]
