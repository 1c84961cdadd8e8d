"""Task results: each task's outcome, saved as soon as it finishes.

Results of a step that has not committed yet let a resumed run skip the tasks
that already succeeded; ``task_results`` joins them with the task events for
``flowrun show``. What each attempt printed (``task_output``) is written with its
result, in the same transaction, and read back in task order for ``flowrun logs``.
"""

from __future__ import annotations

import json
from typing import Any

from ..jsonvalue import dumps
from .base import TaskOutput, TaskResult
from .events import SQLEvents
from .sql import SQLConn


class SQLTaskResults(SQLEvents):
    """The ``task_results`` table (and, for the history, the task events)."""

    def save_task_results(self, run_id: str, token: int, results: list[TaskResult]) -> None:
        """Results that finished together, in one transaction (a group commit)."""
        with self._tx() as c:
            self._fence(c, run_id, token)
            self._insert_results(c, run_id, results)

    def _insert_results(self, c: SQLConn, run_id: str, results: list[TaskResult]) -> None:
        if not results:
            return
        c.executemany(
            "INSERT INTO task_results (run_id, step, order_key, node, idx, status,"
            " delta, attempts, started_at, duration_s, error, stdout, stderr, traceback,"
            " error_file, error_line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id, step, order_key) DO UPDATE SET " + _REPLACE_RESULT,
            [
                (
                    run_id,
                    result.step,
                    result.order_key,
                    result.node,
                    result.index,
                    result.status,
                    None if result.delta is None else dumps(result.delta),
                    result.attempts,
                    result.started_at,
                    result.duration_s,
                    result.error,
                    result.stdout,
                    result.stderr,
                    result.traceback,
                    result.error_file,
                    result.error_line,
                )
                for result in results
            ],
        )
        outputs = [o for result in results for o in result.outputs]
        if outputs:
            c.executemany(
                "INSERT INTO task_output (run_id, step, order_key, node, idx, attempt, cut,"
                " chunks) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        o.step,
                        o.order_key,
                        o.node,
                        o.index,
                        o.attempt,
                        o.cut,
                        json.dumps(o.chunks, ensure_ascii=False, separators=(",", ":")),
                    )
                    for o in outputs
                ],
            )

    def _results(self, sql: str, args: tuple[Any, ...]) -> list[TaskResult]:
        with self._read() as c:
            rows = c.execute(
                "SELECT step, order_key, node, idx, status, delta, attempts, started_at,"
                f" duration_s, error, stdout, stderr, {self._failure_cols()}"
                " FROM task_results " + sql,
                args,
            ).fetchall()
        return [
            TaskResult(
                step=r[0],
                order_key=r[1],
                node=r[2],
                index=r[3],
                status=r[4],
                delta=None if r[5] is None else json.loads(r[5]),
                attempts=r[6],
                started_at=r[7],
                duration_s=r[8],
                error=r[9],
                stdout=r[10],
                stderr=r[11],
                traceback=r[12],
                error_file=r[13],
                error_line=r[14],
            )
            for r in rows
        ]

    def load_task_results(self, run_id: str, step: int) -> dict[str, TaskResult]:
        rows = self._results("WHERE run_id = ? AND step = ?", (run_id, step))
        return {r.order_key: r for r in rows}

    def task_results(self, run_id: str) -> list[TaskResult]:
        """Every task outcome of the run, oldest first.

        A committed step's outcomes are its task events (a step's last results are
        not kept as rows of their own unless they carry output tails); rows add
        the delta and tails where they exist, and cover the step the run stopped in.
        """
        rows = {
            (r.step, r.order_key, r.status): r for r in self._results("WHERE run_id = ?", (run_id,))
        }
        with self._read() as c:
            row = c.execute("SELECT step FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        current = row[0] if row else 0
        out: list[TaskResult] = []
        for e in self._events(
            "WHERE run_id = ? AND type IN ('task_succeeded', 'task_failed') ORDER BY seq", (run_id,)
        ):
            data = e.data or {}
            status = "ok" if e.type == "task_succeeded" else "failed"
            key = str(data.get("key", ""))
            saved = rows.pop((e.step or 0, key, status), None)
            out.append(
                saved
                or TaskResult(
                    step=e.step or 0,
                    order_key=key,
                    node=e.node or "",
                    index=data.get("index"),
                    status=status,
                    attempts=e.attempt or 1,
                    started_at=e.ts - (e.duration or 0.0),
                    duration_s=e.duration or 0.0,
                    error=e.error,
                )
            )
        out.extend(
            r for r in sorted(rows.values(), key=lambda r: r.started_at) if r.step >= current
        )
        return out

    def task_outputs(
        self,
        run_id: str,
        *,
        node: str | None = None,
        index: int | None = None,
        attempt: int | None = None,
    ) -> list[TaskOutput]:
        """What the run's tasks printed, per attempt, in task order.

        Task order is step by step, and within a step the order of its tasks (as
        committed; the step a run stopped in by its frontier's nodes, then index).
        A task's attempts come in the order they ran.
        """
        where: list[str] = ["run_id = ?"]
        args: list[Any] = [run_id]
        for column, value in (("node", node), ("idx", index), ("attempt", attempt)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        with self._read() as c:
            rows = c.execute(
                "SELECT id, step, order_key, node, idx, attempt, cut, chunks FROM task_output"
                f" WHERE {' AND '.join(where)} ORDER BY id",
                args,
            ).fetchall()
            if not rows:
                return []
            steps = sorted({r[1] for r in rows})
            marks = ",".join("?" * len(steps))
            step_tasks = c.execute(
                f"SELECT step, tasks FROM steps WHERE run_id = ? AND step IN ({marks})",
                [run_id, *steps],
            ).fetchall()
            entries = c.execute("SELECT frontier FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        position: dict[tuple[int, str], tuple[int, int, int]] = {}
        for step, tasks in step_tasks:
            for i, t in enumerate(json.loads(tasks)):
                position[(step, t["key"])] = (i, 0, 0)
        # the step the run stopped in has no task list yet: its frontier gives the order of
        # its nodes, and a foreach node's tasks go by index
        nodes: dict[str, int] = {}
        for i, e in enumerate(json.loads(entries[0]).get("entries", []) if entries else []):
            nodes.setdefault(e["node"], i)
        first: dict[tuple[int, str], int] = {}  # a task's first row
        for r in rows:
            first.setdefault((r[1], r[2]), r[0])

        def place(r: tuple[Any, ...]) -> tuple[int, ...]:
            task = (r[1], r[2])
            at = position.get(task) or (len(position), nodes.get(r[3], len(nodes)), r[4] or 0)
            return (r[1], *at, first[task], r[0])

        rows.sort(key=place)
        return [_output(r) for r in rows]

    def task_output(
        self, run_id: str, step: int, node: str, index: int | None, attempt: int
    ) -> TaskOutput | None:
        """What one attempt printed (the latest such attempt, if the step ran again)."""
        with self._read() as c:
            row = c.execute(
                "SELECT id, step, order_key, node, idx, attempt, cut, chunks FROM task_output"
                f" WHERE run_id = ? AND step = ? AND node = ? AND idx {self._IS} ? AND attempt = ?"
                " ORDER BY id DESC LIMIT 1",
                (run_id, step, node, index, attempt),
            ).fetchone()
        return None if row is None else _output(row)


_REPLACE_RESULT = ", ".join(  # a retried task's new result replaces the earlier one
    f"{col} = excluded.{col}"
    for col in (
        *("node", "idx", "status", "delta", "attempts", "started_at", "duration_s", "error"),
        *("stdout", "stderr", "traceback", "error_file", "error_line"),
    )
)


def _output(row: tuple[Any, ...]) -> TaskOutput:
    _, step, order_key, node, index, attempt, cut, chunks = row
    return TaskOutput(
        step=step,
        order_key=order_key,
        node=node,
        index=index,
        attempt=attempt,
        chunks=tuple((str(s), str(t)) for s, t in json.loads(chunks)),
        cut=cut,
    )
