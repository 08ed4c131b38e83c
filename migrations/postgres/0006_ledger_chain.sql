-- Tamper evidence: a hash chain over the ledger (docs/decisions.md, "Tamper-evident ledger").
-- Entry `seq` (1, 2, 3, ... without gaps) has
--   chain_hash = SHA-256(previous chain_hash || SHA-256(token)), raw digests, hex-encoded,
-- and the hash before entry 1 is 32 zero bytes. Rows already stored are chained by the service
-- when it migrates (in `ects.seq` order), because SQLite has no SHA-256 in SQL.

CREATE TABLE ledger_chain (
    seq        BIGINT PRIMARY KEY,
    jti        TEXT NOT NULL UNIQUE,
    chain_hash TEXT NOT NULL
);

CREATE TRIGGER ledger_chain_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_chain
    FOR EACH STATEMENT EXECUTE FUNCTION unwind_refuse_change();

-- The newest entry. Every append locks this one row (FOR UPDATE) for its chain step, so
-- concurrent appends, on any replica, extend the chain one after the other.
CREATE TABLE ledger_head (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        BIGINT NOT NULL,
    chain_hash TEXT NOT NULL,
    -- Rows stored before this migration still wait to be chained (done once, at start-up).
    backfill   BOOLEAN NOT NULL
);

INSERT INTO ledger_head (id, seq, chain_hash, backfill)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', TRUE);
