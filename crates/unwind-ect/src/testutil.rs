//! Helpers shared by the ECT unit tests: keys, claim sets, trust stores, forged tokens.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::keys::{KeyAlg, SigningKey};
use super::trust::TrustStore;
use super::verify::{Verifier, VerifyPolicy};
use crate::config::{TrustConfig, TrustIssuerConfig};

/// The fixed "now" of the tests.
pub const NOW: i64 = 1_800_000_000;
pub const ISS: &str = "spiffe://example.com/agent/a";

pub fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// A valid -00 root ECT's claims.
pub fn claims(jti: &str) -> Map<String, Value> {
    obj(json!({
        "iss": ISS,
        "aud": "spiffe://unwind.local/coordinator",
        "iat": NOW - 10,
        "exp": NOW + 600,
        "jti": jti,
        "wid": "wf-1",
        "exec_act": "tool_call",
        "par": [],
    }))
}

/// Claims with `edit` applied (`null` removes a claim).
pub fn claims_with(jti: &str, edit: Value) -> Map<String, Value> {
    let mut c = claims(jti);
    for (k, v) in obj(edit) {
        if v.is_null() {
            c.remove(&k);
        } else {
            c.insert(k, v);
        }
    }
    c
}

pub fn key(alg: KeyAlg) -> SigningKey {
    SigningKey::generate(alg).unwrap()
}

/// Writes a JWKS to a temporary file kept alive by the returned directory.
pub fn jwks_file(dir: &tempfile::TempDir, name: &str, keys: &[&SigningKey]) -> PathBuf {
    let set = jsonwebtoken::jwk::JwkSet {
        keys: keys.iter().map(|k| k.public_jwk()).collect(),
    };
    let path = dir.path().join(name);
    std::fs::write(&path, serde_json::to_string(&set).unwrap()).unwrap();
    path
}

/// A store trusting `ISS` (from a JWKS file) with the given keys; `spiffe://example.com/agent/*`
/// rollback hosts `rollback.example.com` and `127.0.0.1` (http allowed only for the latter's
/// issuer `spiffe://example.com/dev/*`).
pub fn store(keys: &[&SigningKey]) -> TrustStore {
    let dir = tempfile::tempdir().unwrap();
    let path = jwks_file(&dir, "a.json", keys);
    let cfg = TrustConfig {
        issuers: vec![
            TrustIssuerConfig {
                id: "spiffe://example.com/agent/*".into(),
                jwks_file: Some(path.clone()),
                rollback_hosts: vec!["rollback.example.com".into(), "127.0.0.1".into()],
                ..Default::default()
            },
            TrustIssuerConfig {
                id: "spiffe://example.com/dev/*".into(),
                jwks_file: Some(path),
                rollback_hosts: vec!["127.0.0.1".into(), "LocalHost".into()],
                allow_http: true,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    TrustStore::from_config(&cfg).unwrap()
}

pub fn verifier(keys: &[&SigningKey], policy: VerifyPolicy) -> Verifier {
    Verifier::new(Arc::new(store(keys)), policy)
}

/// A token with the given header and payload JSON texts, validly signed by `key`.
pub fn forge(key: &SigningKey, header: &str, payload: &str) -> String {
    key.sign_raw(header.as_bytes(), payload.as_bytes())
}

/// The standard header of `key` as JSON text, with `edit` applied (`null` removes a member).
pub fn header_with(key: &SigningKey, edit: Value) -> String {
    let mut h =
        obj(json!({"alg": format!("{:?}", key.alg()), "typ": "wimse-exec+jwt", "kid": key.kid()}));
    for (k, v) in obj(edit) {
        if v.is_null() {
            h.remove(&k);
        } else {
            h.insert(k, v);
        }
    }
    Value::Object(h).to_string()
}
