"""The SQLite store: one file, WAL, one explicit transaction per write.

:class:`SQLiteStore` is composed of one class per concern, each in its own module
and each building on the plumbing of ``sqlite_db.py``:

==========================  ==============================================================
``sqlite_db.py``            connect + pragmas, ``_tx`` (``BEGIN IMMEDIATE``), migrations,
                            ``_fence`` (the lease-token check inside a transaction)
``sqlite_events.py``        the event outbox (``events``, ``event_seq``, ``events_emitted``)
``sqlite_runs.py``          runs: create, lease, heartbeat, status, look-ups and listing
``sqlite_results.py``       task results, saved as each task finishes
``sqlite_steps.py``         the atomic step commit, state per key, checkpoints
``sqlite_ledger.py``        the LLM cost ledger
``sqlite_procs.py``         commands in flight (killed on takeover if their owner died)
``sqlite_maintenance.py``   ``fork_run`` and ``prune_runs``
``leases.py``               when a lease is live (store-agnostic)
==========================  ==============================================================

Every write is a ``BEGIN IMMEDIATE`` … ``COMMIT`` block from the one ``_tx``, and
every write made on behalf of a run is fenced by its lease token: a process whose
lease was taken over can never commit.
"""

from __future__ import annotations

from .leases import HOST, LEASE_STALE_S, lease_live, pid_alive
from .sqlite_db import BUSY_TIMEOUT_MS, SQLiteDB
from .sqlite_ledger import SQLiteLedger
from .sqlite_maintenance import SQLiteMaintenance
from .sqlite_procs import SQLiteProcs
from .sqlite_steps import SQLiteSteps

__all__ = [
    "BUSY_TIMEOUT_MS",
    "HOST",
    "LEASE_STALE_S",
    "SQLiteDB",
    "SQLiteStore",
    "lease_live",
    "pid_alive",
]


class SQLiteStore(SQLiteMaintenance, SQLiteSteps, SQLiteLedger, SQLiteProcs):
    """The :class:`~.base.Store` on one SQLite file (``SQLiteStore(path, durability=...)``).

    ``durability="full"`` sets ``synchronous=FULL`` (every commit survives power
    loss); the default ``normal`` survives a process crash. The connection is shared
    by the coordinator, the heartbeat thread and LLM worker threads; ``_tx`` holds a
    lock around each transaction.
    """
