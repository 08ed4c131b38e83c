//! Trust configuration: which issuers are trusted, with which keys (JWKS file or URL, cached,
//! refreshed on an unknown `kid` with a rate limit), and which rollback hosts each may name.
//!
//! Issuer ids match exactly first, then by the longest `/*` prefix pattern. Keys from files are
//! loaded at start so a bad file stops start-up; URLs are fetched on first use, never following
//! redirects (a redirect could lead the fetch to a host nobody configured).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

use super::{RejectCode, Rejection};
use crate::config::TrustConfig;
use crate::spiffe::{self, IdPattern};

/// Default JWKS cache lifetime when the configuration says 0.
pub const DEFAULT_JWKS_CACHE_TTL: Duration = Duration::from_secs(300);
/// Default least interval between two fetches of one JWKS URL when the configuration says 0.
pub const DEFAULT_JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Time limit of one JWKS fetch.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A trust configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trusted issuer `{issuer}`: JWKS file {path}: {message}")]
    JwksFile {
        issuer: String,
        path: String,
        message: String,
    },
    #[error("trusted issuer `{issuer}`: {message}")]
    Issuer { issuer: String, message: String },
    #[error("JWKS HTTP client: {0}")]
    Client(String),
}

/// The kind of public key, so a token's `alg` can be checked against the key it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcP256,
    EcP384,
    Ed25519,
    Rsa,
}

impl KeyKind {
    /// True when `alg` is an algorithm this kind of key verifies.
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (Self::EcP256, Algorithm::ES256)
                | (Self::EcP384, Algorithm::ES384)
                | (Self::Ed25519, Algorithm::EdDSA)
                | (
                    Self::Rsa,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                )
        )
    }
}

/// A verification key found for an (`iss`, `kid`) pair.
#[derive(Clone)]
pub struct ResolvedKey {
    pub key: Arc<DecodingKey>,
    /// The JWK's `alg`, when it names one; the token's `alg` must then be the same.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
}

impl std::fmt::Debug for ResolvedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedKey")
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish()
    }
}

impl ResolvedKey {
    /// Whether a token with header `alg` may be verified with this key. A key whose JWK names
    /// another `alg`, or whose type does not fit, can never verify the token: the caller answers
    /// `invalid_signature` (the `kid` did resolve, so `unknown_key` would mislead).
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|a| a == alg) && self.kind.fits(alg)
    }
}

/// Keys of one JWKS by `kid`.
type KeyMap = HashMap<String, ResolvedKey>;

/// Builds the key map of a JWKS. Symmetric (`oct`) keys, encryption keys, keys without `kid`
/// and key types jsonwebtoken cannot use are left out; `strict` makes them errors instead
/// (files are checked strictly so a mistake shows at start; a fetched set is taken as is).
fn key_map(set: &JwkSet, strict: bool) -> Result<KeyMap, String> {
    let mut map = KeyMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        match resolve_jwk(jwk) {
            Ok((kid, key)) => {
                if map.contains_key(&kid) {
                    if strict {
                        return Err(format!("kid `{kid}` appears twice"));
                    }
                    tracing::warn!(kid, "JWKS names one kid twice; the first key is used");
                    continue;
                }
                map.insert(kid, key);
            }
            Err(message) if strict => return Err(format!("key {i}: {message}")),
            Err(message) => tracing::warn!(index = i, message, "JWKS key skipped"),
        }
    }
    Ok(map)
}

fn resolve_jwk(jwk: &Jwk) -> Result<(String, ResolvedKey), String> {
    let kid = match &jwk.common.key_id {
        Some(kid) if !kid.is_empty() => kid.clone(),
        _ => return Err("no kid".into()),
    };
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err(format!("key `{kid}` is an encryption key"));
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err(format!("key `{kid}`: unsupported curve")),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "key `{kid}` is symmetric; only public keys are trusted"
            ));
        }
        _ => return Err(format!("key `{kid}`: unsupported key type")),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(named) => match Algorithm::try_from(named) {
            Ok(alg) if kind.fits(alg) => Some(alg),
            _ => return Err(format!("key `{kid}`: alg {named} does not fit the key")),
        },
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key `{kid}`: {e}"))?;
    Ok((
        kid,
        ResolvedKey {
            key: Arc::new(key),
            alg,
            kind,
        },
    ))
}

/// A JWKS URL with its cache; shared by every issuer naming the same URL, so the refresh
/// rate limit is per URL.
struct UrlSource {
    url: String,
    cache: RwLock<Option<Cached>>,
    /// Held while fetching, so concurrent lookups wait for one fetch instead of each fetching;
    /// holds the time of the last attempt.
    fetch: Mutex<Option<Instant>>,
    /// Completed fetch attempts, successful or not (observability, tests).
    attempts: std::sync::atomic::AtomicU64,
}

