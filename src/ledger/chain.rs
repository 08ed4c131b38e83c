//! The ledger's hash chain (assurance level L3, docs/decisions.md "Tamper-evident ledger").
//!
//! Entry `n` (positions 1, 2, 3, … without gaps, in append order) is
//! `chain_hash(n) = SHA-256(chain_hash(n-1) || SHA-256(token(n)))` over the raw 32-byte digests,
//! with `chain_hash(0)` = [`GENESIS`] (32 zero bytes); hashes are written as lowercase hex.
//! Editing, removing or reordering any stored token changes every hash from its entry on.

/// `chain_hash(0)`: 32 zero bytes, as hex.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A value that is not a lowercase hex SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a hex SHA-256 digest: {0:?}")]
pub struct BadDigest(pub String);

fn digest_bytes(hex_digest: &str) -> Result<[u8; 32], BadDigest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).map_err(|_| BadDigest(hex_digest.to_string()))?;
    Ok(out)
}

/// `SHA-256(token)` as hex (the same value as the ledger's `content_hash`).
pub fn token_hash(token: &str) -> String {
    crate::ect::sha256_hex(token.as_bytes())
}

/// The entry that follows `prev` (a chain hash) for a token whose SHA-256 is `token_hash`.
pub fn next(prev: &str, token_hash: &str) -> Result<String, BadDigest> {
    let mut input = [0u8; 64];
    input[..32].copy_from_slice(&digest_bytes(prev)?);
    input[32..].copy_from_slice(&digest_bytes(token_hash)?);
    Ok(crate::ect::sha256_hex(&input))
}

/// The claims of a stored token, read from its signed bytes (not verified: the token was
/// verified at ingest and the chain covers these bytes). What the ledger derives from a token
/// (workflow, issuer, parents, checkpoint fields) is taken from here, never from the columns
/// stored beside it, which the chain does not cover.
pub fn token_ect(token: &str) -> Result<crate::ect::VerifiedEct, crate::ect::Rejection> {
    let (header, claims) = crate::ect::jws::decode_unverified(token)?;
    let text = |name: &str| {
        header
            .get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let header_fields = crate::ect::EctHeader {
        alg: text("alg"),
        typ: text("typ"),
        kid: text("kid"),
    };
    let claims = match claims {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    // The parent limit is the ingest's business; a stored token is read whatever it was.
    crate::ect::claims::normalise(token, header_fields, claims, usize::MAX)
}

/// One entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    /// Position, from 1.
    pub seq: i64,
    pub jti: String,
    /// `chain_hash(seq - 1)`.
    pub prev_hash: String,
    pub chain_hash: String,
}

/// The newest entry: `seq` 0 and [`GENESIS`] for an empty ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub chain_hash: String,
}

impl ChainHead {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            chain_hash: GENESIS.to_string(),
        }
    }

    /// Chains the tokens with these SHA-256 digests after this head, in order, and moves the
    /// head to the last of them.
    pub fn extend<'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Vec<ChainEntry>, BadDigest> {
        let mut out = Vec::new();
        for (jti, token_hash) in items {
            let chain_hash = next(&self.chain_hash, token_hash)?;
            self.seq += 1;
            out.push(ChainEntry {
                seq: self.seq,
                jti: jti.to_string(),
                prev_hash: std::mem::replace(&mut self.chain_hash, chain_hash.clone()),
                chain_hash,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_entry_hashes_genesis_and_the_token_digest() {
        let t = token_hash("a.b.c");
        let mut raw = vec![0u8; 32];
        raw.extend(hex::decode(&t).unwrap());
        assert_eq!(next(GENESIS, &t).unwrap(), crate::ect::sha256_hex(&raw));
    }

    #[test]
    fn extend_links_each_entry_to_the_previous() {
        let (h1, h2) = (token_hash("x"), token_hash("y"));
        let mut head = ChainHead::genesis();
        let entries = head
            .extend([("a", h1.as_str()), ("b", h2.as_str())])
            .unwrap();
        assert_eq!(entries[0].seq, 1);
        assert_eq!(entries[0].prev_hash, GENESIS);
        assert_eq!(entries[1].prev_hash, entries[0].chain_hash);
        assert_eq!(
            entries[1].chain_hash,
            next(&entries[0].chain_hash, &h2).unwrap()
        );
        assert_eq!(head.seq, 2);
        assert_eq!(head.chain_hash, entries[1].chain_hash);
        assert!(next("zz", &h1).is_err());
    }
}
