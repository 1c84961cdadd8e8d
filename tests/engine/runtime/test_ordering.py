"""The digests hash the same bytes as they always did (runs stored before compare equal)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from flowrun.engine.runtime import ordering
from hypothesis import given
from hypothesis import strategies as st

SEP = b"\x1f"


# the functions as they were, part by part: what every stored digest was made with
def old_order_key(parent: str, node: str, edge: int) -> str:
    h = hashlib.sha256()
    h.update(parent.encode())
    h.update(SEP)
    h.update(node.encode())
    h.update(SEP)
    h.update(str(edge).encode())
    return h.hexdigest()


def old_idempotency_key(run_id: str, step: int, keys: Iterable[str]) -> str:
    h = hashlib.sha256()
    h.update(run_id.encode())
    h.update(SEP)
    h.update(str(step).encode())
    for k in keys:
        h.update(SEP)
        h.update(k.encode())
    return h.hexdigest()


def old_state_digest(key_digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(key_digests):
        h.update(k.encode())
        h.update(SEP)
        h.update(key_digests[k].encode())
        h.update(SEP)
    return h.hexdigest()


def old_step_digest(step: int, keys: Iterable[str], state_dig: str) -> str:
    h = hashlib.sha256()
    h.update(str(step).encode())
    for k in keys:
        h.update(SEP)
        h.update(k.encode())
    h.update(SEP)
    h.update(state_dig.encode())
    return h.hexdigest()


texts = st.text(st.characters(blacklist_categories=("Cs",)))  # encodable: no lone surrogates


@given(texts, texts, st.integers(min_value=0, max_value=10**6))
def test_order_key_is_unchanged(parent: str, node: str, edge: int) -> None:
    assert ordering.order_key(parent, node, edge) == old_order_key(parent, node, edge)


@given(texts, st.integers(min_value=0), st.lists(texts))
def test_idempotency_key_is_unchanged(run_id: str, step: int, keys: list[str]) -> None:
    assert ordering.idempotency_key(run_id, step, keys) == old_idempotency_key(run_id, step, keys)
    # any iterable, read once
    assert ordering.idempotency_key(run_id, step, iter(keys)) == old_idempotency_key(
        run_id, step, keys
    )


@given(st.dictionaries(texts, texts))
def test_state_digest_is_unchanged(digests: dict[str, str]) -> None:
    assert ordering.state_digest(digests) == old_state_digest(digests)


@given(st.integers(min_value=0), st.lists(texts), texts)
def test_step_digest_is_unchanged(step: int, keys: list[str], state_dig: str) -> None:
    assert ordering.step_digest(step, keys, state_dig) == old_step_digest(step, keys, state_dig)
    assert ordering.step_digest(step, iter(keys), state_dig) == old_step_digest(
        step, keys, state_dig
    )


def test_digests_of_a_known_run_are_pinned() -> None:
    """Known values, so a change to both the old and the new spelling still shows."""
    root = ordering.order_key("", "start", 0)
    assert root == hashlib.sha256(b"\x1fstart\x1f0").hexdigest()
    assert (
        ordering.idempotency_key("r", 3, ["a", "b"])
        == hashlib.sha256(b"r\x1f3\x1fa\x1fb").hexdigest()
    )
    assert (
        ordering.state_digest({"b": "2", "a": "1"})
        == hashlib.sha256(b"a\x1f1\x1fb\x1f2\x1f").hexdigest()
    )
    assert ordering.step_digest(3, ["k"], "d") == hashlib.sha256(b"3\x1fk\x1fd").hexdigest()
    assert ordering.state_digest({}) == hashlib.sha256(b"").hexdigest()
