"""Workflow files: YAML loading with positions, validation, templates."""

from __future__ import annotations

from .model import END, Config, Node, RetryPolicy, Route, StateKey, Workflow
from .validate import file_changed, load_workflow, parse_duration

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
