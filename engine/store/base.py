"""The Store protocols: everything the engine persists goes through them.

:class:`RunHistory` is what the history commands read (``runs``, ``show``, ``logs``,
``costs``, reports); :class:`Store` adds what the engine writes. Both stores,
SQLite (``sqlite.py``, the default) and PostgreSQL (``postgres.py``), are one SQL
layer (``sql.py``) with a dialect each; ``open.py`` picks one by URL. Records are
plain frozen dataclasses holding JSON-able values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..records import Frontier


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    workflow_name: str
    workflow_path: str
    workflow_digest: str
    status: str  # running | succeeded | failed | interrupted
    step: int  # the next step to execute (= number of committed steps)
    created_at: float
    updated_at: float
    finished_at: float | None = None
    error: str | None = None
    duration_s: float = 0.0
    state_digest: str | None = None
    parent_run_id: str | None = None  # set on a fork: the run and step it started from
    parent_step: int | None = None
    max_cost_usd: float | None = None  # the budget `run --max-cost` gave (a resume may replace)


@dataclass(frozen=True, slots=True)
class TaskResult:
    """One task's outcome, saved as soon as the task finishes."""

    step: int
    order_key: str
    node: str
    index: int | None
    status: str  # ok | failed | interrupted
    delta: dict[str, Any] | None = None
    attempts: int = 1
    started_at: float = 0.0
    duration_s: float = 0.0
    error: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    traceback: str | None = None  # a failed Python node's, trimmed to the user's frames
    error_file: str | None = None  # the raising frame: absolute path and line
    error_line: int | None = None
    outputs: tuple[TaskOutput, ...] = ()  # what each attempt printed, saved with the result


@dataclass(frozen=True, slots=True)
class TaskOutput:
    """What one attempt of a task printed: the last bytes of it, each chunk tagged.

    ``chunks`` are ``(stream, text)`` pairs in the order they were written, stream
    ``"stdout"`` or ``"stderr"``, adjacent writes to one stream joined. ``cut`` counts
    the bytes dropped from the start to keep within the run's output limit.
    """

    step: int
    order_key: str
    node: str
    index: int | None
    attempt: int
    chunks: tuple[tuple[str, str], ...]
    cut: int = 0

    @property
    def label(self) -> str:
        """How output lines name their task: ``node``, or ``node[index]`` under ``foreach``."""
        return self.node if self.index is None else f"{self.node}[{self.index}]"

    def lines(self) -> list[tuple[str, str]]:
        """``(stream, line)`` pairs, without the line ends; a last unended line counts."""
        out: list[tuple[str, str]] = []
        open_stream: str | None = None  # the stream whose last line has no end yet
        for stream, text in self.chunks:
            parts = text.split("\n")
            if open_stream == stream and out:
                out[-1] = (stream, out[-1][1] + parts.pop(0))
            ended = parts[-1] == ""
            if ended:
                parts.pop()
            out.extend((stream, p) for p in parts)
            open_stream = None if ended else stream
        return out


@dataclass(frozen=True, slots=True)
class Event:
    run_id: str
    seq: int
    ts: float
    step: int | None
    node: str | None
    type: str
    attempt: int | None = None
    duration: float | None = None
    error: str | None = None
    data: dict[str, Any] | None = None

    @property
    def event_id(self) -> str:
        return f"{self.run_id}:{self.seq}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "ts": self.ts,
            "run_id": self.run_id,
            "step": self.step,
            "node": self.node,
            "type": self.type,
            "attempt": self.attempt,
            "duration": self.duration,
            "error": self.error,
        }
        if self.data:
            out["data"] = self.data
        return out


