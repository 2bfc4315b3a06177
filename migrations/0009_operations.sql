-- Operations: what operators see of the chain runtime (issue 10).
--
-- step_run: one row per attempt of a step, written by the chain runtime when
-- the attempt starts and completed when it ends. An attempt whose process
-- died (crash, timeout, out of memory) keeps finished_at NULL: that is how a
-- failure's attempt history shows the attempts SQS itself counted. Rows
-- expire (expires_at), deleted by the ops function's watch.
CREATE TABLE step_run (
    id                BIGSERIAL PRIMARY KEY,
    message_id        TEXT NOT NULL,          -- the envelope id
    attempt           INTEGER NOT NULL,       -- 1 on the first attempt
    step              TEXT NOT NULL,
    function_name     TEXT NOT NULL,          -- AWS_LAMBDA_FUNCTION_NAME
    queue             TEXT,                   -- source queue name; NULL from the console
    provider          TEXT,
    task_id           TEXT,
    trace_id          TEXT NOT NULL,
    depth             INTEGER NOT NULL,
    -- the chain's start (the envelope's created_at, which children inherit)
    chain_started_at  TIMESTAMPTZ NOT NULL,
    started_at        TIMESTAMPTZ NOT NULL,
    finished_at       TIMESTAMPTZ,
    -- NULL while running or when the process died; otherwise the runtime's
    -- disposition: completed, duplicate, retry, dead_lettered, postponed
    outcome           TEXT CHECK (outcome IN ('completed', 'duplicate', 'retry', 'dead_lettered', 'postponed')),
    error             TEXT,
    error_kind        TEXT,
    -- ids of the messages this attempt sent (the chain's next steps or forks)
    children          TEXT[] NOT NULL DEFAULT '{}',
    -- a hand-off this attempt opened (provider-sync) or continued (the import)
    handoff           TEXT,
    expires_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX step_run_message ON step_run (message_id, attempt);
CREATE INDEX step_run_task ON step_run (task_id, started_at) WHERE task_id IS NOT NULL;
CREATE INDEX step_run_started_at ON step_run (started_at);
CREATE INDEX step_run_expires_at ON step_run (expires_at);

-- failed_message: every message that failed for good, with what is needed to
-- find, explain and retry it after its DLQ copy expired (SQS keeps a DLQ
-- message at most 14 days). The DLQ keeps its own copy, so the DLQ-depth
-- alarm and the console's DLQ redrive keep their meaning; the ops watch
-- reconciles the two.
CREATE TABLE failed_message (
    -- the envelope id; 'sqs:<MessageId>' for a body that is not an envelope
    id                TEXT PRIMARY KEY,
    queue             TEXT NOT NULL,          -- source queue name
    queue_url         TEXT NOT NULL,          -- where a retry sends it
    dlq_url           TEXT NOT NULL,
    function_name     TEXT,
    step              TEXT,
    provider          TEXT,
    task_id           TEXT,
    trace_id          TEXT,
    body              TEXT NOT NULL,          -- the message body as it arrived
    -- invalid, permanent, retries_exhausted, loop, routing, or redriven
    -- (SQS moved it after maxReceiveCount receives without an outcome)
    error_kind        TEXT NOT NULL,
    error             TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    failed_at         TIMESTAMPTZ NOT NULL,
    times_failed      INTEGER NOT NULL DEFAULT 1,
    status            TEXT NOT NULL DEFAULT 'failed' CHECK (status IN ('failed', 'retried', 'removed')),
    resolved_at       TIMESTAMPTZ,
    resolved_by       TEXT,
    retries           INTEGER NOT NULL DEFAULT 0,
    expires_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX failed_message_open ON failed_message (failed_at) WHERE status = 'failed';
CREATE INDEX failed_message_task ON failed_message (task_id) WHERE task_id IS NOT NULL;

-- An import attempt that died leaves its row running; a later attempt of the
-- same object marks it superseded, the ops watch marks it abandoned once its
-- Lambda deadline has passed.
ALTER TABLE import_file DROP CONSTRAINT import_file_status_check;
ALTER TABLE import_file ADD CONSTRAINT import_file_status_check
    CHECK (status IN ('running', 'completed', 'completed_with_errors', 'failed', 'superseded', 'abandoned'));
ALTER TABLE import_file ADD COLUMN deadline TIMESTAMPTZ;
CREATE INDEX import_file_running ON import_file (started_at) WHERE status = 'running';
