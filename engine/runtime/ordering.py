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
_SEP = "\x1f"

# Each digest hashes one buffer, joined as text and encoded once (UTF-8 of a join is
# the join of the parts' UTF-8): the same bytes as feeding the parts one by one, for
# a fraction of the calls. tests/engine/runtime/test_ordering.py pins them.


def order_key(parent: str, node: str, edge: int) -> str:
    return hashlib.sha256(f"{parent}{_SEP}{node}{_SEP}{edge!s}".encode()).hexdigest()


def idempotency_key(run_id: str, step: int, keys: Iterable[str]) -> str:
    return hashlib.sha256(_SEP.join((run_id, str(step), *keys)).encode()).hexdigest()


def value_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def state_digest(key_digests: dict[str, str]) -> str:
    text = "".join([f"{k}{_SEP}{key_digests[k]}{_SEP}" for k in sorted(key_digests)])
    return hashlib.sha256(text.encode()).hexdigest()


def step_digest(step: int, keys: Iterable[str], state_dig: str) -> str:
    """Independent of the run id, so two runs of one workflow can be compared."""
    return hashlib.sha256(_SEP.join((str(step), *keys, state_dig)).encode()).hexdigest()


def task_label(task: Task) -> str:
    """How messages name a task: ``node``, or ``node[index]`` under ``foreach``."""
    return task.label
