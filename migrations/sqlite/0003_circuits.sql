-- Circuit breakers toward agents (the cascade draft's "Circuit Breaker Protocol"), shared by
-- every replica: one row per downstream agent, written only by compare-and-set on `version`,
-- so that two replicas agree on an open breaker and only one of them probes it. Each replica
-- keeps its own call counts in memory; this row holds what they must agree on. The history of
-- openings and closings is in the ledger (`circuit_breaker_open` / `circuit_breaker_close`).
-- Times are Unix milliseconds, the same in both back ends.

CREATE TABLE circuits (
    agent            TEXT PRIMARY KEY,
    state            TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    -- When the current cooldown started (the opening, or the last failed probe).
    opened_at_ms     BIGINT,
    -- The current cooldown, and every cooldown since the breaker first opened.
    cooldown_s       BIGINT NOT NULL,
    total_cooldown_s BIGINT NOT NULL,
    -- The error rate that opened the breaker.
    error_rate       REAL NOT NULL,
    -- The `rollback_start` of the last failed call.
    last_failure_ect TEXT,
    -- The last `circuit_breaker_open` ECT and its `wid`: the parent of the closing ECT.
    open_ect         TEXT,
    open_wid         TEXT,
    updated_at_ms    BIGINT NOT NULL,
    version          BIGINT NOT NULL
);
