"""Steps and state: the atomic step commit and reading checkpoints back.

``save_step`` is the one transaction per superstep: the run row (fenced), the step
row (its idempotency key UNIQUE within the run), the changed state keys, the remaining task results
and the step's events. State is versioned per key (``state_kv``), so a checkpoint
after any step reads back without copying unchanged values; an append/extend key's
version may be a delta (the items it gained) on the one before.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import ResumeRefused, StepAlreadyCommitted
from ..jsonvalue import dumps, dumps_list
from ..records import Frontier
from .base import Checkpoint, StepCommit
from .results import SQLTaskResults
from .sql import SQLConn


class SQLSteps(SQLTaskResults):
    """The ``steps``, ``state_kv`` and ``checkpoints`` tables."""

    def save_step(self, run_id: str, token: int, commit: StepCommit) -> None:
        # before the lock
        frontier, tasks = dumps(commit.frontier.to_json()), dumps_list(commit.tasks)
        try:
            with self._tx() as c:
                updates: dict[str, Any] = {
                    "step": commit.step + 1,
                    "frontier": frontier,
                    "status": commit.status,
                    "error": commit.error,
                    "state_digest": commit.state_digest,
                    "duration_s": commit.duration_s,
                }
                if commit.events:
                    updates["event_seq"] = commit.events[-1].seq
                if commit.status != "running":
                    updates["finished_at"] = time.time()
                # fence first: a process whose lease was taken over gets LeaseLost, never a
                # clash with rows (steps, events) the new holder already wrote
                self._fence(c, run_id, token, **updates)
                c.execute(
                    "INSERT INTO steps (run_id, step, idem_key, digest, tasks, frontier,"
                    " committed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        commit.step,
                        commit.idempotency_key,
                        commit.digest,
                        tasks,
                        frontier,
                        time.time(),
                    ),
                )
                if commit.changed:
                    c.executemany(
                        "INSERT INTO state_kv (run_id, key, step, value) VALUES (?, ?, ?, ?)",
                        [(run_id, k, commit.step, v) for k, v in commit.changed.items()],
                    )
                if commit.appended:
                    c.executemany(
                        "INSERT INTO state_kv (run_id, key, step, value, delta)"
                        " VALUES (?, ?, ?, ?, 1)",
                        [(run_id, k, commit.step, v) for k, v in commit.appended.items()],
                    )
                self._insert_results(c, run_id, commit.results)
                if commit.events:
                    self._insert_events(c, run_id, commit.events, bump=False)
        except self._IntegrityError as exc:
            if "idem_key" in str(exc) or "steps" in str(exc):
                raise StepAlreadyCommitted(
                    f"step {commit.step} of run {run_id} was already committed"
                    f" (idempotency key {commit.idempotency_key[:12]})"
                ) from None
            raise

    # not in the Store protocol: no command uses these yet (SPEC §4 names them) -----------
    def check_idempotency(self, key: str, run_id: str | None = None) -> bool:
        """True if a step with this idempotency key was committed (in ``run_id``'s steps:
        the key is unique within its run, and only a search given the run uses an index)."""
        sql, args = "SELECT 1 FROM steps WHERE idem_key = ?", [key]
        if run_id is not None:
            sql, args = sql + " AND run_id = ?", [key, run_id]
        with self._read() as c:
            return c.execute(sql, args).fetchone() is not None

    def save_checkpoint(self, run_id: str, name: str, step: int | None = None) -> None:
        """Name the checkpoint after ``step`` (default: where the run is); a name moves."""
        with self._tx() as c:
            if step is None:
                (step,) = c.execute("SELECT step FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            c.execute(
                "INSERT INTO checkpoints (run_id, name, step) VALUES (?, ?, ?)"
                " ON CONFLICT (run_id, name) DO UPDATE SET step = excluded.step",
                (run_id, name, step),
            )

    def load_checkpoint(self, run_id: str, name: str) -> Checkpoint:
        with self._read() as c:
            row = c.execute(
                "SELECT step FROM checkpoints WHERE run_id = ? AND name = ?", (run_id, name)
            ).fetchone()
        if row is None:
            raise ResumeRefused(f"run {run_id} has no checkpoint named {name!r}")
        return self.load_at(run_id, row[0])

    # ---------------------------------------------------------------------------------
    def add_state_keys(self, run_id: str, token: int, values: dict[str, Any]) -> None:
        """Keys a changed workflow declares that the run did not have yet (their defaults)."""
        with self._tx() as c:
            self._fence(c, run_id, token)
            c.executemany(
                "INSERT INTO state_kv (run_id, key, step, value) VALUES (?, ?, -1, ?)"
                " ON CONFLICT DO NOTHING",
                [(run_id, k, dumps(v)) for k, v in values.items()],
            )

    def _state_at(self, c: SQLConn, run_id: str, step: int) -> dict[str, Any]:
        """Every declared key's value after committed step ``step``, in one query: each key's
        last whole version at or before it, then the deltas after that one.

        The run's keys are found by seeking from one to the next (every key has its
        step -1 row), and each key's versions are read from there: index seeks only,
        whatever the run's length. Left to choose, SQLite's planner (without
        statistics) read every version of the run to find them (0.7 ms after 1,000
        steps instead of 0.04)."""
        versions: dict[str, list[str]] = {}
        for key, value in c.execute(
            "WITH RECURSIVE keys (key) AS ("
            "  SELECT min(key) FROM state_kv WHERE run_id = ?"
            "  UNION ALL SELECT (SELECT min(n.key) FROM state_kv n"
            "   WHERE n.run_id = ? AND n.key > keys.key) FROM keys WHERE keys.key IS NOT NULL)"
            " SELECT k.key, s.value FROM keys k CROSS JOIN state_kv s"
            " WHERE s.run_id = ? AND s.key = k.key AND s.step <= ? AND s.step >= ("
            "  SELECT w.step FROM state_kv w WHERE w.run_id = ? AND w.key = k.key"
            "  AND w.step <= ? AND w.delta = 0 ORDER BY w.step DESC LIMIT 1)"
            " ORDER BY k.key, s.step",
            (run_id, run_id, run_id, step, run_id, step),
        ):
            versions.setdefault(key, []).append(value)
        state: dict[str, Any] = {}
        for key in sorted(versions):  # code point order, whatever the database's collation
            whole, *deltas = versions[key]
            state[key] = json.loads(whole)
            for items in deltas:  # the engine bounds how many (AppendLog)
                state[key].extend(json.loads(items))
        return state

    def load_latest(self, run_id: str) -> Checkpoint:
        with self._read() as c:
            row = c.execute(
                "SELECT step, frontier, status FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise ResumeRefused(f"no run {run_id!r}")
            step, frontier, status = row
            state = self._state_at(c, run_id, step - 1)
        return Checkpoint(run_id, step, state, Frontier.from_json(json.loads(frontier)), status)

    def load_at(self, run_id: str, step: int) -> Checkpoint:
        """The checkpoint after committed step ``step - 1`` (step 0: the initial state)."""
        with self._read() as c:
            row = c.execute(
                "SELECT frontier FROM steps WHERE run_id = ? AND step = ?", (run_id, step - 1)
            ).fetchone()
            if row is None:
                raise ResumeRefused(f"run {run_id} has no committed step {step - 1}")
            state = self._state_at(c, run_id, step - 1)
        return Checkpoint(run_id, step, state, Frontier.from_json(json.loads(row[0])), "running")

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        with self._read() as c:
            rows = c.execute(
                "SELECT step, digest, tasks, committed_at FROM steps WHERE run_id = ? AND step >= 0"
                " ORDER BY step",
                (run_id,),
            ).fetchall()
        return [
            {"step": r[0], "digest": r[1], "tasks": json.loads(r[2]), "committed_at": r[3]}
            for r in rows
        ]
