-- Rollbacks and their steps (design.md §3, §6). Same shape as the PostgreSQL schema, except that
-- `seq` is the rowid (so `rollback_id` is UNIQUE rather than the primary key), JSON columns are
-- TEXT and times are RFC 3339 TEXT in UTC (`+00:00`), which sort as text in time order.
-- Operational state, not evidence: rows change as rollbacks progress.

CREATE TABLE rollbacks (
    -- Insertion order; the cursor of `GET /v1/rollbacks` and the claim order.
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    rollback_id       TEXT NOT NULL UNIQUE,
    wid               TEXT NOT NULL,
    checkpoint_id     TEXT NOT NULL,
    trigger_ect       TEXT,
    scope             TEXT NOT NULL,
    status            TEXT NOT NULL,
    requested_by      TEXT NOT NULL,
    reason            TEXT,
    on_cannot_prepare TEXT NOT NULL,
    -- SHA-256 of the request's identity: the idempotency check compares it.
    request_hash      TEXT NOT NULL,
    plan              TEXT NOT NULL,
    -- JSON array of agent ids.
    failed_agents     TEXT NOT NULL,
    superseded_by     TEXT,
    evidence_start    TEXT,
    evidence_complete TEXT,
    result            TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    -- Bumped by every write: the SSE event id.
    version           BIGINT NOT NULL,
    -- The worker driving the rollback, until `lease_until`.
    lease_owner       TEXT,
    lease_until       TEXT,
    -- Incremented by every claim; writes under a lease name it, so a stale worker's are refused.
    fence             BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX rollbacks_wid_status ON rollbacks (wid, status);
-- Claims: rollbacks that need a worker, by lease expiry.
CREATE INDEX rollbacks_status_lease ON rollbacks (status, lease_until);

CREATE TABLE rollback_steps (
    rollback_id     TEXT NOT NULL REFERENCES rollbacks (rollback_id) ON DELETE CASCADE,
    checkpoint_id   TEXT NOT NULL,
    agent           TEXT NOT NULL,
    rollback_uri    TEXT,
    rank            BIGINT NOT NULL,
    critical        BOOLEAN NOT NULL,
    reversible      BOOLEAN NOT NULL,
    expired         BOOLEAN NOT NULL,
    -- JSON array of checkpoint ids.
    waits_for       TEXT NOT NULL,
    prepare_status  TEXT NOT NULL,
    execute_status  TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at TEXT,
    -- Both set or both NULL.
    error_code      TEXT,
    error_detail    TEXT,
    -- The agent's last answer.
    response        TEXT,
    reused_from     TEXT,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (rollback_id, checkpoint_id)
) WITHOUT ROWID;