@dataclass(frozen=True, slots=True)
class StepCommit:
    """Everything one superstep changes, committed in one transaction."""

    step: int
    idempotency_key: str
    digest: str
    changed: dict[str, str]  # state key -> JSON text of its new value (only keys that changed)
    frontier: Frontier  # the next frontier (tasks, held joins, join progress)
    # key/node/index of the step's tasks, in order (a big step's made as they are read)
    tasks: Sequence[Mapping[str, Any]]
    events: Sequence[Event] = field(default_factory=list)  # a big step's made as read
    status: str = "running"
    error: str | None = None
    state_digest: str | None = None
    duration_s: float = 0.0
    results: list[TaskResult] = field(default_factory=list)  # task results not yet saved
    # append/extend key -> JSON array of the items it gained this step, stored as a delta
    # on its previous value (a key is in ``changed`` or here, never both)
    appended: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LLMCall:
    """One billed LLM call in the cost ledger. ``None`` tokens: no usage came back (the reply
    carried none, or the request was sent and no usable reply arrived)."""

    run_id: str
    step: int
    node: str
    index: int | None
    attempt: int
    provider: str
    model: str
    tokens_in: int | None  # every input token, cached ones included
    tokens_out: int | None
    cached_tokens: int | None = 0
    cache_write_tokens: int | None = 0
    price: dict[str, Any] | None = None  # Price.to_json() of the rates paid; None: unpriced
    cost_usd: float | None = None  # None: unpriced, or usage unknown
    ts: float = 0.0
    cache_write_1h_tokens: int | None = 0  # of cache_write_tokens, 1-hour cache writes
    served_model: str | None = None  # the model the reply named (``model`` is the requested one)
    estimate_usd: float | None = None  # unknown cost: the conservative estimate a budget counts
    reasoning_tokens: int | None = 0  # of tokens_out, reasoning (thinking) tokens


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """The process that holds (or held) a run's lease.

    ``start`` is ``/proc/<pid>/stat`` field 22, ``pidns`` the target of
    ``/proc/self/ns/pid`` and ``boot`` the kernel's boot id: with them a process on
    the same host and in the same pid namespace can tell whether the owner still
    exists. ``None``: unknown (no ``/proc``, or a lease taken by an older flowrun).
    """

    host: str
    pid: int
    start: int | None = None
    pidns: str | None = None
    boot: str | None = None


@dataclass(frozen=True, slots=True)
class TakenLease:
    """What ``take_lease`` returns: the new token, whom it displaced (None: nobody) and
    that owner's last heartbeat (``time.time()``)."""

    token: int
    previous: LeaseOwner | None = None
    previous_beat: float | None = None


