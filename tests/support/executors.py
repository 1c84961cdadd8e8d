"""Executors in tests: an environment variable set where a run's tasks will read it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def worker_env(executor_kind: str, name: str, value: str) -> Iterator[None]:
    """``name=value`` here and, on a Dask scheduler, in its workers' environments too.

    Thread and process workers take this process's environment; a Dask worker has its
    own (docs/distributed.md), set here as its user would set it, then unset.
    """
    os.environ[name] = value
    client = None
    if executor_kind.startswith("tcp://"):
        import distributed

        client = distributed.Client(executor_kind, timeout=10)
        client.run(_setenv, name, value)
    try:
        yield
    finally:
        del os.environ[name]
        if client is not None:
            client.run(_setenv, name, None)
            client.close()


def _setenv(name: str, value: str | None) -> None:
    """On a worker: set (or, ``None``, unset) ``name`` in its own environment."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
