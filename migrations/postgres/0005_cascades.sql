-- Cascade alerts (design.md §10): one row per (pattern, root cause); the root cause's jti fixes
-- the workflow. `token` is the signed `cascade_detected` ECT, kept until the ledger has it
-- (`recorded`), so a crash between the two never loses or doubles the evidence.

CREATE TABLE cascade_alerts (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id              TEXT PRIMARY KEY,
    wid             TEXT,
    pattern         TEXT NOT NULL,
    root_cause_ect  TEXT NOT NULL,
    -- JSON arrays: agent ids, and the jtis of the root cause's blast radius.
    affected_agents JSONB NOT NULL,
    blast_radius    JSONB NOT NULL,
    ect             TEXT NOT NULL,
    token           TEXT NOT NULL,
    recorded        BOOLEAN NOT NULL DEFAULT FALSE,
    detected_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (pattern, root_cause_ect)
);

CREATE INDEX cascade_alerts_wid_seq ON cascade_alerts (wid, seq);
CREATE INDEX cascade_alerts_unrecorded ON cascade_alerts (seq) WHERE NOT recorded;

-- Error clustering reads the reports of one kind near a time.
CREATE INDEX ects_exec_act_iat ON ects (exec_act, iat);
