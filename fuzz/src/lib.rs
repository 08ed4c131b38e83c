//! What the fuzz targets share: the verifier of the interop vectors, the properties every
//! refusal must have, and JSON comparison that tolerates float re-parsing.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use unwind_ect::config::{TrustConfig, TrustIssuerConfig};
use unwind_ect::{KeyAlg, RejectCode, Rejection, SigningKey, TrustStore, Verifier, VerifyPolicy};

/// The time the interop vectors are judged at (tests/vectors/make_vectors.py).
pub const NOW: i64 = 1_800_000_000;

/// A verifier trusting the interop vectors' issuers, as `tests/ect_interop.rs` sets it up.
pub fn interop_verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let jwks =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/interop.jwks.json");
        let cfg = TrustConfig {
            issuers: vec![TrustIssuerConfig {
                id: "spiffe://interop.example/agent/*".into(),
                jwks_file: Some(jwks),
                rollback_hosts: vec!["rollback.example.com".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let store = TrustStore::from_config(&cfg).expect("interop trust store");
        Verifier::new(
            Arc::new(store),
            VerifyPolicy {
                algorithms: all_algorithms(),
                ..VerifyPolicy::default()
            },
        )
    })
}

/// Every algorithm the verifier can accept (the header rules refuse the rest regardless).
pub fn all_algorithms() -> Vec<Algorithm> {
    use Algorithm::*;
    vec![
        ES256, ES384, EdDSA, PS256, PS384, PS512, RS256, RS384, RS512,
    ]
}

/// An EdDSA key the claims target signs with (fast enough to sign every input).
pub fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate(KeyAlg::EdDSA).expect("EdDSA key"))
}

/// Runs a future to completion on this thread (the verifier's futures only wait on locks and,
/// for static JWKS, never on the network).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// A refusal always names a code and says why.
pub fn assert_rejection(r: &Rejection, allowed: &[RejectCode]) {
    assert!(!r.code.as_str().is_empty());
    assert!(!r.detail.is_empty(), "{:?} without a detail", r.code);
    assert!(
        allowed.is_empty() || allowed.contains(&r.code),
        "unexpected code {:?} ({}), expected one of {allowed:?}",
        r.code,
        r.detail
    );
}

/// JSON equality where two numbers are equal when they are the same integer, or floats within
/// one part in 10^15 (serde_json's default float parsing is not exact to the last bit).
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => same_map(x, y),
        _ => a == b,
    }
}

pub fn same_map(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| same_json(v, w)))
}