struct Cached {
    keys: Arc<KeyMap>,
    fetched_at: Instant,
}

enum KeySource {
    Static(Arc<KeyMap>),
    Url(Arc<UrlSource>),
}

struct IssuerEntry {
    id: String,
    source: KeySource,
    /// Lowercased host names and IP literals as configured.
    rollback_hosts: Vec<String>,
    allow_http: bool,
    /// Whose nodes this entry's agents may name as parents.
    links: LinkPolicy,
    /// Rollback requests per second for all of this entry's agents together, when configured.
    requests_per_s: Option<u32>,
}

/// Whose nodes the agents of a trust entry may name as parents (besides their own entry's).
#[derive(Debug, Clone)]
enum LinkPolicy {
    /// Issuers in the entry's own trust domain (the default).
    SameTrustDomain,
    /// Issuers matched by one of these patterns (`link_to`).
    Listed(Vec<IdPattern>),
    /// Anyone, and anyone may name this entry's nodes: Unwind's own evidence.
    Evidence,
}

/// The trusted issuers and their keys. `Send + Sync`; lookups take `&self`.
pub struct TrustStore {
    exact: HashMap<String, Arc<IssuerEntry>>,
    /// `(prefix ending in '/', entry)`, longest prefix first.
    prefixes: Vec<(String, Arc<IssuerEntry>)>,
    client: reqwest::Client,
    cache_ttl: Duration,
    refresh_min_interval: Duration,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&str> = self.exact.keys().map(String::as_str).collect();
        ids.extend(self.prefixes.iter().map(|(_, e)| e.id.as_str()));
        f.debug_struct("TrustStore")
            .field("issuers", &ids)
            .finish_non_exhaustive()
    }
}

