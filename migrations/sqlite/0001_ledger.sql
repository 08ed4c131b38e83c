-- The ledger: one row per verified token, append-only. Same shape as the PostgreSQL schema;
-- JSON columns are TEXT, times are RFC 3339 TEXT.

CREATE TABLE ects (
    -- Ledger order (insertion order, gaps possible); the cursor of list endpoints.
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    jti          TEXT NOT NULL UNIQUE,
    wid          TEXT,
    iss          TEXT NOT NULL,
    sub          TEXT,
    exec_act     TEXT NOT NULL,
    -- JSON array of parent jtis (the `par` claim).
    parents      TEXT NOT NULL,
    iat          BIGINT NOT NULL,
    exp          BIGINT NOT NULL,
    out_hash     TEXT,
    ext          TEXT NOT NULL,
    -- The compact JWS as received; the signed bytes are the evidence.
    token        TEXT NOT NULL,
    kid          TEXT NOT NULL,
    -- Lowercase hex SHA-256 of `token`, for duplicate detection.
    content_hash TEXT NOT NULL,
    received_at  TEXT NOT NULL
);

CREATE INDEX ects_wid_seq ON ects (wid, seq);
CREATE INDEX ects_iss_seq ON ects (iss, seq);
CREATE INDEX ects_exec_act_seq ON ects (exec_act, seq);

-- parent -> child, so that descendants are one indexed recursive query.
CREATE TABLE ect_edges (
    parent TEXT NOT NULL,
    child  TEXT NOT NULL,
    wid    TEXT,
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;

CREATE INDEX ect_edges_child ON ect_edges (child);

-- The ledger is evidence: nothing is ever changed or removed, not even by the service itself.
CREATE TRIGGER ects_no_update BEFORE UPDATE ON ects
BEGIN
    SELECT RAISE(ABORT, 'table ects is append-only: UPDATE refused');
END;

CREATE TRIGGER ects_no_delete BEFORE DELETE ON ects
BEGIN
    SELECT RAISE(ABORT, 'table ects is append-only: DELETE refused');
END;

CREATE TRIGGER ect_edges_no_update BEFORE UPDATE ON ect_edges
BEGIN
    SELECT RAISE(ABORT, 'table ect_edges is append-only: UPDATE refused');
END;

CREATE TRIGGER ect_edges_no_delete BEFORE DELETE ON ect_edges
BEGIN
    SELECT RAISE(ABORT, 'table ect_edges is append-only: DELETE refused');
END;

-- One row per workflow, maintained by the append transaction so that listing workflows never
-- scans the ledger. Also the row that rollback decisions lock per workflow.
CREATE TABLE workflows (
    -- Order of first appearance.
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    wid         TEXT NOT NULL UNIQUE,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    nodes       BIGINT NOT NULL,
    checkpoints BIGINT NOT NULL
);

-- Distinct issuers per workflow (the `agents` count).
CREATE TABLE workflow_agents (
    wid TEXT NOT NULL,
    iss TEXT NOT NULL,
    PRIMARY KEY (wid, iss)
) WITHOUT ROWID;
