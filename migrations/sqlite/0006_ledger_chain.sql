-- Tamper evidence: a hash chain over the ledger (docs/decisions.md, "Tamper-evident ledger").
-- Entry `seq` (1, 2, 3, ... without gaps) has
--   chain_hash = SHA-256(previous chain_hash || SHA-256(token)), raw digests, hex-encoded,
-- and the hash before entry 1 is 32 zero bytes. Rows already stored are chained by the service
-- when it migrates (in `ects.seq` order), because SQLite has no SHA-256 in SQL.

CREATE TABLE ledger_chain (
    seq        INTEGER PRIMARY KEY,
    jti        TEXT NOT NULL UNIQUE,
    chain_hash TEXT NOT NULL
);

CREATE TRIGGER ledger_chain_no_update BEFORE UPDATE ON ledger_chain
BEGIN
    SELECT RAISE(ABORT, 'table ledger_chain is append-only: UPDATE refused');
END;

CREATE TRIGGER ledger_chain_no_delete BEFORE DELETE ON ledger_chain
BEGIN
    SELECT RAISE(ABORT, 'table ledger_chain is append-only: DELETE refused');
END;

-- The newest entry; appends run one at a time (the single writer), each moving it on.
CREATE TABLE ledger_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        BIGINT NOT NULL,
    chain_hash TEXT NOT NULL,
    -- Rows stored before this migration still wait to be chained (done once, at start-up).
    backfill   INTEGER NOT NULL
);

INSERT INTO ledger_head (id, seq, chain_hash, backfill)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 1);
