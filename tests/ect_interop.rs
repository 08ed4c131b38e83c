//! Interop: tokens minted by an independent JOSE implementation (jwcrypto, see
//! `tests/vectors/make_vectors.py`) verify, or are refused with the expected code; tokens
//! Unwind signs decode with jsonwebtoken's own `decode`.

use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value, json};
use unwind::config::{TrustConfig, TrustIssuerConfig};
use unwind::ect::{KeyAlg, Profile, SigningKey, TrustStore, Verifier, VerifyPolicy};

/// The time the vectors are judged at (see make_vectors.py).
const NOW: i64 = 1_800_000_000;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(vectors_dir().join("interop_tokens.json")).unwrap();
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

fn interop_verifier(algorithms: Vec<Algorithm>) -> Verifier {
    let cfg = TrustConfig {
        issuers: vec![TrustIssuerConfig {
            id: "spiffe://interop.example/agent/*".into(),
            jwks_file: Some(vectors_dir().join("interop.jwks.json")),
            rollback_hosts: vec!["rollback.example.com".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let store = TrustStore::from_config(&cfg).unwrap();
    Verifier::new(
        Arc::new(store),
        VerifyPolicy {
            algorithms,
            ..VerifyPolicy::default()
        },
    )
}

fn outcome(r: &Result<unwind::ect::VerifiedEct, unwind::ect::Rejection>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code.as_str().into(),
    }
}

#[tokio::test]
async fn jwcrypto_vectors_verify_as_expected() {
    let verifier = interop_verifier(vec![Algorithm::ES256, Algorithm::EdDSA]);
    let vectors = vectors();
    assert!(vectors.len() >= 6);
    let mut ok = 0;
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let token = v["token"].as_str().unwrap();
        let expect = v["expect"].as_str().unwrap();
        let result = verifier.verify(token, NOW).await;
        assert_eq!(outcome(&result), expect, "{name}: {result:?}");
        if let Ok(ect) = result {
            ok += 1;
            assert_eq!(ect.jti, v["jti"].as_str().unwrap(), "{name}");
            let parents: Vec<String> = serde_json::from_value(v["parents"].clone()).unwrap();
            assert_eq!(ect.parents, parents, "{name}");
            assert_eq!(
                serde_json::to_value(ect.profile).unwrap(),
                v["profile"],
                "{name}"
            );
            if let Some(Value::Object(ext)) = v.get("ext") {
                for (k, want) in ext {
                    assert_eq!(ect.ext.get(k), Some(want), "{name}: ext {k}");
                }
            }
            assert_eq!(ect.token, token);
        }
    }
    assert!(ok >= 4, "some vectors must verify");
    // Every refusal code the vectors exercise appears at least once.
    let expects: Vec<&str> = vectors
        .iter()
        .map(|v| v["expect"].as_str().unwrap())
        .collect();
    for code in [
        "invalid_signature",
        "expired",
        "malformed",
        "alg_not_allowed",
        "rollback_uri_not_allowed",
    ] {
        assert!(expects.contains(&code), "{code}");
    }
}

#[tokio::test]
async fn jwcrypto_vectors_in_one_batch_keep_order() {
    let verifier = interop_verifier(vec![Algorithm::ES256, Algorithm::EdDSA]);
    let vectors = vectors();
    let tokens: Vec<String> = vectors
        .iter()
        .map(|v| v["token"].as_str().unwrap().to_owned())
        .collect();
    let results = verifier.verify_batch(&tokens, NOW).await;
    assert_eq!(results.len(), vectors.len());
    for (v, r) in vectors.iter().zip(&results) {
        assert_eq!(outcome(r), v["expect"].as_str().unwrap(), "{}", v["name"]);
    }
}

#[tokio::test]
async fn eddsa_vector_refused_when_not_allowed() {
    let verifier = interop_verifier(vec![Algorithm::ES256]);
    let v = vectors()
        .into_iter()
        .find(|v| v["name"] == "eddsa-draft01")
        .unwrap();
    let e = verifier
        .verify(v["token"].as_str().unwrap(), NOW)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_str(), "alg_not_allowed");
}

fn claims(jti: &str) -> Map<String, Value> {
    match json!({
        "iss": "spiffe://unwind.local/coordinator",
        "aud": ["spiffe://unwind.local/coordinator"],
        "iat": NOW - 5,
        "exp": NOW + 3600,
        "jti": jti,
        "wid": "wf",
        "exec_act": "rollback_start",
        "par": ["a"],
        "ext": {"cascade.rollback_id": "urn:uuid:1", "cascade.scope": "sub_dag"},
    }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn signed_tokens_decode_with_jsonwebtoken_and_verify_here() {
    for alg in [KeyAlg::ES256, KeyAlg::ES384, KeyAlg::EdDSA] {
        let key = SigningKey::generate(alg).unwrap();
        let token = key.sign_ect(&claims("own-1"), Profile::Draft00).unwrap();

        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, key.alg());
        assert_eq!(header.typ.as_deref(), Some("wimse-exec+jwt"));
        assert_eq!(header.kid.as_deref(), Some(key.kid()));

        let mut validation = Validation::new(key.alg());
        validation.set_audience(&["spiffe://unwind.local/coordinator"]);
        validation.validate_exp = false; // the claims are dated at NOW, not the wall clock
        validation.set_required_spec_claims(&["iss", "aud", "exp"]);
        let decoded = jsonwebtoken::decode::<Value>(
            &token,
            &DecodingKey::from_jwk(&key.public_jwk()).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims, Value::Object(claims("own-1")));

        // And Unwind's verifier accepts its own token through a static issuer.
        let mut store = TrustStore::from_config(&TrustConfig::default()).unwrap();
        store.add_static_issuer("spiffe://unwind.local/coordinator", key.public_jwks());
        let policy = VerifyPolicy {
            algorithms: vec![key.alg()],
            ..VerifyPolicy::default()
        };
        let ect = Verifier::new(Arc::new(store), policy)
            .verify(&token, NOW)
            .await
            .unwrap();
        assert_eq!(ect.parents, vec!["a"]);
        assert_eq!(ect.exec_act, "rollback_start");
    }
}

#[tokio::test]
async fn private_jwk_file_round_trip_keeps_verifying() {
    let key = SigningKey::generate(KeyAlg::ES256).unwrap();
    let reloaded = SigningKey::from_private_jwk_json(&key.to_private_jwk_json()).unwrap();
    assert_eq!(reloaded.kid(), key.kid());
    let token = reloaded
        .sign_ect(&claims("own-2"), Profile::Draft01)
        .unwrap();
    let mut store = TrustStore::from_config(&TrustConfig::default()).unwrap();
    store.add_static_issuer("spiffe://unwind.local/coordinator", key.public_jwks());
    let ect = Verifier::new(Arc::new(store), VerifyPolicy::default())
        .verify(&token, NOW)
        .await
        .unwrap();
    assert_eq!(ect.header.typ, "exec+jwt");
}