@dataclass(frozen=True, slots=True)
class ProcRecord:
    """A ``run:``/``shell:`` process group in flight, and the flowrun process that started it.

    Start times are ``/proc/<pid>/stat`` field 22 (clock ticks since boot): a pid
    with another start time is another process, so a reused pid is never mistaken
    for the one recorded.
    """

    run_id: str
    host: str
    owner_pid: int  # the flowrun process driving the run
    owner_start: int
    pid: int  # the command's process (its group's leader)
    pgid: int
    start_time: int
    step: int
    node: str
    started_at: float = 0.0
    id: int = 0  # assigned by the store
    pidns: str | None = None  # the owner's pid namespace and boot id (None: an older row)
    boot: str | None = None


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What ``prune_runs`` deleted (or, on a dry run, would delete)."""

    runs: list[RunRecord]
    skipped_live: list[str]  # old enough, but their lease is live
    # a store that is one file (SQLite): its size (and its WAL's) before and after; None
    # where the space is the server's (PostgreSQL: autovacuum reuses it, nothing shrinks)
    bytes_before: int | None = None
    bytes_after: int | None = None
    dry_run: bool = False
    vacuum_error: str | None = None  # the rows are gone, but VACUUM could not run

    @property
    def bytes_reclaimed(self) -> int | None:
        if self.bytes_before is None or self.bytes_after is None:
            return None
        return max(0, self.bytes_before - self.bytes_after)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    run_id: str
    step: int
    state: dict[str, Any]
    frontier: Frontier
    status: str


class RunHistory(Protocol):
    """What the history commands and the reports read; never writes."""

    def get_run(self, run_id: str) -> RunRecord: ...

    def resolve_run_id(self, ref: str) -> str: ...

    def list_runs(self, *, status: str | None = None, limit: int = 20) -> list[RunRecord]: ...

    def run_is_live(self, run_id: str) -> bool: ...

    def workflow_text(self, run_id: str) -> tuple[str, str]: ...

    def inputs(self, run_id: str) -> dict[str, Any]: ...

    def load_latest(self, run_id: str) -> Checkpoint: ...

    def load_at(self, run_id: str, step: int) -> Checkpoint: ...

    def steps(self, run_id: str) -> list[dict[str, Any]]: ...

    def events(self, run_id: str) -> list[Event]: ...

    def task_results(self, run_id: str) -> list[TaskResult]: ...

    def task_outputs(
        self,
        run_id: str,
        *,
        node: str | None = None,
        index: int | None = None,
        attempt: int | None = None,
    ) -> list[TaskOutput]: ...

    def task_output(
        self, run_id: str, step: int, node: str, index: int | None, attempt: int
    ) -> TaskOutput | None: ...

    def llm_calls(self, run_id: str) -> list[LLMCall]: ...

    def procs(self, run_id: str) -> list[ProcRecord]: ...

    def close(self) -> None: ...


class Store(RunHistory, Protocol):
    """Everything the engine, the cost ledger and the maintenance commands write.

    Writes for a run take its lease token and raise ``LeaseLost`` once another
    holder has a newer one (``record_llm_call`` excepted: money spent is kept).
    ``tests/engine/store/test_store_contract.py`` pins the behaviour; a new store binds
    ``StoreContract`` to itself.
    """

    def secrets(self) -> frozenset[str]:
        """The store's own secrets (a PostgreSQL URL's password): a run masks them in
        what it stores and prints, as its commands inherit ``FLOWRUN_DB``."""
        ...

    def create_run(
        self,
        run_id: str,
        *,
        workflow_name: str,
        workflow_path: str,
        workflow_text: str,
        workflow_digest: str,
        state: dict[str, Any],
        frontier: Frontier,
        inputs: dict[str, Any],
    ) -> None: ...

    def take_lease(self, run_id: str, *, force: bool = False) -> TakenLease: ...

    def heartbeat(self, run_id: str, token: int) -> bool: ...

    def release_lease(self, run_id: str, token: int) -> None: ...

    def set_max_cost(self, run_id: str, token: int, max_cost_usd: float | None) -> None: ...

    def add_state_keys(self, run_id: str, token: int, values: dict[str, Any]) -> None: ...

    def save_task_results(self, run_id: str, token: int, results: list[TaskResult]) -> None: ...

    def load_task_results(self, run_id: str, step: int) -> dict[str, TaskResult]: ...

    def save_step(self, run_id: str, token: int, commit: StepCommit) -> None: ...

    def set_status(
        self,
        run_id: str,
        token: int,
        status: str,
        *,
        error: str | None = None,
        events: list[Event] | None = None,
        duration_s: float | None = None,
    ) -> None: ...

    def append_events(self, run_id: str, token: int, events: list[Event]) -> None: ...

    def next_event_seq(self, run_id: str) -> int: ...

    def pending_events(self, run_id: str) -> list[Event]: ...

    def mark_events_emitted(self, run_id: str, upto_seq: int) -> None: ...

    def record_llm_call(self, call: LLMCall) -> None: ...

    def record_proc(self, run_id: str, token: int, proc: ProcRecord) -> int: ...

    def forget_procs(self, run_id: str, token: int, ids: list[int]) -> None: ...

    def fork_run(
        self,
        run_id: str,
        step: int,
        new_run_id: str,
        *,
        workflow_name: str | None = None,
        workflow_path: str | None = None,
        workflow_text: str | None = None,
        workflow_digest: str | None = None,
    ) -> None: ...

    def prune_runs(
        self, *, before: float, status: str | None = None, dry_run: bool = False
    ) -> PruneResult: ...
