-- Human escalation (design.md §6, api.md "HITL webhook"): escalations, the webhook outbox and
-- every delivery attempt. Same shape as the PostgreSQL schema, except that `seq` is the rowid,
-- JSON columns are TEXT and times are RFC 3339 TEXT in UTC (`+00:00`), which sort as text in
-- time order.

CREATE TABLE escalations (
    -- Insertion order; the cursor of `GET /v1/escalations`.
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    wid         TEXT NOT NULL,
    rollback_id TEXT,
    cascade_id  TEXT,
    detail      TEXT NOT NULL,
    -- What makes two escalations the same: kind and subject (see `hitl::escalation`).
    dedup_key   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    resolved_at TEXT,
    decision    TEXT,
    decided_by  TEXT,
    comment     TEXT
);

-- At most one open escalation per subject; resolved ones do not count.
CREATE UNIQUE INDEX escalations_open_once ON escalations (dedup_key) WHERE status = 'open';
CREATE INDEX escalations_status ON escalations (status, seq);
CREATE INDEX escalations_rollback ON escalations (rollback_id) WHERE status = 'open';

-- One row per event and webhook; it stays until the webhook accepted it.
CREATE TABLE webhook_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL,
    -- The cause of the event: enqueuing the same cause again is a no-op.
    event_key       TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    url             TEXT NOT NULL,
    -- The exact bytes sent on every attempt.
    body            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    -- pending | delivered
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    -- The delivery worker sending it, until `lease_until`.
    lease_owner     TEXT,
    lease_until     TEXT,
    delivered_at    TEXT,
    UNIQUE (event_key, url)
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at);

CREATE TABLE webhook_attempts (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery     BIGINT NOT NULL REFERENCES webhook_outbox (seq) ON DELETE CASCADE,
    attempt      BIGINT NOT NULL,
    attempted_at TEXT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    -- The receiver's HTTP status, or NULL with `error` when no answer came.
    http_status  BIGINT,
    error        TEXT
);
