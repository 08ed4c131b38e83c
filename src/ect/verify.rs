//! The verifier: header, key, signature, then claims, in the order spec/ect.md gives.
//!
//! Order per token: parse (`malformed`) → header rules (`alg_not_allowed` before any key
//! lookup, `invalid_typ`, `invalid_header`) → `iss` present (`invalid_claims`) → key lookup
//! (`unknown_issuer`, `unknown_key`) → signature (`invalid_signature`) → claims. Batches resolve
//! each distinct (`iss`, `kid`) once, then check signatures and claims on blocking threads, one
//! chunk per available core, because ECDSA verification is the cost of ingest.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::claims::{check_checkpoint, check_time, normalise};
use super::jws::{CheckedHeader, check_header, parse_asymmetric_alg, parse_compact};
use super::trust::{ResolvedKey, TrustStore};
use super::{EctHeader, RejectCode, Rejection, VerifiedEct};
use crate::config::EctConfig;

/// Limits and tolerances of verification (from `[ect]` configuration).
#[derive(Debug, Clone)]
pub struct VerifyPolicy {
    /// Accepted algorithms. `none` and HMAC are refused even if listed here.
    pub algorithms: Vec<Algorithm>,
    /// Tolerated clock difference for `iat`/`exp`, in seconds.
    pub clock_skew_s: i64,
    pub max_parents: usize,
    /// Largest compact token, in bytes; larger is `malformed`.
    pub max_token_bytes: usize,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self {
            algorithms: vec![Algorithm::ES256],
            clock_skew_s: 60,
            max_parents: 100,
            max_token_bytes: 16 * 1024,
        }
    }
}

impl VerifyPolicy {
    /// The policy of an `[ect]` section; an algorithm that is unknown, `none` or HMAC is an
    /// error naming it.
    pub fn from_config(cfg: &EctConfig) -> Result<Self, String> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|name| {
                parse_asymmetric_alg(name)
                    .ok_or_else(|| format!("ect.algorithms: `{name}` is not an accepted algorithm"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err("ect.algorithms: at least one algorithm is required".into());
        }
        if cfg.clock_skew_s < 0 {
            return Err("ect.clock_skew_s must not be negative".into());
        }
        Ok(Self {
            algorithms,
            clock_skew_s: cfg.clock_skew_s,
            max_parents: cfg.max_parents,
            max_token_bytes: cfg.max_token_bytes,
        })
    }
}

/// A token that parsed and passed the header rules; its key is not resolved yet.
struct Prepared {
    token: String,
    header: CheckedHeader,
    iss: String,
    claims: Map<String, Value>,
    signing_input: String,
    signature_b64: String,
}

/// How the claim stage treats time.
#[derive(Clone, Copy)]
enum TimeRule {
    /// Ingest: expired and not-yet-valid tokens are refused.
    Strict,
    /// Import: an expired token is accepted and flagged.
    AllowExpired,
}

/// Verifies ECTs against a trust store. Cheap to share behind an `Arc`.
pub struct Verifier {
    trust: Arc<TrustStore>,
    policy: Arc<VerifyPolicy>,
}

impl Verifier {
    pub fn new(trust: Arc<TrustStore>, policy: VerifyPolicy) -> Self {
        Self {
            trust,
            policy: Arc::new(policy),
        }
    }

    pub fn trust(&self) -> &Arc<TrustStore> {
        &self.trust
    }

    pub fn policy(&self) -> &VerifyPolicy {
        &self.policy
    }

    /// Verifies one token at time `now` (Unix seconds).
    pub async fn verify(&self, token: &str, now: i64) -> Result<VerifiedEct, Rejection> {
        let prepared = prepare(token.to_owned(), &self.policy)?;
        let key = self
            .trust
            .decoding_key(&prepared.iss, &prepared.header.kid)
            .await?;
        finish(
            prepared,
            &key,
            &self.policy,
            &self.trust,
            now,
            TimeRule::Strict,
        )
        .map(|(ect, _)| ect)
    }

