"""The ordering contract: task digests, idempotency keys, state digests.

``order_key = SHA-256(parent_path ‖ node_id ‖ edge_index)``; tasks are kept in
tree order (parent's position, then edge index), which is total, so merge order
never depends on thread timing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ..records import Task

SEP = b"\x1f"


def order_key(parent: str, node: str, edge: int) -> str:
    h = hashlib.sha256()
    h.update(parent.encode())
    h.update(SEP)
    h.update(node.encode())
    h.update(SEP)
    h.update(str(edge).encode())
    return h.hexdigest()


def idempotency_key(run_id: str, step: int, keys: Iterable[str]) -> str:
    h = hashlib.sha256()
    h.update(run_id.encode())
    h.update(SEP)
    h.update(str(step).encode())
    for k in keys:
        h.update(SEP)
        h.update(k.encode())
    return h.hexdigest()


def value_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def state_digest(key_digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(key_digests):
        h.update(k.encode())
        h.update(SEP)
        h.update(key_digests[k].encode())
        h.update(SEP)
    return h.hexdigest()


def step_digest(step: int, keys: Iterable[str], state_dig: str) -> str:
    """Independent of the run id, so two runs of one workflow can be compared."""
    h = hashlib.sha256()
    h.update(str(step).encode())
    for k in keys:
        h.update(SEP)
        h.update(k.encode())
    h.update(SEP)
    h.update(state_dig.encode())
    return h.hexdigest()


def task_label(task: Task) -> str:
    """How messages name a task: ``node``, or ``node[index]`` under ``foreach``."""
    return task.label
