-- The coordinator's signing keys, shared by every replica of one database (api.md "Signed
-- records Unwind emits"): a key generated once and kept here unless `signing_key_file` is
-- configured. At most one key is active (it signs); every key not yet retired is published in
-- `/.well-known/jwks.json` and trusted, so evidence signed by an earlier key still verifies.
-- The private JWK sits in this table: the database account must be guarded like the key.
-- Times are Unix milliseconds, the same in both back ends.

CREATE TABLE coordinator_keys (
    -- RFC 7638 thumbprint of the public key.
    kid           TEXT PRIMARY KEY,
    -- JOSE algorithm name (`ES256`, `ES384`, `EdDSA`).
    alg           TEXT NOT NULL,
    private_jwk   TEXT NOT NULL,
    active        BOOLEAN NOT NULL,
    created_at_ms BIGINT NOT NULL,
    retired_at_ms BIGINT,
    CHECK (NOT active OR retired_at_ms IS NULL)
);

-- Replicas starting together each offer a key; this index lets exactly one become active.
CREATE UNIQUE INDEX coordinator_keys_one_active ON coordinator_keys (active) WHERE active;
