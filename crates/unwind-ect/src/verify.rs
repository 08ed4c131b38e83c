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

        // One lookup per distinct (iss, kid), run concurrently: a lookup may fetch a JWKS URL,
        // and one slow issuer should not serialise the others.
        let mut key_of: Vec<usize> = Vec::with_capacity(prepared.len());
        let resolved: Vec<Result<ResolvedKey, Rejection>> = {
            let mut index: HashMap<(&str, &str), usize> = HashMap::new();
            let mut ids: Vec<(&str, &str)> = Vec::new();
            for p in &prepared {
                let Ok(p) = p else {
                    key_of.push(usize::MAX);
                    continue;
                };
                let id = (p.iss.as_str(), p.header.kid.as_str());
                let i = *index.entry(id).or_insert_with(|| {
                    ids.push(id);
                    ids.len() - 1
                });
                key_of.push(i);
            }
            let trust = &self.trust;
            futures::future::join_all(
                ids.into_iter()
                    .map(|(iss, kid)| trust.decoding_key(iss, kid)),
            )
            .await
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Profile;
    use crate::keys::KeyAlg;
    use crate::testutil::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    async fn code_of(v: &Verifier, token: &str) -> RejectCode {
        v.verify(token, NOW).await.unwrap_err().code
    }

    #[tokio::test]
    async fn valid_draft00_token() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let token = k.sign_ect(&claims("j1"), Profile::Draft00).unwrap();
        let ect = v.verify(&token, NOW).await.unwrap();
        assert_eq!(ect.jti, "j1");
        assert_eq!(ect.iss, ISS);
        assert_eq!(ect.aud, vec!["spiffe://unwind.local/coordinator"]);
        assert_eq!(ect.profile, Profile::Draft00);
        assert_eq!(ect.header.typ, "wimse-exec+jwt");
        assert_eq!(ect.header.alg, "ES256");
        assert_eq!(ect.header.kid, k.kid());
        assert_eq!(ect.wid.as_deref(), Some("wf-1"));
        assert!(ect.parents.is_empty());
        assert_eq!(ect.token, token);
        assert_eq!(ect.content_hash, crate::sha256_hex(token.as_bytes()));
        assert_eq!(ect.claims, claims("j1"));
        assert!(!ect.is_error());
    }

    #[tokio::test]
    async fn draft01_names_are_normalised() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let c = claims_with(
            "j2",
            json!({"par": null, "pred": ["p1", "p2"],
                   "ect_ext": {"pol": "p", "pol_decision": "rejected", "x": 1}}),
        );
        let token = k.sign_ect(&c, Profile::Draft01).unwrap();
        let ect = v.verify(&token, NOW).await.unwrap();
        assert_eq!(ect.profile, Profile::Draft01);
        assert_eq!(ect.header.typ, "exec+jwt");
        assert_eq!(ect.parents, vec!["p1", "p2"]);
        assert_eq!(ect.ext["x"], 1);
        assert!(ect.is_error());
        assert!(ect.claims.contains_key("pred") && ect.claims.contains_key("ect_ext"));
    }

    #[tokio::test]
    async fn draft00_policy_fields_move_into_ext() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let c = claims_with(
            "j3",
            json!({"pol": "spend-limit", "pol_decision": "rejected", "ext": {"a": true}}),
        );
        let ect = v
            .verify(&k.sign_ect(&c, Profile::Draft00).unwrap(), NOW)
            .await
            .unwrap();
        assert_eq!(ect.ext["pol"], "spend-limit");
        assert_eq!(ect.ext["pol_decision"], "rejected");
        assert_eq!(ect.ext["a"], true);
        assert!(ect.is_error());
        // The original claims stay as signed.
        assert_eq!(ect.claims["pol"], "spend-limit");
        assert!(!ect.claims["ext"].as_object().unwrap().contains_key("pol"));

        for unpaired in [json!({"pol": "x"}), json!({"pol_decision": "approved"})] {
            let t = k
                .sign_ect(&claims_with("j4", unpaired), Profile::Draft00)
                .unwrap();
            assert_eq!(code_of(&v, &t).await, RejectCode::InvalidClaims);
        }
        let both = claims_with(
            "j5",
            json!({"pol": "x", "pol_decision": "approved", "ext": {"pol": "y"}}),
        );
        let t = k.sign_ect(&both, Profile::Draft00).unwrap();
        assert_eq!(code_of(&v, &t).await, RejectCode::InvalidClaims);
    }

    #[tokio::test]
    async fn alg_none_refused() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let h = URL_SAFE_NO_PAD.encode(header_with(&k, json!({"alg": "none"})));
        let p = URL_SAFE_NO_PAD.encode(Value::Object(claims("j")).to_string());
        assert_eq!(
            code_of(&v, &format!("{h}.{p}.")).await,
            RejectCode::Malformed
        );
        assert_eq!(
            code_of(&v, &format!("{h}.{p}.ZmFrZQ")).await,
            RejectCode::AlgNotAllowed
        );
    }

    #[tokio::test]
    async fn hs256_with_public_key_as_secret_refused() {
        let k = key(KeyAlg::ES256);
        // Even a policy that lists HS256 does not let it through.
        let policy = VerifyPolicy {
            algorithms: vec![Algorithm::ES256, Algorithm::HS256],
            ..VerifyPolicy::default()
        };
        let v = verifier(&[&k], policy);
        let jwk = serde_json::to_vec(&k.public_jwk()).unwrap();
        let secret = jsonwebtoken::EncodingKey::from_secret(&jwk);
        let h = URL_SAFE_NO_PAD.encode(header_with(&k, json!({"alg": "HS256"})));
        let p = URL_SAFE_NO_PAD.encode(Value::Object(claims("j")).to_string());
        let input = format!("{h}.{p}");
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &secret, Algorithm::HS256).unwrap();
        assert_eq!(
            code_of(&v, &format!("{input}.{sig}")).await,
            RejectCode::AlgNotAllowed
        );
    }

    #[tokio::test]
    async fn header_rules() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let payload = Value::Object(claims("j")).to_string();
        let cases = [
            (
                json!({"jku": "https://evil.example/jwks"}),
                RejectCode::InvalidHeader,
            ),
            (json!({"jwk": {"kty": "EC"}}), RejectCode::InvalidHeader),
            (
                json!({"x5u": "https://evil.example/c"}),
                RejectCode::InvalidHeader,
            ),
            (json!({"x5c": ["MIIB"]}), RejectCode::InvalidHeader),
            (json!({"crit": ["exp"]}), RejectCode::InvalidHeader),
            (json!({"kid": null}), RejectCode::InvalidHeader),
            (json!({"typ": "JWT"}), RejectCode::InvalidTyp),
            (json!({"typ": null}), RejectCode::InvalidTyp),
            (json!({"alg": "ES384"}), RejectCode::AlgNotAllowed),
        ];
        for (edit, want) in cases {
            let t = forge(&k, &header_with(&k, edit.clone()), &payload);
            assert_eq!(code_of(&v, &t).await, want, "{edit}");
        }
        for typ in [
            "application/wimse-exec+jwt",
            "EXEC+JWT",
            "application/Exec+Jwt",
        ] {
            let t = forge(&k, &header_with(&k, json!({"typ": typ})), &payload);
            assert!(v.verify(&t, NOW).await.is_ok(), "{typ}");
        }
    }

    #[tokio::test]
    async fn unknown_issuer_and_kid() {
        let k = key(KeyAlg::ES256);
        let other = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let t = k
            .sign_ect(
                &claims_with("j", json!({"iss": "spiffe://other.org/a"})),
                Profile::Draft00,
            )
            .unwrap();
        assert_eq!(code_of(&v, &t).await, RejectCode::UnknownIssuer);
        // The pattern `.../agent/*` does not cover `.../agent` itself.
        let t = k
            .sign_ect(
                &claims_with("j", json!({"iss": "spiffe://example.com/agent"})),
                Profile::Draft00,
            )
            .unwrap();
        assert_eq!(code_of(&v, &t).await, RejectCode::UnknownIssuer);
        let t = other.sign_ect(&claims("j"), Profile::Draft00).unwrap();
        assert_eq!(code_of(&v, &t).await, RejectCode::UnknownKey);
    }

    #[tokio::test]
    async fn iss_checked_before_key_lookup() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        for edit in [json!({"iss": null}), json!({"iss": 5})] {
            let t = k
                .sign_ect(&claims_with("j", edit), Profile::Draft00)
                .unwrap();
            assert_eq!(code_of(&v, &t).await, RejectCode::InvalidClaims);
        }
    }

    #[tokio::test]
    async fn tampered_payload_refused() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let t = k.sign_ect(&claims("j"), Profile::Draft00).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(Value::Object(claims("j-evil")).to_string());
        let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
        assert_eq!(code_of(&v, &tampered).await, RejectCode::InvalidSignature);
        // A signature by another key of the same issuer's family.
        let other = key(KeyAlg::ES256);
        let forged = forge(
            &other,
            &header_with(&k, json!({})),
            &Value::Object(claims("j")).to_string(),
        );
        assert_eq!(code_of(&v, &forged).await, RejectCode::InvalidSignature);
    }

    #[tokio::test]
    async fn time_rules() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let sign = |edit| {
            k.sign_ect(&claims_with("j", edit), Profile::Draft00)
                .unwrap()
        };
        assert_eq!(
            code_of(&v, &sign(json!({"iat": NOW - 1000, "exp": NOW - 61}))).await,
            RejectCode::Expired
        );
        assert_eq!(
            code_of(&v, &sign(json!({"iat": NOW - 1000, "exp": NOW - 60}))).await,
            RejectCode::Expired
        );
        assert!(
            v.verify(&sign(json!({"iat": NOW - 1000, "exp": NOW - 59})), NOW)
                .await
                .is_ok()
        );
        assert_eq!(
            code_of(&v, &sign(json!({"iat": NOW + 61, "exp": NOW + 600}))).await,
            RejectCode::NotYetValid
        );
        assert!(
            v.verify(&sign(json!({"iat": NOW + 60, "exp": NOW + 600})), NOW)
                .await
                .is_ok()
        );
        // An import records an expired token, flagged.
        let (ect, expired) = v
            .verify_for_import(&sign(json!({"iat": 1, "exp": 2})), NOW)
            .await
            .unwrap();
        assert!(expired);
        assert_eq!(ect.exp, 2);
        let (_, expired) = v.verify_for_import(&sign(json!({})), NOW).await.unwrap();
        assert!(!expired);
    }

    #[tokio::test]
    async fn claim_types_and_presence() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let long = "x".repeat(129);
        let cases = [
            json!({"aud": null}),
            json!({"aud": 3}),
            json!({"aud": []}),
            json!({"aud": ["a", 1]}),
            json!({"iat": null}),
            json!({"iat": "1"}),
            json!({"iat": 1.5}),
            json!({"exp": null}),
            json!({"exp": NOW - 10}),
            json!({"exp": 18446744073709551615u64}),
            json!({"jti": null}),
            json!({"jti": ""}),
            json!({"jti": long}),
            json!({"jti": "has space"}),
            json!({"jti": "tab\t"}),
            json!({"jti": "caf\u{e9}"}),
            json!({"jti": 5}),
            json!({"exec_act": null}),
            json!({"exec_act": ""}),
            json!({"exec_act": long}),
            json!({"exec_act": ["x"]}),
            json!({"wid": 1}),
            json!({"wid": ""}),
            json!({"sub": 1}),
            json!({"par": null}),
            json!({"par": "p"}),
            json!({"par": [1]}),
            json!({"par": ["a b"]}),
            json!({"pred": []}),
            json!({"ext": {}, "ect_ext": {}}),
            json!({"ext": []}),
            json!({"inp_hash": "abc"}),
            json!({"out_hash": "sha256:xyz"}),
            json!({"inp_hash": 7}),
            json!({"ext": {"cascade.error_rate": "high"}}),
            json!({"ext": {"cascade.blast_radius": "a"}}),
            json!({"ext": {"cascade.reversible": "yes"}}),
        ];
        for edit in cases {
            let t = k
                .sign_ect(&claims_with("j", edit.clone()), Profile::Draft00)
                .unwrap();
            assert_eq!(code_of(&v, &t).await, RejectCode::InvalidClaims, "{edit}");
        }
        let ok = [
            json!({"aud": ["a", "b"]}),
            json!({"sub": "s", "wid": null}),
            json!({"jti": "urn:uuid:0b8f4e4e-8a8e-4c4f-9f0e-6a1c2b3d4e5f"}),
            json!({"inp_hash": "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg"}),
            json!({"out_hash": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}),
            json!({"out_hash": "sha256:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"}),
            json!({"exec_act": "é".repeat(128)}),
            json!({"ext": {"cascade.error_rate": 0.75, "cascade.blast_radius": ["a"], "unknown": {"k": 1}}}),
        ];
        for edit in ok {
            let t = k
                .sign_ect(&claims_with("j", edit.clone()), Profile::Draft00)
                .unwrap();
            let ect = v.verify(&t, NOW).await;
            assert!(ect.is_ok(), "{edit}: {ect:?}");
        }
    }

    #[tokio::test]
    async fn parent_rules() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let hundred: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
        let t = k
            .sign_ect(&claims_with("j", json!({"par": hundred})), Profile::Draft00)
            .unwrap();
        assert_eq!(v.verify(&t, NOW).await.unwrap().parents.len(), 100);
        let too_many: Vec<String> = (0..101).map(|i| format!("p{i}")).collect();
        let cases = [
            json!({"par": too_many}),
            json!({"par": ["a", "b", "a"]}),
            json!({"par": ["a", "j"]}),
            json!({"par": ["a"], "pred": ["a"]}),
        ];
        for edit in cases {
            let t = k
                .sign_ect(&claims_with("j", edit.clone()), Profile::Draft00)
                .unwrap();
            assert_eq!(code_of(&v, &t).await, RejectCode::InvalidClaims, "{edit}");
        }
        // The limit is configurable.
        let v2 = verifier(
            &[&k],
            VerifyPolicy {
                max_parents: 2,
                ..VerifyPolicy::default()
            },
        );
        let t = k
            .sign_ect(
                &claims_with("j", json!({"par": ["a", "b", "c"]})),
                Profile::Draft00,
            )
            .unwrap();
        assert_eq!(code_of(&v2, &t).await, RejectCode::InvalidClaims);
    }

    #[tokio::test]
    async fn ext_size_and_depth() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let depth5 = json!({"a": {"b": {"c": {"d": {}}}}});
        let depth6 = json!({"a": {"b": {"c": {"d": {"e": {}}}}}});
        let depth6_array = json!({"a": {"b": {"c": {"d": [[1]]}}}});
        let t = k
            .sign_ect(&claims_with("j", json!({"ext": depth5})), Profile::Draft00)
            .unwrap();
        assert!(v.verify(&t, NOW).await.is_ok());
        for ext in [depth6, depth6_array] {
            let t = k
                .sign_ect(&claims_with("j", json!({"ext": ext})), Profile::Draft00)
                .unwrap();
            assert_eq!(code_of(&v, &t).await, RejectCode::InvalidClaims);
        }
        // {"k":"<n x>"} serializes to n + 8 bytes.
        let at_limit = json!({"k": "x".repeat(4096 - 8)});
        let t = k
            .sign_ect(
                &claims_with("j", json!({"ect_ext": at_limit})),
                Profile::Draft00,
            )
            .unwrap();
        assert!(v.verify(&t, NOW).await.is_ok());
        let over = json!({"k": "x".repeat(4096 - 7)});
        let t = k
            .sign_ect(
                &claims_with("j", json!({"ect_ext": over})),
                Profile::Draft00,
            )
            .unwrap();
        assert_eq!(code_of(&v, &t).await, RejectCode::InvalidClaims);
    }

    #[tokio::test]
    async fn duplicate_json_keys_in_signed_payload() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let payload = Value::Object(claims("j")).to_string();
        let dup = payload.replacen('{', r#"{"jti":"other","#, 1);
        let t = forge(&k, &header_with(&k, json!({})), &dup);
        assert_eq!(code_of(&v, &t).await, RejectCode::Malformed);
        let dup_header = header_with(&k, json!({})).replacen('{', r#"{"kid":"x","#, 1);
        let t = forge(&k, &dup_header, &payload);
        assert_eq!(code_of(&v, &t).await, RejectCode::Malformed);
    }

    #[tokio::test]
    async fn checkpoint_rules() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let cp = |iss: &str, ext: Value| {
            let c = claims_with(
                "cp",
                json!({"iss": iss, "exec_act": "checkpoint", "ext": ext}),
            );
            k.sign_ect(&c, Profile::Draft00).unwrap()
        };
        let dev = "spiffe://example.com/dev/x";
        let ok = cp(
            ISS,
            json!({"cascade.reversible": true, "cascade.rollback_uri": "https://rollback.example.com/r/1", "cascade.ttl": 300}),
        );
        let ect = v.verify(&ok, NOW).await.unwrap();
        assert_eq!(
            ect.checkpoint().unwrap().rollback_uri.as_deref(),
            Some("https://rollback.example.com/r/1")
        );
        assert!(
            v.verify(&cp(ISS, json!({"cascade.reversible": false})), NOW)
                .await
                .is_ok()
        );
        assert!(v.verify(&cp(dev, json!({"cascade.reversible": true, "cascade.rollback_uri": "http://127.0.0.1:9000/rb"})), NOW).await.is_ok());

        let cases = [
            (cp(ISS, json!({})), RejectCode::InvalidCheckpoint),
            (
                cp(ISS, json!({"cascade.reversible": true})),
                RejectCode::InvalidCheckpoint,
            ),
            (
                cp(ISS, json!({"cascade.reversible": "true"})),
                RejectCode::InvalidCheckpoint,
            ),
            (
                cp(
                    ISS,
                    json!({"cascade.reversible": false, "cascade.ttl": "5"}),
                ),
                RejectCode::InvalidCheckpoint,
            ),
            (
                cp(ISS, json!({"cascade.reversible": false, "cascade.ttl": -5})),
                RejectCode::InvalidCheckpoint,
            ),
            (
                cp(
                    ISS,
                    json!({"cascade.reversible": true, "cascade.rollback_uri": "http://169.254.169.254/x"}),
                ),
                RejectCode::RollbackUriNotAllowed,
            ),
            // Listed host, but plain http is not allowed for this issuer.
            (
                cp(
                    ISS,
                    json!({"cascade.reversible": true, "cascade.rollback_uri": "http://127.0.0.1/rb"}),
                ),
                RejectCode::RollbackUriNotAllowed,
            ),
            (
                cp(
                    ISS,
                    json!({"cascade.reversible": true, "cascade.rollback_uri": "https://evil.example/rb"}),
                ),
                RejectCode::RollbackUriNotAllowed,
            ),
            (
                cp(
                    ISS,
                    json!({"cascade.reversible": true, "cascade.rollback_uri": "https://u:p@rollback.example.com/rb"}),
                ),
                RejectCode::RollbackUriNotAllowed,
            ),
            (
                cp(
                    dev,
                    json!({"cascade.reversible": true, "cascade.rollback_uri": "http://169.254.169.254/x"}),
                ),
                RejectCode::RollbackUriNotAllowed,
            ),
        ];
        for (t, want) in cases {
            assert_eq!(code_of(&v, &t).await, want);
        }
        let no_wid = k
            .sign_ect(&claims_with("cp", json!({"exec_act": "checkpoint", "wid": null, "ext": {"cascade.reversible": false}})), Profile::Draft00)
            .unwrap();
        assert_eq!(code_of(&v, &no_wid).await, RejectCode::InvalidCheckpoint);
    }

    #[tokio::test]
    async fn other_algorithms_follow_the_allow_list() {
        for alg in [KeyAlg::ES384, KeyAlg::EdDSA] {
            let k = key(alg);
            let t = k.sign_ect(&claims("j"), Profile::Draft01).unwrap();
            let v = verifier(&[&k], VerifyPolicy::default());
            assert_eq!(code_of(&v, &t).await, RejectCode::AlgNotAllowed, "{alg:?}");
            let policy = VerifyPolicy {
                algorithms: vec![Algorithm::ES256, alg.algorithm()],
                ..VerifyPolicy::default()
            };
            let v = verifier(&[&k], policy);
            let ect = v.verify(&t, NOW).await.unwrap();
            assert_eq!(ect.header.alg, format!("{:?}", alg.algorithm()));
        }
    }

    #[tokio::test]
    async fn alg_must_fit_the_key() {
        // An ES256 key named by a token claiming ES384 (allowed) cannot verify it.
        let k = key(KeyAlg::ES256);
        let k384 = key(KeyAlg::ES384);
        let policy = VerifyPolicy {
            algorithms: vec![Algorithm::ES256, Algorithm::ES384],
            ..VerifyPolicy::default()
        };
        let v = verifier(&[&k], policy);
        let header = json!({"alg": "ES384", "typ": "exec+jwt", "kid": k.kid()}).to_string();
        let t = forge(&k384, &header, &Value::Object(claims("j")).to_string());
        assert_eq!(code_of(&v, &t).await, RejectCode::InvalidSignature);
    }

    #[tokio::test]
    async fn batch_keeps_order() {
        let k = key(KeyAlg::ES256);
        let stranger = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let mut tokens = Vec::new();
        let mut want = Vec::new();
        for i in 0..40 {
            let jti = format!("j{i}");
            let (t, w) = match i % 4 {
                0 | 1 => (k.sign_ect(&claims(&jti), Profile::Draft00).unwrap(), None),
                2 => (
                    stranger.sign_ect(&claims(&jti), Profile::Draft00).unwrap(),
                    Some(RejectCode::UnknownKey),
                ),
                _ => (format!("garbage-{i}"), Some(RejectCode::Malformed)),
            };
            tokens.push(t);
            want.push((jti, w));
        }
        let results = v.verify_batch(&tokens, NOW).await;
        assert_eq!(results.len(), tokens.len());
        for (r, (jti, w)) in results.iter().zip(want) {
            match (r, w) {
                (Ok(ect), None) => assert_eq!(ect.jti, jti),
                (Err(e), Some(code)) => assert_eq!(e.code, code, "{jti}"),
                other => panic!("{jti}: {other:?}"),
            }
        }
        assert!(v.verify_batch(&[], NOW).await.is_empty());
        assert_eq!(
            v.verify_batch(&tokens[..1], NOW).await[0]
                .as_ref()
                .unwrap()
                .jti,
            "j0"
        );
    }

    #[tokio::test]
    async fn audience_check() {
        let k = key(KeyAlg::ES256);
        let v = verifier(&[&k], VerifyPolicy::default());
        let t = k
            .sign_ect(
                &claims_with(
                    "j",
                    json!({"aud": ["x", "spiffe://unwind.local/coordinator"]}),
                ),
                Profile::Draft00,
            )
            .unwrap();
        let ect = v.verify(&t, NOW).await.unwrap();
        assert!(require_audience(&ect, "spiffe://unwind.local/coordinator").is_ok());
        assert_eq!(
            require_audience(&ect, "y").unwrap_err().code,
            RejectCode::InvalidClaims
        );
    }

    #[test]
    fn policy_from_config() {
        let p = VerifyPolicy::from_config(&EctConfig::default()).unwrap();
        assert_eq!(p.algorithms, vec![Algorithm::ES256]);
        assert_eq!(
            (p.clock_skew_s, p.max_parents, p.max_token_bytes),
            (60, 100, 16384)
        );
        let cfg = EctConfig {
            algorithms: vec!["EdDSA".into(), "ES384".into()],
            ..EctConfig::default()
        };
        assert_eq!(
            VerifyPolicy::from_config(&cfg).unwrap().algorithms,
            vec![Algorithm::EdDSA, Algorithm::ES384]
        );
        for bad in ["HS256", "none", "ES512x"] {
            let cfg = EctConfig {
                algorithms: vec![bad.into()],
                ..EctConfig::default()
            };
            assert!(VerifyPolicy::from_config(&cfg).is_err(), "{bad}");
        }
    }

    #[test]
    fn verifier_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Verifier>();
        check::<TrustStore>();
    }
}
