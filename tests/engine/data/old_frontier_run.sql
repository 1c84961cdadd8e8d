-- A run written by flowrun before typed frontiers (main at 1825416): step 1's node c failed,
-- its frontier holds join j with since {"j": ["a"]}. Loaded by tests/e2e/test_lazy_steps.py.
PRAGMA user_version = 13;
PRAGMA application_id = 1718382455;
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
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
    , parent_run_id TEXT, parent_step INTEGER, lease_start INTEGER, lease_pidns TEXT, lease_boot TEXT, max_cost_usd REAL);
INSERT INTO runs VALUES('old','old-join','/tmp/oldfmt/join.yaml','95922e42e2fbb88d8463d8bd5b56fc20a2e908649a2fe2456b1c951e46607b67','{}','failed',1,'{"entries":[{"edge":0,"node":"c","parent":"9ef9fee9f36ac2aff50fc91bf0ec2eeb090c183238330102f32c5b9f9edfb8c9"}],"held":[{"edge":0,"node":"j","parent":"fb98e520a61042e29c0cad5041ebfae8508d1756bf32f5cd4cca33d58b670636"}],"since":{"j":["a"]}}','2ef3797a3904b25d7284adaaed6c3b1edb575dfd0f6c5f5e8a68539ca41da67d','node ''c'' failed after 1 attempt(s): joinlib.py:6 in c: RuntimeError: not fixed yet',1796221691.4492571353,1796221691.47041893,1796221691.4704177379,0.020510007000098084972,6,0,NULL,NULL,NULL,1,NULL,NULL,NULL,NULL,NULL,NULL);
CREATE TABLE workflows (
        digest TEXT PRIMARY KEY,
        text   TEXT NOT NULL
    );
INSERT INTO workflows VALUES('95922e42e2fbb88d8463d8bd5b56fc20a2e908649a2fe2456b1c951e46607b67',replace('name: old-join\nstate:\n  x: {default: 0}\n  c: {default: 0}\n  total: {default: 0}\nstart: [a, b]\nnodes:\n  a:\n    set: {x: 41}\n    next: j\n  b:\n    set: {}\n    next: c\n  c:\n    python: joinlib:c\n    next: j\n  j:\n    needs: [a, c]\n    python: joinlib:j\n','\n',char(10)));
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
INSERT INTO steps VALUES('old',-1,'init:old','','[]','{"entries":[{"edge":0,"node":"a","parent":""},{"edge":1,"node":"b","parent":""}],"held":[],"since":{}}',1796221691.4492571353);
INSERT INTO steps VALUES('old',0,'9bb00706b46a496bd71a97ef96e6336234de8adb36d5979acf52826bcb16e7ba','c890b8f649fac5f291292c73b790244004482aea66a58c649cfef4ad7851380f','[{"index":null,"key":"fb98e520a61042e29c0cad5041ebfae8508d1756bf32f5cd4cca33d58b670636","node":"a"},{"index":null,"key":"9ef9fee9f36ac2aff50fc91bf0ec2eeb090c183238330102f32c5b9f9edfb8c9","node":"b"}]','{"entries":[{"edge":0,"node":"c","parent":"9ef9fee9f36ac2aff50fc91bf0ec2eeb090c183238330102f32c5b9f9edfb8c9"}],"held":[{"edge":0,"node":"j","parent":"fb98e520a61042e29c0cad5041ebfae8508d1756bf32f5cd4cca33d58b670636"}],"since":{"j":["a"]}}',1796221691.459385395);
CREATE TABLE state_kv (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        key    TEXT NOT NULL,
        step   INTEGER NOT NULL,
        value  TEXT NOT NULL, delta INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, key, step)
    ) WITHOUT ROWID;
INSERT INTO state_kv VALUES('old','c',-1,'0',0);
INSERT INTO state_kv VALUES('old','total',-1,'0',0);
INSERT INTO state_kv VALUES('old','x',-1,'0',0);
INSERT INTO state_kv VALUES('old','x',0,'41',0);
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
        stderr     TEXT, traceback TEXT, error_file TEXT, error_line INTEGER,
        PRIMARY KEY (run_id, step, order_key)
    ) WITHOUT ROWID;
INSERT INTO task_results VALUES('old',0,'fb98e520a61042e29c0cad5041ebfae8508d1756bf32f5cd4cca33d58b670636','a',NULL,'ok','{"x":41}',1,1796221691.4557552337,0.0028523450000648153945,NULL,NULL,NULL,NULL,NULL,NULL);
INSERT INTO task_results VALUES('old',1,'456df3f382a1299443cc265dd660796b7ab10776f2eb7107a48c171dfd6900ee','c',NULL,'failed',NULL,1,1796221691.4595680236,0.010611246999928880541,'joinlib.py:6 in c: RuntimeError: not fixed yet',NULL,NULL,replace('Traceback (most recent call last):\n  File "joinlib.py", line 6, in c\n    raise RuntimeError("not fixed yet")\nRuntimeError: not fixed yet','\n',char(10)),'/tmp/oldfmt/joinlib.py',6);
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
INSERT INTO events VALUES('old',1,1796221691.4530177116,0,NULL,'run_started',NULL,NULL,NULL,'{"workflow":"old-join"}');
INSERT INTO events VALUES('old',2,1796221691.4586076736,0,'a','task_succeeded',1,0.0028523450000648153945,NULL,'{"index":null,"key":"fb98e520a61042e29c0cad5041ebfae8508d1756bf32f5cd4cca33d58b670636"}');
INSERT INTO events VALUES('old',3,1796221691.4591152668,0,'b','task_succeeded',1,0.0027634809999881326803,NULL,'{"index":null,"key":"9ef9fee9f36ac2aff50fc91bf0ec2eeb090c183238330102f32c5b9f9edfb8c9"}');
INSERT INTO events VALUES('old',4,1796221691.4593031406,0,NULL,'step_committed',NULL,0.0060571719999416018254,NULL,'{"tasks":2}');
INSERT INTO events VALUES('old',5,1796221691.4701793193,1,'c','task_failed',1,0.010611246999928880541,'joinlib.py:6 in c: RuntimeError: not fixed yet','{"index":null,"key":"456df3f382a1299443cc265dd660796b7ab10776f2eb7107a48c171dfd6900ee"}');
INSERT INTO events VALUES('old',6,1796221691.4704074859,NULL,NULL,'run_failed',NULL,NULL,'node ''c'' failed after 1 attempt(s): joinlib.py:6 in c: RuntimeError: not fixed yet',NULL);
CREATE TABLE checkpoints (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        name   TEXT NOT NULL,
        step   INTEGER NOT NULL,
        PRIMARY KEY (run_id, name)
    );
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
    , cache_write_1h_tokens INTEGER, served_model TEXT, estimate_usd REAL, reasoning_tokens INTEGER);
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
    , pidns TEXT, boot TEXT);
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
CREATE TABLE run_inputs (
        run_id TEXT PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
        inputs TEXT NOT NULL
    );
INSERT INTO run_inputs VALUES('old','{}');
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX llm_calls_run ON llm_calls (run_id, id);
CREATE INDEX procs_run ON procs (run_id);
CREATE INDEX task_output_run ON task_output (run_id, node, id);
COMMIT;
