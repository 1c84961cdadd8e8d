"""``python: module:function`` nodes, called as ``fn(state, ctx)``.

The workflow file's folder is importable. The call runs on a daemon thread so a
node past its timeout can be abandoned (``ctx.cancelled`` is set) without keeping
the process alive at exit.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ..spec.model import Node
from .base import Context, TaskError, TaskTimeout

_path_lock = threading.Lock()


def resolve(target: str, base_dir: str) -> Callable[..., Any]:
    module_name, _, fn_name = target.partition(":")
    with _path_lock:
        if base_dir not in sys.path:
            sys.path.insert(0, base_dir)
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise TaskError(
                f"cannot import {module_name!r}: {type(exc).__name__}: {exc}", retryable=False
            ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise TaskError(f"{module_name!r} has no function {fn_name!r}", retryable=False)
    return fn  # type: ignore[no-any-return]


def run_python(node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None) -> Any:
    fn = resolve(node.body, str(ctx.scope.base_dir))
    view = MappingProxyType(dict(state)) if not isinstance(state, MappingProxyType) else state
    box: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            box["value"] = fn(view, ctx)
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=call, name=f"flowrun-{ctx.node}", daemon=True)
    t.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not done.wait(
        0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
    ):
        if ctx.scope.abort.is_set():
            ctx.cancelled.set()
            raise TaskError(
                "interrupted; the call was abandoned", retryable=False, reason="interrupted"
            )
        if deadline is not None and time.monotonic() >= deadline:
            ctx.cancelled.set()
            raise TaskTimeout(
                f"timed out after {timeout:g}s; the call was abandoned (ctx.cancelled set)"
            )
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, TaskError):
            raise exc
        raise TaskError(f"{type(exc).__name__}: {exc}") from exc
    return box.get("value")