impl TrustStore {
    /// Builds the store: JWKS files are read and checked now (an unusable file is an error
    /// naming the issuer and the path); JWKS URLs are fetched on first use.
    pub fn from_config(cfg: &TrustConfig) -> Result<Self, TrustError> {
        let client = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TrustError::Client(e.to_string()))?;
        let mut store = Self {
            exact: HashMap::new(),
            prefixes: Vec::new(),
            client,
            cache_ttl: nonzero_secs(cfg.jwks_cache_ttl_s, DEFAULT_JWKS_CACHE_TTL),
            refresh_min_interval: nonzero_secs(
                cfg.jwks_refresh_min_interval_s,
                DEFAULT_JWKS_REFRESH_MIN_INTERVAL,
            ),
        };
        let mut urls: HashMap<String, Arc<UrlSource>> = HashMap::new();
        for issuer in &cfg.issuers {
            let source = match (&issuer.jwks_file, &issuer.jwks_url) {
                (Some(path), None) => {
                    KeySource::Static(Arc::new(load_jwks_file(&issuer.id, path)?))
                }
                (None, Some(url)) => {
                    reqwest::Url::parse(url).map_err(|e| TrustError::Issuer {
                        issuer: issuer.id.clone(),
                        message: format!("jwks_url `{url}`: {e}"),
                    })?;
                    let source = urls.entry(url.clone()).or_insert_with(|| {
                        Arc::new(UrlSource {
                            url: url.clone(),
                            cache: RwLock::new(None),
                            fetch: Mutex::new(None),
                            attempts: Default::default(),
                        })
                    });
                    KeySource::Url(source.clone())
                }
                _ => {
                    return Err(TrustError::Issuer {
                        issuer: issuer.id.clone(),
                        message: "give exactly one of jwks_file or jwks_url".into(),
                    });
                }
            };
            let links = match &issuer.link_to {
                None => LinkPolicy::SameTrustDomain,
                Some(list) => LinkPolicy::Listed(
                    list.iter()
                        .map(|p| IdPattern::parse(p))
                        .collect::<Result<_, _>>()
                        .map_err(|e| TrustError::Issuer {
                            issuer: issuer.id.clone(),
                            message: format!("link_to {e}"),
                        })?,
                ),
            };
            store.insert(IssuerEntry {
                id: issuer.id.clone(),
                source,
                rollback_hosts: issuer
                    .rollback_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                allow_http: issuer.allow_http,
                links,
                requests_per_s: issuer.requests_per_s,
            })?;
        }
        Ok(store)
    }

    /// Changes the JWKS cache lifetime and the least refresh interval (both per URL).
    pub fn set_jwks_timing(&mut self, cache_ttl: Duration, refresh_min_interval: Duration) {
        self.cache_ttl = cache_ttl;
        self.refresh_min_interval = refresh_min_interval;
    }

    /// Adds (or replaces) an issuer with a fixed key set under its exact id: Unwind's own
    /// coordinator key, whose evidence any entry may name as a parent and which may name any
    /// node. Keys that cannot verify anything (symmetric, no `kid`) are left out.
    pub fn add_static_issuer(&mut self, id: &str, jwks: JwkSet) {
        let keys = key_map(&jwks, false).unwrap_or_default();
        let entry = IssuerEntry {
            id: id.to_owned(),
            source: KeySource::Static(Arc::new(keys)),
            rollback_hosts: Vec::new(),
            allow_http: false,
            links: LinkPolicy::Evidence,
            requests_per_s: None,
        };
        self.exact.insert(id.to_owned(), Arc::new(entry));
    }

    fn insert(&mut self, entry: IssuerEntry) -> Result<(), TrustError> {
        let id = entry.id.clone();
        let duplicate = || TrustError::Issuer {
            issuer: id.clone(),
            message: "listed twice".into(),
        };
        let pattern = IdPattern::parse(&id).map_err(|e| TrustError::Issuer {
            issuer: id.clone(),
            message: e.why,
        })?;
        match pattern {
            IdPattern::Below(prefix) => {
                if self.prefixes.iter().any(|(p, _)| *p == prefix) {
                    return Err(duplicate());
                }
                self.prefixes.push((prefix, Arc::new(entry)));
                self.prefixes
                    .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            }
            IdPattern::Exact(id) => {
                if self.exact.contains_key(&id) {
                    return Err(duplicate());
                }
                self.exact.insert(id, Arc::new(entry));
            }
        }
        Ok(())
    }

    /// The issuer entry for `iss`: exact id first, else the longest matching `/*` pattern
    /// (`spiffe://x/agent/*` matches `spiffe://x/agent/a` but not `spiffe://x/agent`). An `iss`
    /// that starts with `spiffe://` but is not a valid SPIFFE ID matches nothing.
    fn issuer(&self, iss: &str) -> Option<&Arc<IssuerEntry>> {
        if !spiffe::acceptable_issuer_id(iss) {
            return None;
        }
        self.exact.get(iss).or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _)| iss.len() > prefix.len() && iss.starts_with(prefix.as_str()))
                .map(|(_, entry)| entry)
        })
    }

    /// The configured id (or pattern) of the trust entry that `iss` matches.
    pub fn entry_id(&self, iss: &str) -> Option<&str> {
        self.issuer(iss).map(|e| e.id.as_str())
    }

    /// The rollback request rate configured for the trust entry of `iss`, if any.
    pub fn entry_requests_per_s(&self, iss: &str) -> Option<u32> {
        self.issuer(iss).and_then(|e| e.requests_per_s)
    }

    /// Whether a token of `child_iss` may name a node of `parent_iss` as a parent: always within
    /// one trust entry and for Unwind's own evidence (either side); otherwise the child's entry
    /// decides: its `link_to` patterns, or by default issuers of its own trust domain.
    /// `Err` carries why not, for the refusal's detail.
    pub fn may_link(&self, child_iss: &str, parent_iss: &str) -> Result<(), String> {
        let Some(child) = self.issuer(child_iss) else {
            return Err(format!("issuer `{child_iss}` is not trusted"));
        };
        let parent = self.issuer(parent_iss);
        if parent.is_some_and(|p| Arc::ptr_eq(p, child) || matches!(p.links, LinkPolicy::Evidence))
        {
            return Ok(());
        }
        let allowed = match &child.links {
            LinkPolicy::Evidence => true,
            LinkPolicy::SameTrustDomain => {
                spiffe::trust_domain(&child.id).is_some()
                    && spiffe::trust_domain(&child.id) == spiffe::trust_domain(parent_iss)
                    && spiffe::acceptable_issuer_id(parent_iss)
            }
            // An entry's id is itself a pattern, so naming an entry and naming ids coincide.
            LinkPolicy::Listed(patterns) => patterns.iter().any(|p| p.matches(parent_iss)),
        };
        if allowed {
            Ok(())
        } else {
            Err(match &child.links {
                LinkPolicy::Listed(_) => format!(
                    "trust entry `{}` may link only to the entries in its link_to; `{parent_iss}` is not among them",
                    child.id
                ),
                _ => format!(
                    "trust entry `{}` may link only to issuers of its own trust domain (give it link_to to allow more); `{parent_iss}` is outside it",
                    child.id
                ),
            })
        }
    }

    /// True when some configured issuer matches `iss`.
    pub fn knows_issuer(&self, iss: &str) -> bool {
        self.issuer(iss).is_some()
    }

    /// The verification key for (`iss`, `kid`): `unknown_issuer` when no issuer entry matches,
    /// `unknown_key` when the issuer's JWKS has no such `kid` (or, for a URL, could not be
    /// fetched and nothing is cached).
    pub async fn decoding_key(&self, iss: &str, kid: &str) -> Result<ResolvedKey, Rejection> {
        let entry = self.issuer(iss).ok_or_else(|| {
            Rejection::new(
                RejectCode::UnknownIssuer,
                format!("issuer `{iss}` is not trusted"),
            )
        })?;
        let unknown = || {
            Rejection::new(
                RejectCode::UnknownKey,
                format!("kid `{kid}` is not a key of issuer `{iss}`"),
            )
        };
        match &entry.source {
            KeySource::Static(keys) => keys.get(kid).cloned().ok_or_else(unknown),
            KeySource::Url(source) => self.url_key(source, iss, kid).await,
        }
    }

    async fn url_key(
        &self,
        source: &UrlSource,
        iss: &str,
        kid: &str,
    ) -> Result<ResolvedKey, Rejection> {
        // Fast path: a fresh cache that knows the kid.
        {
            let cache = source.cache.read().await;
            if let Some(c) = cache.as_ref()
                && c.fetched_at.elapsed() < self.cache_ttl
                && let Some(key) = c.keys.get(kid)
            {
                return Ok(key.clone());
            }
        }
        let mut last_attempt = source.fetch.lock().await;
        // Another task may have fetched while this one waited for the lock; a stale set is
        // still used while a refetch is not yet allowed.
        let cached = source
            .cache
            .read()
            .await
            .as_ref()
            .map(|c| (c.keys.clone(), c.fetched_at));
        if let Some((keys, fetched_at)) = &cached
            && (fetched_at.elapsed() < self.cache_ttl
                || last_attempt.is_some_and(|t| t.elapsed() < self.refresh_min_interval))
            && let Some(key) = keys.get(kid)
        {
            return Ok(key.clone());
        }
        let may_fetch = last_attempt.is_none_or(|t| t.elapsed() >= self.refresh_min_interval);
        if !may_fetch {
            return match cached {
                Some((keys, _)) => keys.get(kid).cloned().ok_or_else(|| unknown_key(iss, kid)),
                None => Err(fetch_failed(
                    iss,
                    kid,
                    &source.url,
                    "fetched too recently to retry",
                )),
            };
        }
        *last_attempt = Some(Instant::now());
        source
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch_jwks(&source.url).await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                *source.cache.write().await = Some(Cached {
                    keys: keys.clone(),
                    fetched_at: Instant::now(),
                });
                keys.get(kid).cloned().ok_or_else(|| unknown_key(iss, kid))
            }
            Err(message) => {
                tracing::warn!(url = %source.url, %message, "JWKS fetch failed");
                match cached {
                    // A stale set beats none: keys rarely disappear, and an outage of the
                    // agent's JWKS endpoint should not stop ingest.
                    Some((keys, _)) => keys.get(kid).cloned().ok_or_else(|| unknown_key(iss, kid)),
                    None => Err(fetch_failed(iss, kid, &source.url, &message)),
                }
            }
        }
    }

    async fn fetch_jwks(&self, url: &str) -> Result<KeyMap, String> {
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP status {status} (redirects are not followed)"));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err("JWKS too large".into());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("JWKS too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        key_map(&set, false)
    }

    /// Number of fetch attempts made for a JWKS URL (0 when it is not configured).
    pub fn jwks_fetch_count(&self, url: &str) -> u64 {
        self.exact
            .values()
            .chain(self.prefixes.iter().map(|(_, e)| e))
            .find_map(|e| match &e.source {
                KeySource::Url(s) if s.url == url => {
                    Some(s.attempts.load(std::sync::atomic::Ordering::Relaxed))
                }
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The SSRF guard for `cascade.rollback_uri`: the URI must parse, carry no userinfo, name a
    /// host listed in the issuer's `rollback_hosts` (case-insensitive; IP literals compared as
    /// written), and use `https` (or `http` when the issuer has `allow_http`).
    pub fn rollback_uri_allowed(&self, iss: &str, uri: &str) -> Result<(), Rejection> {
        let refuse = |why: &str| {
            Rejection::new(
                RejectCode::RollbackUriNotAllowed,
                format!("rollback_uri `{uri}` refused for issuer `{iss}`: {why}"),
            )
        };
        let entry = self
            .issuer(iss)
            .ok_or_else(|| refuse("issuer is not trusted"))?;
        let url = reqwest::Url::parse(uri).map_err(|_| refuse("not a valid URL"))?;
        match url.scheme() {
            "https" => {}
            "http" if entry.allow_http => {}
            "http" => return Err(refuse("plain http is not allowed for this issuer")),
            _ => return Err(refuse("scheme must be https")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("userinfo is not allowed"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| refuse("no host"))?
            .to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let listed = entry.rollback_hosts.iter().any(|allowed| {
            allowed == &host || allowed.trim_start_matches('[').trim_end_matches(']') == bare
        });
        if !listed {
            return Err(refuse("host is not in the issuer's rollback_hosts"));
        }
        Ok(())
    }
}

/// The shape a `cascade.rollback_uri` must have for Unwind to call it: an absolute URL written
/// as it will be called (no whitespace, control character or backslash, which a URL parser
/// would silently drop or turn into `/`), without a query or fragment (the prepare URL is the
/// path with `/prepare` appended). Checked at ingest and again before every call.
pub fn parse_rollback_uri(uri: &str) -> Result<reqwest::Url, String> {
    if let Some(c) = uri
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '\\')
    {
        return Err(format!(
            "rollback_uri contains {c:?}; write it exactly as it is to be called"
        ));
    }
    let url = reqwest::Url::parse(uri).map_err(|e| format!("rollback_uri is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(
            "rollback_uri has a query or fragment; the prepare URL could not be derived from it"
                .into(),
        );
    }
    Ok(url)
}

fn nonzero_secs(secs: u64, default: Duration) -> Duration {
    if secs == 0 {
        default
    } else {
        Duration::from_secs(secs)
    }
}

fn unknown_key(iss: &str, kid: &str) -> Rejection {
    Rejection::new(
        RejectCode::UnknownKey,
        format!("kid `{kid}` is not a key of issuer `{iss}`"),
    )
}

fn fetch_failed(iss: &str, kid: &str, url: &str, why: &str) -> Rejection {
    Rejection::new(
        RejectCode::UnknownKey,
        format!("kid `{kid}` of issuer `{iss}`: the JWKS at {url} could not be fetched ({why})"),
    )
}

fn load_jwks_file(issuer: &str, path: &Path) -> Result<KeyMap, TrustError> {
    let err = |message: String| TrustError::JwksFile {
        issuer: issuer.to_owned(),
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| err(format!("not a JWKS: {e}")))?;
    key_map(&set, true).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrustIssuerConfig;
    use crate::keys::{KeyAlg, SigningKey};
    use crate::testutil::jwks_file;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn issuer(id: &str, path: &Path) -> TrustIssuerConfig {
        TrustIssuerConfig {
            id: id.into(),
            jwks_file: Some(path.to_path_buf()),
            ..Default::default()
        }
    }

    fn key() -> SigningKey {
        SigningKey::generate(KeyAlg::ES256).unwrap()
    }

    #[tokio::test]
    async fn exact_then_longest_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (key(), key(), key());
        let cfg = TrustConfig {
            issuers: vec![
                issuer("spiffe://x/agent/*", &jwks_file(&dir, "a", &[&a])),
                issuer("spiffe://x/agent/special/*", &jwks_file(&dir, "b", &[&b])),
                issuer("spiffe://x/agent/special/one", &jwks_file(&dir, "c", &[&c])),
            ],
            ..Default::default()
        };
        let store = TrustStore::from_config(&cfg).unwrap();
        let code = |r: Result<ResolvedKey, Rejection>| r.map(|_| ()).map_err(|e| e.code);
        assert_eq!(
            code(store.decoding_key("spiffe://x/agent/foo", a.kid()).await),
            Ok(())
        );
        assert_eq!(
            code(store.decoding_key("spiffe://x/agent/foo", b.kid()).await),
            Err(RejectCode::UnknownKey)
        );
        assert_eq!(
            code(
                store
                    .decoding_key("spiffe://x/agent/special/two", b.kid())
                    .await
            ),
            Ok(())
        );
        assert_eq!(
            code(
                store
                    .decoding_key("spiffe://x/agent/special/two", a.kid())
                    .await
            ),
            Err(RejectCode::UnknownKey)
        );
        assert_eq!(
            code(
                store
                    .decoding_key("spiffe://x/agent/special/one", c.kid())
                    .await
            ),
            Ok(())
        );
        assert_eq!(
            code(
                store
                    .decoding_key("spiffe://x/agent/special/one", b.kid())
                    .await
            ),
            Err(RejectCode::UnknownKey)
        );
        for iss in [
            "spiffe://x/agent",
            "spiffe://x/agent/",
            "spiffe://x/agentX",
            "spiffe://y/agent/a",
        ] {
            assert_eq!(
                code(store.decoding_key(iss, a.kid()).await),
                Err(RejectCode::UnknownIssuer),
                "{iss}"
            );
        }
    }

    #[tokio::test]
    async fn static_issuer() {
        let mut store = TrustStore::from_config(&TrustConfig::default()).unwrap();
        let k = key();
        store.add_static_issuer("spiffe://unwind.local/coordinator", k.public_jwks());
        let found = store
            .decoding_key("spiffe://unwind.local/coordinator", k.kid())
            .await
            .unwrap();
        assert_eq!(found.alg, Some(Algorithm::ES256));
        assert!(found.accepts(Algorithm::ES256) && !found.accepts(Algorithm::ES384));
        assert_eq!(
            store
                .decoding_key("spiffe://unwind.local/coordinator/x", k.kid())
                .await
                .unwrap_err()
                .code,
            RejectCode::UnknownIssuer
        );
    }

    #[test]
    fn bad_files_name_issuer_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let missing = dir.path().join("missing.json");
        let oct = dir.path().join("oct.json");
        std::fs::write(&oct, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#).unwrap();
        for path in [bad, missing, oct] {
            let cfg = TrustConfig {
                issuers: vec![issuer("spiffe://x/a", &path)],
                ..Default::default()
            };
            let msg = TrustStore::from_config(&cfg).unwrap_err().to_string();
            assert!(
                msg.contains("spiffe://x/a") && msg.contains(&path.display().to_string()),
                "{msg}"
            );
        }
    }

    #[test]
    fn rollback_uri_guard() {
        let dir = tempfile::tempdir().unwrap();
        let path = jwks_file(&dir, "a", &[&key()]);
        let cfg = TrustConfig {
            issuers: vec![
                TrustIssuerConfig {
                    rollback_hosts: vec![
                        "Rollback.Example.com".into(),
                        "10.0.0.5".into(),
                        "[::1]".into(),
                    ],
                    ..issuer("spiffe://x/agent/*", &path)
                },
                TrustIssuerConfig {
                    rollback_hosts: vec!["localhost".into(), "::1".into()],
                    allow_http: true,
                    ..issuer("spiffe://x/dev", &path)
                },
            ],
            ..Default::default()
        };
        let store = TrustStore::from_config(&cfg).unwrap();
        let prod = "spiffe://x/agent/a";
        for uri in [
            "https://rollback.example.com/r",
            "https://ROLLBACK.example.com:8443/r?x=1",
            "https://10.0.0.5/r",
            "https://[::1]/r",
        ] {
            assert!(store.rollback_uri_allowed(prod, uri).is_ok(), "{uri}");
        }
        for uri in [
            "http://rollback.example.com/r",
            "http://169.254.169.254/latest/meta-data",
            "https://169.254.169.254/x",
            "https://evil.example/r",
            "https://rollback.example.com.evil.example/r",
            "https://user@rollback.example.com/r",
            "https://u:p@rollback.example.com/r",
            "ftp://rollback.example.com/r",
            "file:///etc/passwd",
            "not a url",
            "/relative",
        ] {
            let e = store.rollback_uri_allowed(prod, uri).unwrap_err();
            assert_eq!(e.code, RejectCode::RollbackUriNotAllowed, "{uri}");
        }
        let dev = "spiffe://x/dev";
        assert!(
            store
                .rollback_uri_allowed(dev, "http://localhost:8080/r")
                .is_ok()
        );
        assert!(
            store
                .rollback_uri_allowed(dev, "http://[::1]:8080/r")
                .is_ok()
        );
        assert!(
            store
                .rollback_uri_allowed(dev, "http://127.0.0.1/r")
                .is_err()
        );
        assert!(
            store
                .rollback_uri_allowed("spiffe://unknown", "https://rollback.example.com/r")
                .is_err()
        );
    }

    #[test]
    fn parents_are_linkable_within_an_entry_its_domain_its_link_to_and_evidence() {
        let dir = tempfile::tempdir().unwrap();
        let path = jwks_file(&dir, "a", &[&key()]);
        let mut store = TrustStore::from_config(&TrustConfig {
            issuers: vec![
                issuer("spiffe://example.com/agent/*", &path),
                issuer("spiffe://example.com/billing", &path),
                issuer("spiffe://other.org/team/*", &path),
                TrustIssuerConfig {
                    link_to: Some(vec!["spiffe://example.com/agent/*".into()]),
                    ..issuer("spiffe://partner.net/agent/*", &path)
                },
            ],
            ..Default::default()
        })
        .unwrap();
        store.add_static_issuer("spiffe://unwind.local/coordinator", JwkSet { keys: vec![] });
        let ok = |c: &str, p: &str| store.may_link(c, p).is_ok();
        // One entry; one trust domain by default.
        assert!(ok(
            "spiffe://example.com/agent/a",
            "spiffe://example.com/agent/b"
        ));
        assert!(ok(
            "spiffe://example.com/agent/a",
            "spiffe://example.com/billing"
        ));
        // Another domain: refused both ways without link_to.
        assert!(!ok(
            "spiffe://other.org/team/x",
            "spiffe://example.com/agent/router"
        ));
        assert!(!ok(
            "spiffe://example.com/agent/router",
            "spiffe://other.org/team/x"
        ));
        // link_to names what the entry may build on, one way only; its own entry stays.
        assert!(ok(
            "spiffe://partner.net/agent/p",
            "spiffe://example.com/agent/router"
        ));
        assert!(ok(
            "spiffe://partner.net/agent/p",
            "spiffe://partner.net/agent/q"
        ));
        assert!(!ok(
            "spiffe://partner.net/agent/p",
            "spiffe://example.com/billing"
        ));
        assert!(!ok(
            "spiffe://example.com/agent/router",
            "spiffe://partner.net/agent/p"
        ));
        // Unwind's evidence: anyone may build on it, and it may name anything.
        assert!(ok(
            "spiffe://other.org/team/x",
            "spiffe://unwind.local/coordinator"
        ));
        assert!(ok(
            "spiffe://unwind.local/coordinator",
            "spiffe://other.org/team/x"
        ));
        // Ids that are not valid SPIFFE ids link to nothing and are linked by nothing.
        assert!(!ok(
            "spiffe://example.com/agent/a",
            "spiffe://example.com/agent/../admin"
        ));
        assert!(!ok(
            "spiffe://example.com/agent/../a",
            "spiffe://example.com/agent/b"
        ));
        assert!(!ok(
            "spiffe://unknown.example/a",
            "spiffe://example.com/agent/b"
        ));
    }

    #[test]
    fn patterns_only_for_spiffe_ids_and_ids_must_be_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = jwks_file(&dir, "a", &[&key()]);
        for id in [
            "https://agents.example/*",
            "spiffe://example.com/agent/../x/*",
            "spiffe://Example.com/agent",
            "spiffe://example.com/a*",
        ] {
            let cfg = TrustConfig {
                issuers: vec![issuer(id, &path)],
                ..Default::default()
            };
            assert!(TrustStore::from_config(&cfg).is_err(), "{id}");
        }
        let cfg = TrustConfig {
            issuers: vec![TrustIssuerConfig {
                link_to: Some(vec!["spiffe://x/*/y".into()]),
                ..issuer("spiffe://x/a", &path)
            }],
            ..Default::default()
        };
        assert!(TrustStore::from_config(&cfg).is_err());
        let exact = TrustStore::from_config(&TrustConfig {
            issuers: vec![issuer("https://agents.example/a", &path)],
            ..Default::default()
        })
        .unwrap();
        assert!(exact.knows_issuer("https://agents.example/a"));
        assert!(!exact.knows_issuer("https://agents.example/a/b"));
    }

    #[test]
    fn rollback_uris_are_taken_only_as_written() {
        assert!(parse_rollback_uri("https://h.example/r").is_ok());
        assert!(parse_rollback_uri("http://127.0.0.1:9/a/b/").is_ok());
        for uri in [
            "https://h.example/r?x=1",
            "https://h.example/r#f",
            "https://h.example/r?",
            " https://h.example/r",
            "\thttps://h.example/r",
            "https://h.example/r\n",
            "https:\\\\h.example\\r",
            "https://h.example/a b",
            "https://h.example/\u{7f}",
            "/relative",
            "",
        ] {
            assert!(parse_rollback_uri(uri).is_err(), "{uri:?}");
        }
    }

    /// A JWKS server on 127.0.0.1: `/jwks` serves the current set, `/redirect` redirects to it,
    /// `/fail` answers 500. Counts requests to `/jwks`.
    struct JwksServer {
        base: String,
        set: Arc<std::sync::Mutex<JwkSet>>,
        hits: Arc<AtomicUsize>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    async fn jwks_server(initial: JwkSet) -> JwksServer {
        use axum::http::StatusCode;
        use axum::response::{IntoResponse, Redirect};
        let set = Arc::new(std::sync::Mutex::new(initial));
        let hits = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, h, f) = (set.clone(), hits.clone(), failing.clone());
        let app = axum::Router::new()
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let (s, h, f) = (s.clone(), h.clone(), f.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        if f.load(Ordering::SeqCst) {
                            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                        }
                        let body = serde_json::to_string(&*s.lock().unwrap()).unwrap();
                        ([("content-type", "application/json")], body).into_response()
                    }
                }),
            )
            .route(
                "/redirect",
                axum::routing::get(|| async { Redirect::temporary("/jwks") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer {
            base: format!("http://{addr}"),
            set,
            hits,
            failing,
        }
    }

    fn url_store(url: &str) -> TrustStore {
        let cfg = TrustConfig {
            issuers: vec![TrustIssuerConfig {
                id: "spiffe://x/agent/*".into(),
                jwks_url: Some(url.into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        TrustStore::from_config(&cfg).unwrap()
    }

    const ISS: &str = "spiffe://x/agent/a";

    #[tokio::test]
    async fn jwks_url_rotation_and_rate_limit() {
        let (a, b) = (key(), key());
        let server = jwks_server(a.public_jwks()).await;
        let url = format!("{}/jwks", server.base);
        let mut store = url_store(&url);
        store.set_jwks_timing(Duration::from_secs(300), Duration::from_millis(300));

        assert!(store.decoding_key(ISS, a.kid()).await.is_ok());
        assert!(store.decoding_key(ISS, a.kid()).await.is_ok());
        assert_eq!(
            server.hits.load(Ordering::SeqCst),
            1,
            "cached after the first fetch"
        );

        // Rotation: b appears on the server. Inside the interval an unknown kid is not
        // refetched...
        server.set.lock().unwrap().keys.push(b.public_jwk());
        assert_eq!(
            store.decoding_key(ISS, b.kid()).await.unwrap_err().code,
            RejectCode::UnknownKey
        );
        assert_eq!(
            store.decoding_key(ISS, "nope").await.unwrap_err().code,
            RejectCode::UnknownKey
        );
        assert_eq!(
            server.hits.load(Ordering::SeqCst),
            1,
            "refresh is rate limited"
        );
        // ...after it, one refetch finds it.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(store.decoding_key(ISS, b.kid()).await.is_ok());
        assert!(store.decoding_key(ISS, b.kid()).await.is_ok());
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
        assert_eq!(store.jwks_fetch_count(&url), 2);
        // A second unknown kid right after that refresh is not refetched.
        assert_eq!(
            store.decoding_key(ISS, "other").await.unwrap_err().code,
            RejectCode::UnknownKey
        );
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn jwks_url_default_interval_limits_refresh() {
        let a = key();
        let server = jwks_server(a.public_jwks()).await;
        let store = url_store(&format!("{}/jwks", server.base));
        assert!(store.decoding_key(ISS, a.kid()).await.is_ok());
        for i in 0..5 {
            let kid = format!("unknown-{i}");
            assert_eq!(
                store.decoding_key(ISS, &kid).await.unwrap_err().code,
                RejectCode::UnknownKey
            );
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn jwks_url_concurrent_lookups_fetch_once() {
        let a = key();
        let server = jwks_server(a.public_jwks()).await;
        let store = Arc::new(url_store(&format!("{}/jwks", server.base)));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (store, kid) = (store.clone(), a.kid().to_owned());
            tasks.push(tokio::spawn(async move {
                store.decoding_key(ISS, &kid).await.is_ok()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn jwks_url_redirect_not_followed() {
        let a = key();
        let server = jwks_server(a.public_jwks()).await;
        let store = url_store(&format!("{}/redirect", server.base));
        let e = store.decoding_key(ISS, a.kid()).await.unwrap_err();
        assert_eq!(e.code, RejectCode::UnknownKey);
        assert!(e.detail.contains("could not be fetched"), "{}", e.detail);
        assert_eq!(
            server.hits.load(Ordering::SeqCst),
            0,
            "the redirect target was not requested"
        );
    }

    #[tokio::test]
    async fn jwks_url_failure_keeps_cached_set() {
        let a = key();
        let server = jwks_server(a.public_jwks()).await;
        let mut store = url_store(&format!("{}/jwks", server.base));
        store.set_jwks_timing(Duration::from_millis(1), Duration::from_millis(1));
        assert!(store.decoding_key(ISS, a.kid()).await.is_ok());
        server.failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Stale and the refetch fails: the cached set is still used.
        assert!(store.decoding_key(ISS, a.kid()).await.is_ok());
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn jwks_url_unreachable_without_cache() {
        // Nothing listens on this port once the listener is dropped.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let store = url_store(&format!("http://{addr}/jwks"));
        let e = store.decoding_key(ISS, "k").await.unwrap_err();
        assert_eq!(e.code, RejectCode::UnknownKey);
        assert!(e.detail.contains("could not be fetched"), "{}", e.detail);
        // Retried only after the interval; still unknown_key meanwhile.
        let e = store.decoding_key(ISS, "k").await.unwrap_err();
        assert_eq!(e.code, RejectCode::UnknownKey);
        assert_eq!(store.jwks_fetch_count(&format!("http://{addr}/jwks")), 1);
    }
}
