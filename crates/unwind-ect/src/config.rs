//! The configuration sections that token verification needs (`[ect]`, `[trust]`), shared by
//! the coordinator's configuration (`unwind::config` re-exports them) and agents.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Profile;

/// `[ect]`: token verification and the names Unwind writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EctConfig {
    /// Names used in tokens Unwind signs: `draft-00` or `draft-01`.
    pub profile: Profile,
    /// Accepted signature algorithms (asymmetric only): ES256, ES384, EdDSA, PS256, RS256.
    pub algorithms: Vec<String>,
    /// Tolerated clock difference for `iat`/`exp` and parent ordering, in seconds.
    pub clock_skew_s: i64,
    /// Largest parent list accepted.
    pub max_parents: usize,
    /// Largest compact token accepted, in bytes.
    pub max_token_bytes: usize,
}

impl Default for EctConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Draft00,
            algorithms: vec!["ES256".into()],
            clock_skew_s: 60,
            max_parents: 100,
            max_token_bytes: 16 * 1024,
        }
    }
}

/// `[trust]`: the issuers whose tokens are accepted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    pub issuers: Vec<TrustIssuerConfig>,
    /// Least time between two fetches of one JWKS URL, in seconds (unknown-`kid` refresh).
    pub jwks_refresh_min_interval_s: u64,
    /// How long a fetched JWKS is used before it is fetched again, in seconds.
    pub jwks_cache_ttl_s: u64,
}

/// `[[trust.issuers]]`: one trusted issuer, or a family of them (`id` ending in `/*`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrustIssuerConfig {
    /// Exact issuer id, or a prefix ending in `/*` (e.g. `spiffe://example.com/agent/*`).
    pub id: String,
    /// JWKS file (relative paths are relative to the configuration file).
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL, fetched and cached.
    pub jwks_url: Option<String>,
    /// Hosts this issuer's `cascade.rollback_uri` may name.
    pub rollback_hosts: Vec<String>,
    /// Allow plain `http` rollback URIs for these hosts (development, loopback).
    pub allow_http: bool,
    /// Whose nodes this entry's agents may name as parents: trust entry ids or SPIFFE patterns
    /// (`spiffe://other.org/team/*`). Absent: issuers of the entry's own trust domain. An
    /// entry's own agents and Unwind's evidence are always linkable.
    pub link_to: Option<Vec<String>>,
    /// Rollback requests per second for all of this entry's agents together (burst: twice
    /// this). Absent: `rollback.requests_per_s` / `requests_burst`.
    pub requests_per_s: Option<u32>,
}
