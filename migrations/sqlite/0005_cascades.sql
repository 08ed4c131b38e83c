-- Cascade alerts (design.md §10): one row per (pattern, root cause); the root cause's jti fixes
-- the workflow. `token` is the signed `cascade_detected` ECT, kept until the ledger has it
-- (`recorded`), so a crash between the two never loses or doubles the evidence. Same shape as
-- the PostgreSQL schema; `seq` is the rowid, JSON and times are TEXT.

CREATE TABLE cascade_alerts (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    wid             TEXT,
    pattern         TEXT NOT NULL,
    root_cause_ect  TEXT NOT NULL,
    affected_agents TEXT NOT NULL,
    blast_radius    TEXT NOT NULL,
    ect             TEXT NOT NULL,
    token           TEXT NOT NULL,
    recorded        INTEGER NOT NULL DEFAULT 0,
    detected_at     TEXT NOT NULL,
    UNIQUE (pattern, root_cause_ect)
);

CREATE INDEX cascade_alerts_wid_seq ON cascade_alerts (wid, seq);

-- Error clustering reads the reports of one kind near a time.
CREATE INDEX ects_exec_act_iat ON ects (exec_act, iat);
