"""Shared fixtures: workflows written into tmp_path, a CLI runner, the installed binary."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.installed import BIN
from tests.support.pg import pg_server, pg_url, store_url  # noqa: F401 - PostgreSQL fixtures


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """write(name, text) puts a dedented file into tmp_path and returns its path."""

    def _write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return p

    return _write


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "flowrun.db"


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FLOWRUN_DB", raising=False)
    # the suite may itself run in GitHub Actions or GitLab CI: its runs log as a terminal-less
    # shell would, unless a test asks for a CI system's format
    for name in ("GITHUB_ACTIONS", "GITHUB_WORKSPACE", "GITLAB_CI", "FLOWRUN_PROGRESS_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


EXECUTORS = ("threads", "processes", "dask")


@pytest.fixture(params=EXECUTORS)
def executor_kind(request: pytest.FixtureRequest) -> str:
    """Where a test's tasks run: each executor ``Settings(executor=...)`` accepts.

    ``dask`` is the session's cluster (``tcp://…``): one cluster for every test.
    """
    if request.param == "dask":
        return str(request.getfixturevalue("dask_cluster").scheduler_address)
    return str(request.param)


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[Any]:
    """One real Dask cluster for the session: two worker processes of one thread each.

    Started on first use (a test that needs none pays nothing); its address is
    ``dask_cluster.scheduler_address``, for ``--executor tcp://…`` or a Client.
    """
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # not 8787
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def dask_client(dask_cluster: Any) -> Iterator[Any]:
    """A client of the session's cluster, closed after the test."""
    import distributed

    client = distributed.Client(dask_cluster.scheduler_address, timeout=10)
    try:
        yield client
    finally:
        client.close()
