-- Human escalation (design.md §6, api.md "HITL webhook"): escalations, the webhook outbox and
-- every delivery attempt. Operational state, not evidence: rows change as escalations are
-- resolved and deliveries progress (no append-only trigger here).

CREATE TABLE escalations (
    id          TEXT PRIMARY KEY,
    -- Insertion order; the cursor of `GET /v1/escalations`.
    seq         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    wid         TEXT NOT NULL,
    rollback_id TEXT,
    cascade_id  TEXT,
    detail      JSONB NOT NULL,
    -- What makes two escalations the same: kind and subject (see `hitl::escalation`).
    dedup_key   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    resolved_at TIMESTAMPTZ,
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
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        TEXT NOT NULL,
    -- The cause of the event: enqueuing the same cause again is a no-op.
    event_key       TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    url             TEXT NOT NULL,
    -- The exact bytes sent on every attempt.
    body            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    -- pending | delivered
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    -- The delivery worker sending it, until `lease_until` (database clock).
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    delivered_at    TIMESTAMPTZ,
    UNIQUE (event_key, url)
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at);

CREATE TABLE webhook_attempts (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery     BIGINT NOT NULL REFERENCES webhook_outbox (seq) ON DELETE CASCADE,
    attempt      BIGINT NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL,
    duration_ms  BIGINT NOT NULL,
    -- The receiver's HTTP status, or NULL with `error` when no answer came.
    http_status  BIGINT,
    error        TEXT
);