    /// Like [`Verifier::verify`], but an expired token is accepted and reported with `true`
    /// (for `unwind import`, which records expired tokens flagged).
    pub async fn verify_for_import(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(VerifiedEct, bool), Rejection> {
        let prepared = prepare(token.to_owned(), &self.policy)?;
        let key = self
            .trust
            .decoding_key(&prepared.iss, &prepared.header.kid)
            .await?;
        finish(
            prepared,
            &key,
            &self.policy,
            &self.trust,
            now,
            TimeRule::AllowExpired,
        )
    }

    /// Verifies many tokens; results are in input order, each token judged on its own.
    pub async fn verify_batch(
        &self,
        tokens: &[String],
        now: i64,
    ) -> Vec<Result<VerifiedEct, Rejection>> {
        if tokens.len() <= 1 {
            let mut out = Vec::with_capacity(tokens.len());
            for token in tokens {
                out.push(self.verify(token, now).await);
            }
            return out;
        }
        let policy = self.policy.clone();
        let prepared = parallel_map(
            tokens.to_vec(),
            move |token| prepare(token, &policy),
            || {
                Err(Rejection::new(
                    RejectCode::Malformed,
                    "internal error while parsing",
                ))
            },
        )
        .await;

        // One lookup per distinct (iss, kid); lookups are async (a JWKS URL may be fetched).
        let mut resolved: Vec<Result<ResolvedKey, Rejection>> = Vec::new();
        let mut key_of: Vec<usize> = Vec::with_capacity(prepared.len());
        {
            let mut index: HashMap<(&str, &str), usize> = HashMap::new();
            for p in &prepared {
                let Ok(p) = p else {
                    key_of.push(usize::MAX);
                    continue;
                };
                let id = (p.iss.as_str(), p.header.kid.as_str());
                let i = match index.get(&id) {
                    Some(i) => *i,
                    None => {
                        resolved.push(self.trust.decoding_key(id.0, id.1).await);
                        index.insert(id, resolved.len() - 1);
                        resolved.len() - 1
                    }
                };
                key_of.push(i);
            }
        }
        let work: Vec<Result<(Prepared, ResolvedKey), Rejection>> = prepared
            .into_iter()
            .zip(key_of)
            .map(|(p, i)| {
                let p = p?;
                let key = resolved.get(i).cloned().unwrap_or_else(|| {
                    Err(Rejection::new(RejectCode::UnknownKey, "key lookup missing"))
                })?;
                Ok((p, key))
            })
            .collect();

        let policy = self.policy.clone();
        let trust = self.trust.clone();
        parallel_map(
            work,
            move |item| {
                let (p, key) = item?;
                finish(p, &key, &policy, &trust, now, TimeRule::Strict).map(|(ect, _)| ect)
            },
            || {
                Err(Rejection::new(
                    RejectCode::InvalidSignature,
                    "internal error while verifying",
                ))
            },
        )
        .await
    }
}

/// Checks that `aud` names `audience` (tokens that authenticate a request to Unwind).
pub fn require_audience(ect: &VerifiedEct, audience: &str) -> Result<(), Rejection> {
    if ect.aud.iter().any(|a| a == audience) {
        Ok(())
    } else {
        Err(Rejection::new(
            RejectCode::InvalidClaims,
            format!("aud does not name `{audience}`"),
        ))
    }
}

fn prepare(token: String, policy: &VerifyPolicy) -> Result<Prepared, Rejection> {
    let parsed = parse_compact(&token, policy.max_token_bytes)?;
    let header = check_header(&parsed.header, &policy.algorithms)?;
    let iss = match parsed.claims.get("iss") {
        Some(Value::String(iss)) if !iss.is_empty() => iss.clone(),
        Some(_) => {
            return Err(Rejection::new(
                RejectCode::InvalidClaims,
                "iss must be a string",
            ));
        }
        None => return Err(Rejection::new(RejectCode::InvalidClaims, "iss is required")),
    };
    Ok(Prepared {
        token,
        header,
        iss,
        claims: parsed.claims,
        signing_input: parsed.signing_input,
        signature_b64: parsed.signature_b64,
    })
}

/// Signature, then claims. Returns whether the token is expired (only with `AllowExpired`).
fn finish(
    p: Prepared,
    key: &ResolvedKey,
    policy: &VerifyPolicy,
    trust: &TrustStore,
    now: i64,
    time: TimeRule,
) -> Result<(VerifiedEct, bool), Rejection> {
    let alg = p.header.alg;
    if !key.accepts(alg) {
        return Err(Rejection::new(
            RejectCode::InvalidSignature,
            format!("key `{}` is not a {} key", p.header.kid, p.header.alg_name),
        ));
    }
    match jsonwebtoken::crypto::verify(&p.signature_b64, p.signing_input.as_bytes(), &key.key, alg)
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(Rejection::new(
                RejectCode::InvalidSignature,
                "signature does not verify",
            ));
        }
        Err(e) => {
            return Err(Rejection::new(
                RejectCode::InvalidSignature,
                format!("signature cannot be checked: {e}"),
            ));
        }
    }
    let header = EctHeader {
        alg: p.header.alg_name,
        typ: p.header.typ,
        kid: p.header.kid,
    };
    let ect = normalise(&p.token, header, p.claims, policy.max_parents)?;
    let expired = match (check_time(&ect, now, policy.clock_skew_s), time) {
        (Ok(()), _) => false,
        (Err(r), TimeRule::AllowExpired) if r.code == RejectCode::Expired => true,
        (Err(r), _) => return Err(r),
    };
    check_checkpoint(&ect, trust)?;
    Ok((ect, expired))
}

/// Maps `items` in order on blocking threads, one contiguous chunk per available core.
/// A chunk whose thread panicked yields `on_panic()` for each of its items.
async fn parallel_map<T, R, F, P>(items: Vec<T>, f: F, on_panic: P) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
    P: Fn() -> R,
{
    let n = items.len();
    let workers = std::thread::available_parallelism()
        .map(|w| w.get())
        .unwrap_or(1)
        .clamp(1, n.max(1));
    let chunk = n.div_ceil(workers).max(1);
    let f = Arc::new(f);
    let mut handles = Vec::with_capacity(workers);
    let mut rest = items.into_iter();
    loop {
        let part: Vec<T> = rest.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let len = part.len();
        let f = f.clone();
        handles.push((
            len,
            tokio::task::spawn_blocking(move || {
                part.into_iter().map(|item| f(item)).collect::<Vec<R>>()
            }),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for (len, handle) in handles {
        match handle.await {
            Ok(results) => out.extend(results),
            Err(e) => {
                tracing::error!(error = %e, "verification thread failed");
                out.extend((0..len).map(|_| on_panic()));
            }
        }
    }
    out
}
