-- Rollbacks and their steps (design.md §3, §6). Operational state, not evidence: rows change as
-- rollbacks progress (no append-only trigger here).
--
-- Decisions on new requests are serialised per workflow with a transaction-scoped advisory lock
-- (see `store/postgres.rs`), not with the `workflows` row: the lock needs no row to exist and
-- does not make ingest into the same workflow wait.

CREATE TABLE rollbacks (
    rollback_id       TEXT PRIMARY KEY,
    -- Insertion order; the cursor of `GET /v1/rollbacks` and the claim order.
    seq               BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
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
    plan              JSONB NOT NULL,
    -- JSON array of agent ids.
    failed_agents     JSONB NOT NULL,
    superseded_by     TEXT,
    evidence_start    TEXT,
    evidence_complete TEXT,
    result            JSONB NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    -- Bumped by every write: the SSE event id.
    version           BIGINT NOT NULL,
    -- The worker driving the rollback, until `lease_until` (database clock).
    lease_owner       TEXT,
    lease_until       TIMESTAMPTZ,
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
    waits_for       JSONB NOT NULL,
    prepare_status  TEXT NOT NULL,
    execute_status  TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at TIMESTAMPTZ,
    -- Both set or both NULL.
    error_code      TEXT,
    error_detail    TEXT,
    -- The agent's last answer.
    response        JSONB,
    reused_from     TEXT,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (rollback_id, checkpoint_id)
);
