-- The ledger: one row per verified token, append-only.

CREATE TABLE ects (
    -- Ledger order (insertion order, gaps possible); the cursor of list endpoints.
    seq          BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    jti          TEXT PRIMARY KEY,
    wid          TEXT,
    iss          TEXT NOT NULL,
    sub          TEXT,
    exec_act     TEXT NOT NULL,
    -- JSON array of parent jtis (the `par` claim).
    parents      JSONB NOT NULL,
    iat          BIGINT NOT NULL,
    exp          BIGINT NOT NULL,
    out_hash     TEXT,
    ext          JSONB NOT NULL,
    -- The compact JWS as received; the signed bytes are the evidence.
    token        TEXT NOT NULL,
    kid          TEXT NOT NULL,
    -- Lowercase hex SHA-256 of `token`, for duplicate detection.
    content_hash TEXT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL
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
);

CREATE INDEX ect_edges_child ON ect_edges (child);

-- The ledger is evidence: nothing is ever changed or removed, not even by the service itself.
-- Statement-level, so that even an UPDATE or DELETE matching no row is refused.
CREATE FUNCTION unwind_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER ects_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ects
    FOR EACH STATEMENT EXECUTE FUNCTION unwind_refuse_change();

CREATE TRIGGER ect_edges_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ect_edges
    FOR EACH STATEMENT EXECUTE FUNCTION unwind_refuse_change();

-- One row per workflow, maintained by the append transaction so that listing workflows never
-- scans the ledger. Also the row that rollback decisions lock per workflow.
CREATE TABLE workflows (
    wid         TEXT PRIMARY KEY,
    -- Order of first appearance.
    seq         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    first_seen  TIMESTAMPTZ NOT NULL,
    last_seen   TIMESTAMPTZ NOT NULL,
    nodes       BIGINT NOT NULL,
    checkpoints BIGINT NOT NULL
);

-- Distinct issuers per workflow (the `agents` count).
CREATE TABLE workflow_agents (
    wid TEXT NOT NULL,
    iss TEXT NOT NULL,
    PRIMARY KEY (wid, iss)
);
