"""The Store contract: what every store must do, whatever it keeps its rows in.

``StoreContract`` holds the tests (huey's ``StorageTests`` pattern); a subclass
binds them to one implementation through ``make_store(tmp_path)``, which returns a
store on the database that belongs to ``tmp_path`` (called twice, it returns two
handles on the same data). SQLite-only checks (file mode, pragmas, injected I/O
errors, a full disk, another process's lease) live in ``test_store.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine import LeaseLost, ResumeRefused, StepAlreadyCommitted, UsageError
from flowrun.engine.records import Frontier
from flowrun.engine.store import open_store
from flowrun.engine.store.base import Event, LLMCall, StepCommit, Store, TaskResult
from flowrun.engine.store.sqlite import SQLiteStore

FRONTIER0 = Frontier.from_json(
    {"entries": [{"node": "a", "parent": "", "edge": 0}], "held": [], "since": {}}
)
STATE0 = {"n": 0, "items": [], "note": "start"}


def frontier(step: int) -> Frontier:
    return Frontier.from_json({"entries": [{"node": "a", "parent": f"p{step}", "edge": 0}]})


def commit(
    step: int, key: str | None = None, changed: dict[str, str] | None = None, **kw: Any
) -> StepCommit:
    return StepCommit(
        step=step,
        idempotency_key=key or f"idem-{step}",
        digest=f"digest-{step}",
        changed={"n": str(step + 1)} if changed is None else changed,
        frontier=frontier(step),
        tasks=[{"key": f"k{step}", "node": "a", "index": None}],
        **kw,
    )


def result(step: int, key: str = "k", status: str = "ok", **kw: Any) -> TaskResult:
    return TaskResult(step=step, order_key=key, node="a", index=None, status=status, **kw)


def event(run_id: str, seq: int, type: str = "x", **kw: Any) -> Event:
    return Event(run_id, seq, time.time(), kw.pop("step", 0), kw.pop("node", "a"), type, **kw)


def call(run_id: str, node: str = "ask", **kw: Any) -> LLMCall:
    fields: dict[str, Any] = {
        "step": 0,
        "index": None,
        "attempt": 1,
        "provider": "openai",
        "model": "gpt-x",
        "tokens_in": 100,
        "tokens_out": 20,
        "price": {"input": 1.0, "output": 2.0},
        "cost_usd": 0.00014,
        "ts": time.time(),
    }
    fields.update(kw)
    return LLMCall(run_id=run_id, node=node, **fields)


class StoreContract:
    """Every :class:`~flowrun.engine.store.base.Store` passes these."""

    def make_store(self, tmp_path: Path) -> Store:
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        s = self.make_store(tmp_path)
        yield s
        s.close()

    def new_run(self, store: Store, run_id: str = "r1", **state: Any) -> int:
        store.create_run(
            run_id,
            workflow_name="wf",
            workflow_path="/x/wf.yaml",
            workflow_text="name: wf\n",
            workflow_digest="d0",
            state=state or STATE0,
            frontier=FRONTIER0,
            inputs={"n": 0},
        )
        return store.take_lease(run_id).token

    # runs --------------------------------------------------------------------------

    def test_a_new_run_starts_at_step_zero_with_its_state_frontier_and_workflow(
        self, store: Store
    ) -> None:
        self.new_run(store)
        cp = store.load_latest("r1")
        assert (cp.run_id, cp.step, cp.state, cp.frontier, cp.status) == (
            "r1",
            0,
            STATE0,
            FRONTIER0,
            "running",
        )
        rec = store.get_run("r1")
        assert (rec.workflow_name, rec.workflow_path, rec.workflow_digest) == (
            "wf",
            "/x/wf.yaml",
            "d0",
        )
        assert (rec.status, rec.step, rec.finished_at, rec.error) == ("running", 0, None, None)
        assert (rec.parent_run_id, rec.parent_step) == (None, None)
        assert store.workflow_text("r1") == ("/x/wf.yaml", "name: wf\n")
        assert store.steps("r1") == []
        assert store.events("r1") == [] and store.pending_events("r1") == []
        assert store.next_event_seq("r1") == 1

    def test_a_run_id_is_created_once_and_unknown_runs_are_refused(self, store: Store) -> None:
        self.new_run(store)
        with pytest.raises(ResumeRefused, match="already exists"):
            self.new_run(store)
        for read in (store.get_run, store.load_latest, store.workflow_text, store.take_lease):
            with pytest.raises(ResumeRefused, match="no run 'nope'"):
                read("nope")

    def test_what_was_committed_survives_closing_and_reopening(self, tmp_path: Path) -> None:
        first = self.make_store(tmp_path)
        token = self.new_run(first)
        first.save_step("r1", token, commit(0, events=[event("r1", 1)]))
        first.close()
        again = self.make_store(tmp_path)
        cp = again.load_latest("r1")
        assert (cp.step, cp.state["n"], cp.frontier) == (1, 1, frontier(0))
        assert [e.seq for e in again.pending_events("r1")] == [1]
        again.close()

    def test_set_status_records_the_outcome_and_when_a_run_finished(self, store: Store) -> None:
        token = self.new_run(store)
        store.set_status("r1", token, "running")
        assert store.get_run("r1").finished_at is None
        store.set_status(
            "r1", token, "failed", error="boom", events=[event("r1", 1, "run_finished")]
        )
        rec = store.get_run("r1")
        assert (rec.status, rec.error) == ("failed", "boom")
        assert rec.finished_at is not None and rec.finished_at >= rec.created_at
        assert store.load_latest("r1").status == "failed"
        assert [e.type for e in store.events("r1")] == ["run_finished"]
        assert store.next_event_seq("r1") == 2

    # leases and fencing ------------------------------------------------------------

    def test_each_lease_gets_a_newer_token_and_only_the_newest_heartbeats(
        self, store: Store
    ) -> None:
        first = self.new_run(store)
        second = store.take_lease("r1", force=True).token
        assert second > first
        assert store.heartbeat("r1", second)
        assert not store.heartbeat("r1", first)
        store.release_lease("r1", first)  # a stale release leaves the holder's lease alone
        assert store.heartbeat("r1", second)
        store.release_lease("r1", second)
        third = store.take_lease("r1").token  # released: free to take without force
        assert third > second and store.heartbeat("r1", third)

    def test_a_lease_that_was_taken_over_cannot_write_anything_for_the_run(
        self, store: Store
    ) -> None:
        old = self.new_run(store)
        store.save_step("r1", old, commit(0))
        new = store.take_lease("r1", force=True).token
        before = store.load_latest("r1")
        fenced_writes = [
            lambda: store.save_step("r1", old, commit(1, events=[event("r1", 1)])),
            lambda: store.save_task_results("r1", old, [result(1)]),
            lambda: store.save_task_results("r1", old, [result(1, "a"), result(1, "b")]),
            lambda: store.set_status("r1", old, "failed", error="late"),
            lambda: store.append_events("r1", old, [event("r1", 1)]),
            lambda: store.add_state_keys("r1", old, {"extra": 1}),
        ]
        for write in fenced_writes:
            with pytest.raises(LeaseLost, match="taken over"):
                write()
        assert store.load_latest("r1") == before
        assert store.load_task_results("r1", 1) == {}
        assert store.events("r1") == []
        rec = store.get_run("r1")
        assert (rec.status, rec.error, rec.step) == ("running", None, 1)

        store.save_step("r1", new, commit(1))  # the new holder goes on
        assert store.load_latest("r1").step == 2

    # task results --------------------------------------------------------------------

    def test_task_results_round_trip_per_step_and_a_retry_replaces_the_earlier_one(
        self, store: Store
    ) -> None:
        token = self.new_run(store)
        failed = TaskResult(
            step=0,
            order_key="0001",
            node="fetch",
            index=3,
            status="failed",
            delta=None,
            attempts=2,
            started_at=123.5,
            duration_s=0.25,
            error="exit 1",
            stdout="out",
            stderr="err",
        )
        store.save_task_results("r1", token, [failed])
        store.save_task_results(
            "r1", token, [result(0, "0002", delta={"x": [1, "é"]}), result(1, "0001")]
        )
        step0 = store.load_task_results("r1", 0)
        assert step0 == {"0001": failed, "0002": result(0, "0002", delta={"x": [1, "é"]})}
        assert list(store.load_task_results("r1", 1)) == ["0001"]
        assert store.load_task_results("r1", 2) == {}

        retried = result(0, "0001", delta={"n": 5}, attempts=3)
        store.save_task_results("r1", token, [retried])
        assert store.load_task_results("r1", 0)["0001"] == retried

    def test_task_history_comes_from_committed_task_events_and_unfinished_results(
        self, store: Store
    ) -> None:
        token = self.new_run(store)
        done = event(
            "r1",
            1,
            "task_succeeded",
            step=0,
            node="a",
            attempt=2,
            duration=0.5,
            data={"key": "k0", "index": None},
        )
        store.save_step("r1", token, commit(0, events=[done]))
        store.save_task_results("r1", token, [result(1, "k1", "failed", error="boom")])
        history = store.task_results("r1")
        assert [(r.step, r.order_key, r.node, r.status) for r in history] == [
            (0, "k0", "a", "ok"),
            (1, "k1", "a", "failed"),
        ]
        assert (history[0].attempts, history[0].duration_s) == (2, 0.5)
        assert history[1].error == "boom"

    # step commits --------------------------------------------------------------------

    def test_a_step_commit_moves_state_frontier_run_record_results_and_events_together(
        self, store: Store
    ) -> None:
        token = self.new_run(store)
        evs = [event("r1", 1, "task_succeeded"), event("r1", 2, "step_committed")]
        store.save_step(
            "r1",
            token,
            commit(
                0,
                changed={"n": "1", "items": '["a"]'},
                events=evs,
                results=[result(0, "k0", delta={"n": 1})],
                state_digest="sd0",
                duration_s=1.5,
            ),
        )
        cp = store.load_latest("r1")
        assert (cp.step, cp.state, cp.frontier, cp.status) == (
            1,
            {"n": 1, "items": ["a"], "note": "start"},
            frontier(0),
            "running",
        )
        rec = store.get_run("r1")
        assert (rec.step, rec.state_digest, rec.duration_s, rec.finished_at) == (
            1,
            "sd0",
            1.5,
            None,
        )
        assert store.load_task_results("r1", 0)["k0"].delta == {"n": 1}
        assert [e.type for e in store.pending_events("r1")] == ["task_succeeded", "step_committed"]
        assert store.next_event_seq("r1") == 3
        [logged] = store.steps("r1")
        assert (logged["step"], logged["digest"]) == (0, "digest-0")
        assert logged["tasks"] == [{"key": "k0", "node": "a", "index": None}]
        assert store.check_idempotency("idem-0") and not store.check_idempotency("idem-1")

    def test_the_last_step_commit_finishes_the_run(self, store: Store) -> None:
        token = self.new_run(store)
        store.save_step("r1", token, commit(0, status="succeeded"))
        rec = store.get_run("r1")
        assert rec.status == "succeeded" and rec.finished_at is not None
        assert store.load_latest("r1").status == "succeeded"

    def test_a_step_committed_twice_is_refused_whole(self, store: Store) -> None:
        token = self.new_run(store)
        store.save_step("r1", token, commit(0, key="K"))
        before = store.load_latest("r1")
        replay = commit(
            0,
            key="K",
            changed={"n": "99", "note": '"changed"'},
            events=[event("r1", 1)],
            results=[result(0, "late")],
            status="failed",
        )
        with pytest.raises(StepAlreadyCommitted, match="step 0 of run r1 was already committed"):
            store.save_step("r1", token, replay)
        with pytest.raises(StepAlreadyCommitted):  # the same key under another step number
            store.save_step("r1", token, commit(1, key="K", changed={"n": "99"}))
        with pytest.raises(StepAlreadyCommitted):  # the same step number under another key
            store.save_step("r1", token, commit(0, key="other", changed={"n": "99"}))
        # nothing of a refused commit is kept: state, run record, results, events
        assert store.load_latest("r1") == before
        rec = store.get_run("r1")
        assert (rec.status, rec.step, rec.finished_at) == ("running", 1, None)
        assert store.load_task_results("r1", 0) == {}
        assert store.events("r1") == [] and store.next_event_seq("r1") == 1
        assert len(store.steps("r1")) == 1

    def test_every_committed_step_reads_back_as_it_was(self, store: Store) -> None:
        token = self.new_run(store, n=0, big="x" * 10_000)
        for step in range(6):
            store.save_step("r1", token, commit(step))
        assert store.load_latest("r1").state == {"n": 6, "big": "x" * 10_000}
        for step in range(7):
            cp = store.load_at("r1", step)
            assert (cp.step, cp.state["n"], cp.status) == (step, step, "running")
            assert cp.frontier == (FRONTIER0 if step == 0 else frontier(step - 1))
        with pytest.raises(ResumeRefused, match="no committed step 6"):
            store.load_at("r1", 7)
        assert [s["step"] for s in store.steps("r1")] == list(range(6))

    def test_named_checkpoints_point_at_a_committed_step(self, store: Store) -> None:
        token = self.new_run(store)
        for step in range(4):
            store.save_step("r1", token, commit(step))
        store.save_checkpoint("r1", "two", 2)
        store.save_checkpoint("r1", "now")  # no step: where the run is
        assert store.load_checkpoint("r1", "two") == store.load_at("r1", 2)
        assert store.load_checkpoint("r1", "now").state["n"] == 4
        store.save_checkpoint("r1", "two", 1)  # a name is moved, not duplicated
        assert store.load_checkpoint("r1", "two").state["n"] == 1
        with pytest.raises(ResumeRefused, match="no checkpoint named 'nope'"):
            store.load_checkpoint("r1", "nope")

    def test_new_state_keys_join_every_checkpoint_without_overwriting_old_ones(
        self, store: Store
    ) -> None:
        token = self.new_run(store)
        store.save_step("r1", token, commit(0))
        store.add_state_keys("r1", token, {"extra": {"a": 1}, "n": 42, "note": "new"})
        assert store.load_latest("r1").state == {
            "n": 1,
            "items": [],
            "note": "start",
            "extra": {"a": 1},
        }
        assert store.load_at("r1", 0).state["extra"] == {"a": 1}

    # the event outbox ----------------------------------------------------------------

    def test_events_come_back_in_seq_order_and_stay_pending_until_marked(
        self, store: Store
    ) -> None:
        token = self.new_run(store)
        store.set_status("r1", token, "running", events=[event("r1", 1, "run_started")])
        store.save_step(
            "r1", token, commit(0, events=[event("r1", 2), event("r1", 3, data={"k": [1]})])
        )
        store.append_events("r1", token, [event("r1", 4, "task_queued", step=1, attempt=1)])
        assert store.next_event_seq("r1") == 5
        pending = store.pending_events("r1")
        assert [e.seq for e in pending] == [1, 2, 3, 4]
        assert pending[2].data == {"k": [1]} and pending[2].event_id == "r1:3"
        assert (pending[3].type, pending[3].step, pending[3].attempt) == ("task_queued", 1, 1)

        store.mark_events_emitted("r1", 2)
        assert [e.seq for e in store.pending_events("r1")] == [3, 4]
        store.mark_events_emitted("r1", 1)  # never goes backwards
        assert [e.seq for e in store.pending_events("r1")] == [3, 4]
        store.mark_events_emitted("r1", 4)
        assert store.pending_events("r1") == []
        assert [e.seq for e in store.events("r1")] == [1, 2, 3, 4]  # all kept for `show`

    def test_events_of_one_run_are_not_another_runs(self, store: Store) -> None:
        a = self.new_run(store, "a")
        b = self.new_run(store, "b")
        store.append_events("a", a, [event("a", 1), event("a", 2)])
        store.append_events("b", b, [event("b", 1)])
        store.mark_events_emitted("a", 2)
        assert [e.run_id for e in store.pending_events("b")] == ["b"]
        assert store.next_event_seq("a") == 3 and store.next_event_seq("b") == 2

    # finding runs --------------------------------------------------------------------

    def test_runs_are_listed_newest_first_by_status_and_limit(self, store: Store) -> None:
        tokens = {rid: self.new_run(store, rid) for rid in ("r1", "r2", "r3")}
        store.set_status("r2", tokens["r2"], "failed", error="x")
        assert [r.run_id for r in store.list_runs()] == ["r3", "r2", "r1"]
        assert [r.run_id for r in store.list_runs(limit=2)] == ["r3", "r2"]
        assert [r.run_id for r in store.list_runs(status="failed")] == ["r2"]
        assert [r.run_id for r in store.list_runs(status="running")] == ["r3", "r1"]
        assert store.list_runs(status="succeeded") == []

    def test_a_run_is_found_by_id_unique_prefix_or_latest(self, store: Store) -> None:
        with pytest.raises(ResumeRefused, match="no runs"):
            store.resolve_run_id("latest")
        for rid in ("abc-1", "abd-2", "a_x", "a%y", "ab"):
            self.new_run(store, rid)
        assert store.resolve_run_id("latest") == "ab"
        assert store.resolve_run_id("ab") == "ab"  # an exact id wins over being a prefix
        assert store.resolve_run_id("abc") == "abc-1"
        assert store.resolve_run_id("a_") == "a_x"  # LIKE wildcards are plain characters
        assert store.resolve_run_id("a%") == "a%y"
        with pytest.raises(ResumeRefused, match="ambiguous"):
            store.resolve_run_id("a")
        with pytest.raises(ResumeRefused, match="no run matches 'zz'"):
            store.resolve_run_id("zz")

    # the cost ledger -----------------------------------------------------------------

    def test_llm_calls_are_recorded_in_order_per_run_even_after_the_lease_is_lost(
        self, store: Store
    ) -> None:
        self.new_run(store, "a")
        self.new_run(store, "b")
        first = call("a", index=2, cached_tokens=40, cache_write_tokens=5)
        unknown = call(
            "a",
            node="other",
            tokens_in=None,
            tokens_out=None,
            cached_tokens=None,
            cache_write_tokens=None,
            price=None,
            cost_usd=None,
        )
        store.record_llm_call(first)
        store.record_llm_call(call("b"))
        store.take_lease("a", force=True)  # money spent still counts for a lost run
        store.record_llm_call(unknown)
        assert store.llm_calls("a") == [first, unknown]
        assert [c.run_id for c in store.llm_calls("b")] == ["b"]
        assert store.llm_calls("nope") == []

    # forks and pruning ---------------------------------------------------------------

    def test_a_fork_starts_from_the_parents_checkpoint_and_leaves_the_parent_alone(
        self, store: Store
    ) -> None:
        token = self.new_run(store, "p")
        for step in range(4):
            store.save_step("p", token, commit(step, key=f"p-{step}"))
        parent_before = store.load_latest("p")
        store.fork_run("p", 2, "f")
        rec = store.get_run("f")
        assert (rec.parent_run_id, rec.parent_step, rec.step, rec.status) == ("p", 2, 2, "running")
        assert store.workflow_text("f") == store.workflow_text("p")
        cp = store.load_latest("f")
        assert (cp.step, cp.state, cp.frontier) == (2, store.load_at("p", 2).state, frontier(1))
        assert store.load_latest("p") == parent_before

        ftoken = store.take_lease("f").token
        store.save_step("f", ftoken, commit(2, key="f-2", changed={"n": "100"}))
        assert store.load_latest("f").state["n"] == 100
        assert store.load_latest("p").state["n"] == 4

    def test_a_fork_can_carry_a_new_workflow_and_refuses_bad_requests(self, store: Store) -> None:
        token = self.new_run(store, "p")
        store.save_step("p", token, commit(0, key="p-0"))
        store.fork_run(
            "p",
            1,
            "f",
            workflow_name="wf2",
            workflow_path="/y/wf2.yaml",
            workflow_text="name: wf2\n",
            workflow_digest="d2",
        )
        rec = store.get_run("f")
        assert (rec.workflow_name, rec.workflow_digest) == ("wf2", "d2")
        assert store.workflow_text("f") == ("/y/wf2.yaml", "name: wf2\n")
        with pytest.raises(ResumeRefused, match="already exists"):
            store.fork_run("p", 1, "f")
        with pytest.raises(UsageError, match="no checkpoint before step 5"):
            store.fork_run("p", 5, "g")
        with pytest.raises(ResumeRefused, match="no run 'nope'"):
            store.fork_run("nope", 0, "g")

    def test_prune_removes_old_unleased_runs_with_their_rows_and_keeps_live_ones(
        self, store: Store
    ) -> None:
        done = self.new_run(store, "done")
        store.save_step("done", done, commit(0, events=[event("done", 1)]))
        store.set_status("done", done, "succeeded")
        store.release_lease("done", done)
        failed = self.new_run(store, "failed")
        store.set_status("failed", failed, "failed", error="x")
        store.release_lease("failed", failed)
        self.new_run(store, "live")  # this process holds its lease and heartbeats
        cutoff = time.time() + 60

        dry = store.prune_runs(before=cutoff, dry_run=True)
        assert dry.dry_run and sorted(r.run_id for r in dry.runs) == ["done", "failed"]
        assert dry.skipped_live == ["live"]
        assert len(store.list_runs()) == 3

        only_failed = store.prune_runs(before=cutoff, status="failed")
        assert [r.run_id for r in only_failed.runs] == ["failed"]
        assert sorted(r.run_id for r in store.list_runs()) == ["done", "live"]

        assert store.prune_runs(before=0).runs == []  # nothing is that old
        rest = store.prune_runs(before=cutoff)
        assert [r.run_id for r in rest.runs] == ["done"] and rest.skipped_live == ["live"]
        assert [r.run_id for r in store.list_runs()] == ["live"]
        for read in (store.get_run, store.load_latest, store.workflow_text):
            with pytest.raises(ResumeRefused):
                read("done")
        assert store.events("done") == [] and store.steps("done") == []
        assert store.load_task_results("done", 0) == {}


class TestSQLiteStore(StoreContract):
    def make_store(self, tmp_path: Path) -> Store:
        return SQLiteStore(tmp_path / "contract.db")


class TestPostgresStore(StoreContract):
    """The same contract on a real PostgreSQL server (a fresh database per test)."""

    url = ""

    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> None:
        self.url = pg_url

    def make_store(self, tmp_path: Path) -> Store:
        return open_store(self.url)
