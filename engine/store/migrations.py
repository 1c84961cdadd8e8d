"""Schema versions, applied in order on first use (``PRAGMA user_version``)."""

from __future__ import annotations

FLOWRUN_APP_ID = 0x666C6F77  # "flow": PRAGMA application_id of every flowrun database

MIGRATIONS: list[str] = [
    # 1: runs, steps, per-key state versions, task results, event outbox, checkpoints
    """
    CREATE TABLE runs (
        run_id          TEXT PRIMARY KEY,
        workflow_name   TEXT NOT NULL,
        workflow_path   TEXT NOT NULL,
        workflow_digest TEXT NOT NULL,
        inputs          TEXT NOT NULL DEFAULT '{}',
        status          TEXT NOT NULL,
        step            INTEGER NOT NULL DEFAULT 0,
        frontier        TEXT NOT NULL,
        state_digest    TEXT,
        error           TEXT,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        finished_at     REAL,
        duration_s      REAL NOT NULL DEFAULT 0,
        event_seq       INTEGER NOT NULL DEFAULT 0,
        events_emitted  INTEGER NOT NULL DEFAULT 0,
        lease_host      TEXT,
        lease_pid       INTEGER,
        lease_heartbeat REAL,
        lease_token     INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_created ON runs (created_at);
    CREATE TABLE workflows (
        digest TEXT PRIMARY KEY,
        text   TEXT NOT NULL
    );
    CREATE TABLE steps (
        run_id       TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        step         INTEGER NOT NULL,
        idem_key     TEXT NOT NULL UNIQUE,
        digest       TEXT NOT NULL,
        tasks        TEXT NOT NULL,
        frontier     TEXT NOT NULL,
        committed_at REAL NOT NULL,
        PRIMARY KEY (run_id, step)
    ) WITHOUT ROWID;
    CREATE TABLE state_kv (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        key    TEXT NOT NULL,
        step   INTEGER NOT NULL,
        value  TEXT NOT NULL,
        PRIMARY KEY (run_id, key, step)
    ) WITHOUT ROWID;
    CREATE TABLE task_results (
        run_id     TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        step       INTEGER NOT NULL,
        order_key  TEXT NOT NULL,
        node       TEXT NOT NULL,
        idx        INTEGER,
        status     TEXT NOT NULL,
        delta      TEXT,
        attempts   INTEGER NOT NULL,
        started_at REAL NOT NULL,
        duration_s REAL NOT NULL,
        error      TEXT,
        stdout     TEXT,
        stderr     TEXT,
        PRIMARY KEY (run_id, step, order_key)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        run_id   TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        ts       REAL NOT NULL,
        step     INTEGER,
        node     TEXT,
        type     TEXT NOT NULL,
        attempt  INTEGER,
        duration REAL,
        error    TEXT,
        data     TEXT,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE checkpoints (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        name   TEXT NOT NULL,
        step   INTEGER NOT NULL,
        PRIMARY KEY (run_id, name)
    );
    """,
    # 2: the cost ledger, one row per billed LLM call, written when the response arrives
    # (token columns NULL: the response carried no usage; cost_usd NULL: unpriced or unknown)
    """
    CREATE TABLE llm_calls (
        id                 INTEGER PRIMARY KEY,
        run_id             TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        step               INTEGER NOT NULL,
        node               TEXT NOT NULL,
        idx                INTEGER,
        attempt            INTEGER NOT NULL,
        provider           TEXT NOT NULL,
        model              TEXT NOT NULL,
        tokens_in          INTEGER,
        tokens_out         INTEGER,
        cached_tokens      INTEGER,
        cache_write_tokens INTEGER,
        price              TEXT,
        cost_usd           REAL,
        ts                 REAL NOT NULL
    );
    CREATE INDEX llm_calls_run ON llm_calls (run_id, id);
    """,
    # 3: forks (`flowrun fork`): the run and step a run was forked from. No foreign key:
    # a fork outlives its parent being pruned and still names where it came from.
    """
    ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
    ALTER TABLE runs ADD COLUMN parent_step INTEGER;
    """,
    # 4: commands in flight: one row per running run/shell process group (its pid and
    # /proc start time, and the flowrun process that started it), deleted as it ends.
    # A takeover kills the groups a dead owner left running, then deletes their rows.
    """
    CREATE TABLE procs (
        id          INTEGER PRIMARY KEY,
        run_id      TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        host        TEXT NOT NULL,
        owner_pid   INTEGER NOT NULL,
        owner_start INTEGER NOT NULL,
        pid         INTEGER NOT NULL,
        pgid        INTEGER NOT NULL,
        start_time  INTEGER NOT NULL,
        step        INTEGER NOT NULL,
        node        TEXT NOT NULL,
        started_at  REAL NOT NULL
    );
    CREATE INDEX procs_run ON procs (run_id);
    """,
    # 5: Anthropic 1-hour cache writes, the part of cache_write_tokens billed at their own
    # rate (NULL on older rows: their writes were all priced as 5-minute writes)
    """
    ALTER TABLE llm_calls ADD COLUMN cache_write_1h_tokens INTEGER;
    """,
    # 6: who holds a lease, exactly: the owner's /proc start time, pid namespace and boot
    # id, so a live owner on this host is never taken for dead (and a reused pid or one
    # in another container never for alive); the same for the owners of commands
    """
    ALTER TABLE runs ADD COLUMN lease_start INTEGER;
    ALTER TABLE runs ADD COLUMN lease_pidns TEXT;
    ALTER TABLE runs ADD COLUMN lease_boot TEXT;
    ALTER TABLE procs ADD COLUMN pidns TEXT;
    ALTER TABLE procs ADD COLUMN boot TEXT;
    """,
    # 7: mark the file as flowrun's (``sqlite_file.examine`` recognises it by this id;
    # older files by the exact table set of their user_version)
    f"""
    PRAGMA application_id = {FLOWRUN_APP_ID};
    """,
    # 8: what tasks printed, one row per attempt, saved in the transaction that saves the
    # task's result: chunks is a JSON array of [stream, text] in the order written, cut
    # the bytes dropped from its start to keep within the run's output limit. Rows are
    # never replaced: a step run again after a failure adds its attempts after the old.
    """
    CREATE TABLE task_output (
        id        INTEGER PRIMARY KEY,
        run_id    TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        step      INTEGER NOT NULL,
        order_key TEXT NOT NULL,
        node      TEXT NOT NULL,
        idx       INTEGER,
        attempt   INTEGER NOT NULL,
        cut       INTEGER NOT NULL DEFAULT 0,
        chunks    TEXT NOT NULL
    );
    CREATE INDEX task_output_run ON task_output (run_id, node, id);
    """,
    # 9: a ledger that leaves no billed call out and budgets that hold: the model the
    # reply named (NULL: it named none, or an older row), the conservative cost estimate
    # of a call of unknown cost (NULL: known cost, or none could be made), and the
    # budget `run --max-cost` gave the run (NULL: none given), which a plain resume keeps
    """
    ALTER TABLE llm_calls ADD COLUMN served_model TEXT;
    ALTER TABLE llm_calls ADD COLUMN estimate_usd REAL;
    ALTER TABLE runs ADD COLUMN max_cost_usd REAL;
    """,
    # 10: reasoning (thinking) tokens, the part of tokens_out a reasoning model spent
    # thinking; priced as output (NULL on older rows: not recorded then)
    """
    ALTER TABLE llm_calls ADD COLUMN reasoning_tokens INTEGER;
    """,
    # 11: where a failed Python node raised: its trimmed traceback, and the raising frame's
    # absolute file and line (NULL for other node kinds and older rows)
    """
    ALTER TABLE task_results ADD COLUMN traceback TEXT;
    ALTER TABLE task_results ADD COLUMN error_file TEXT;
    ALTER TABLE task_results ADD COLUMN error_line INTEGER;
    """,
    # 12: a run's --input values apart from its row (as the workflow text is): runs is
    # updated at every step, and SQLite rewrites a whole row, overflow pages too, so a
    # 10 MB input was written again at each step. runs.inputs is left empty ('{}').
    """
    CREATE TABLE run_inputs (
        run_id TEXT PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
        inputs TEXT NOT NULL
    );
    INSERT INTO run_inputs (run_id, inputs) SELECT run_id, inputs FROM runs;
    UPDATE runs SET inputs = '{}' WHERE inputs != '{}';
    """,
    # 13: an append/extend key stored as what each step added: a delta row's value is the
    # JSON array of the items appended to the key's previous version; the key's value at
    # a step is its last whole row (delta 0) followed by the deltas after it
    """
    ALTER TABLE state_kv ADD COLUMN delta INTEGER NOT NULL DEFAULT 0;
    """,
    # 14: the idempotency key unique within its run, UNIQUE (run_id, idem_key), not across
    # the file. The key hashes the run id, so no two runs share one; but one index over
    # every run's keys took each step's key at a random place, and in a file holding
    # history each step read ~1.3 of its leaves back from disk. Within a run the inserts
    # stay in that run's few pages. SQLite cannot drop a column's UNIQUE: copy the table.
    """
    CREATE TABLE steps_v14 (
        run_id       TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        step         INTEGER NOT NULL,
        idem_key     TEXT NOT NULL,
        digest       TEXT NOT NULL,
        tasks        TEXT NOT NULL,
        frontier     TEXT NOT NULL,
        committed_at REAL NOT NULL,
        PRIMARY KEY (run_id, step),
        UNIQUE (run_id, idem_key)
    ) WITHOUT ROWID;
    INSERT INTO steps_v14 (run_id, step, idem_key, digest, tasks, frontier, committed_at)
        SELECT run_id, step, idem_key, digest, tasks, frontier, committed_at FROM steps;
    DROP TABLE steps;
    ALTER TABLE steps_v14 RENAME TO steps;
    """,
]

# the schema version from which every flowrun database carries FLOWRUN_APP_ID
APP_ID_VERSION = next(i + 1 for i, m in enumerate(MIGRATIONS) if "application_id" in m)
