//! Claim validation: `normalise`, `check_time`, `check_checkpoint` on a decoded claims object, in
//! both draft revisions, and the same claims signed and run through the whole verifier.
//!
//! Input: a JSON object (the seeds are real claims), or else structured edits applied to a
//! valid claims set, so that most inputs get past the first checks.
//!
//! Properties: no panic; a refusal carries a claims or checkpoint code; an accepted token
//! satisfies the profile's rules (ids, times, parents, ext); the same claims under the other
//! revision's names give the same outcome; the verifier agrees with the claim stage.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use unwind_ect::claims::{
    CheckpointInfo, EXEC_ACT_CHECKPOINT, MAX_EXT_DEPTH, check_checkpoint, check_time, is_valid_id,
    normalise,
};
use unwind_ect::config::{TrustConfig, TrustIssuerConfig};
use unwind_ect::jws::{parse_compact, parse_strict_json};
use unwind_ect::{
    EctHeader, Profile, RejectCode, Rejection, TrustStore, VerifiedEct, Verifier, VerifyPolicy,
    is_error_node,
};
use unwind_fuzz::{NOW, assert_rejection, block_on, signing_key};

/// The issuers the fuzz verifier trusts (signed with [`signing_key`]).
const ISSUER_PREFIX: &str = "spiffe://fuzz.example/agent/";

/// Strings worth trying: claim names, `cascade.*` keys, and values near the rules' edges.
const DICT: &[&str] = &[
    "iss",
    "aud",
    "iat",
    "exp",
    "jti",
    "exec_act",
    "wid",
    "sub",
    "inp_hash",
    "out_hash",
    "par",
    "pred",
    "ext",
    "ect_ext",
    "pol",
    "pol_decision",
    "cascade.reversible",
    "cascade.rollback_uri",
    "cascade.ttl",
    "cascade.target",
    "cascade.description",
    "cascade.error",
    "cascade.error_rate",
    "cascade.blast_radius",
    "cascade.affected_agents",
    "cascade.scope",
    "checkpoint",
    "error",
    "step_failed",
    "rejected",
    "approved",
    "https://rollback.example.com/r",
    "http://rollback.example.com/r",
    "https://evil.example/r",
    "spiffe://fuzz.example/agent/a",
    "spiffe://fuzz.example/agent/b",
    "spiffe://unwind.local/coordinator",
    "j1",
    "j2",
    "wf-1",
    "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg",
    "sha256:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "",
    " ",
    "\u{0}",
    "é",
];

#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    Any(String),
}

impl Text {
    fn get(&self) -> String {
        match self {
            Text::Known(i) => DICT[*i as usize % DICT.len()].to_owned(),
            Text::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Val {
    Null,
    Bool(bool),
    Small(i8),
    Time(i16),
    Int(i64),
    Float(f64),
    Str(Text),
    Arr(Vec<Val>),
    Obj(Vec<(Text, Val)>),
}

impl Val {
    fn get(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => json!(b),
            Val::Small(i) => json!(i),
            // Near the fixed "now", where the time rules bite.
            Val::Time(d) => json!(NOW + i64::from(*d)),
            Val::Int(i) => json!(i),
            Val::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Val::Str(t) => Value::String(t.get()),
            Val::Arr(items) => Value::Array(items.iter().map(Val::get).collect()),
            Val::Obj(members) => {
                Value::Object(members.iter().map(|(k, v)| (k.get(), v.get())).collect())
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Set(Text, Val),
    Remove(Text),
    SetExt(Text, Val),
    RemoveExt(Text),
}

#[derive(Arbitrary, Debug)]
struct Edits {
    checkpoint: bool,
    edits: Vec<Edit>,
}

/// A valid -00 claims set; a checkpoint when asked.
fn base(checkpoint: bool) -> Map<String, Value> {
    let mut c = json!({
        "iss": "spiffe://fuzz.example/agent/a",
        "aud": "spiffe://unwind.local/coordinator",
        "iat": NOW - 10,
        "exp": NOW + 600,
        "jti": "j2",
        "wid": "wf-1",
        "exec_act": "tool_call",
        "par": ["j1"],
        "ext": {},
    });
    if checkpoint {
        c["exec_act"] = json!(EXEC_ACT_CHECKPOINT);
        c["ext"] = json!({
            "cascade.reversible": true,
            "cascade.rollback_uri": "https://rollback.example.com/r",
            "cascade.ttl": 3600,
        });
    }
    match c {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn claims_from(data: &[u8]) -> Option<Map<String, Value>> {
    if let Ok(Value::Object(claims)) = parse_strict_json(data) {
        return Some(claims);
    }
    let input = Edits::arbitrary_take_rest(Unstructured::new(data)).ok()?;
    let mut claims = base(input.checkpoint);
    for edit in &input.edits {
        match edit {
            Edit::Set(k, v) => {
                claims.insert(k.get(), v.get());
            }
            Edit::Remove(k) => {
                claims.remove(&k.get());
            }
            Edit::SetExt(k, v) => {
                if let Some(Value::Object(ext)) = claims.get_mut("ext") {
                    ext.insert(k.get(), v.get());
                }
            }
            Edit::RemoveExt(k) => {
                if let Some(Value::Object(ext)) = claims.get_mut("ext") {
                    ext.remove(&k.get());
                }
            }
        }
    }
    Some(claims)
}

/// The same claims under the other revision's names (`par` <-> `pred`, `ext` <-> `ect_ext`).
fn other_draft(claims: &Map<String, Value>) -> Map<String, Value> {
    claims
        .iter()
        .map(|(k, v)| {
            let k = match k.as_str() {
                "par" => "pred",
                "pred" => "par",
                "ext" => "ect_ext",
                "ect_ext" => "ext",
                other => other,
            };
            (k.to_owned(), v.clone())
        })
        .collect()
}

fn header(typ: &str) -> EctHeader {
    EctHeader {
        alg: "EdDSA".into(),
        typ: typ.into(),
        kid: signing_key().kid().into(),
    }
}

/// A trust store for [`ISSUER_PREFIX`] with the fuzz key, and a verifier over it.
fn fuzz_trust() -> &'static (Arc<TrustStore>, Verifier) {
    static TRUST: OnceLock<(Arc<TrustStore>, Verifier)> = OnceLock::new();
    TRUST.get_or_init(|| {
        let path: PathBuf =
            std::env::temp_dir().join(format!("unwind-fuzz-{}.jwks.json", std::process::id()));
        std::fs::write(
            &path,
            serde_json::to_vec(&signing_key().public_jwks()).unwrap(),
        )
        .unwrap();
        let cfg = TrustConfig {
            issuers: vec![TrustIssuerConfig {
                id: format!("{ISSUER_PREFIX}*"),
                jwks_file: Some(path.clone()),
                rollback_hosts: vec!["rollback.example.com".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let trust = Arc::new(TrustStore::from_config(&cfg).unwrap());
        let _ = std::fs::remove_file(&path);
        let policy = VerifyPolicy {
            algorithms: vec![unwind_fuzz_alg()],
            ..VerifyPolicy::default()
        };
        let verifier = Verifier::new(trust.clone(), policy);
        (trust, verifier)
    })
}

fn unwind_fuzz_alg() -> jsonwebtoken::Algorithm {
    signing_key().alg()
}

/// What an accepted token must satisfy, whatever the input.
fn check_accepted(ect: &VerifiedEct, claims: &Map<String, Value>, max_parents: usize) {
    assert!(!ect.iss.is_empty());
    assert!(!ect.aud.is_empty());
    assert!(ect.exp > ect.iat);
    assert!(is_valid_id(&ect.jti), "{:?}", ect.jti);
    let n = ect.exec_act.chars().count();
    assert!((1..=128).contains(&n) && !ect.exec_act.chars().any(char::is_control));
    assert!(ect.parents.len() <= max_parents);
    for (i, p) in ect.parents.iter().enumerate() {
        assert!(is_valid_id(p) && p != &ect.jti);
        assert!(!ect.parents[..i].contains(p), "duplicate parent {p}");
    }
    assert_ne!(ect.wid.as_deref(), Some(""));
    let parents_claim = ect.profile.parents_claim();
    assert!(claims.contains_key(parents_claim));
    assert_eq!(&ect.claims, claims);
    assert!(depth(&Value::Object(ect.ext.clone())) <= MAX_EXT_DEPTH);
    // No text the store cannot hold.
    assert!(
        !serde_json::to_string(&ect.claims)
            .unwrap()
            .contains("\\u0000")
    );
    let _ = is_error_node(&ect.exec_act, &ect.ext);
    if ect.exec_act == EXEC_ACT_CHECKPOINT
        && let Ok(info) = CheckpointInfo::from_ext(&ect.ext)
    {
        let _ = info.expires_at(ect.iat);
        assert!(ect.checkpoint().is_some());
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What the claim stage says of a token with these (decoded) claims, in the verifier's order.
fn claim_stage(
    token: &str,
    typ: &str,
    claims: Map<String, Value>,
    policy: &VerifyPolicy,
    trust: &TrustStore,
) -> Result<VerifiedEct, Rejection> {
    let ect = normalise(token, header(typ), claims, policy.max_parents)?;
    check_time(&ect, NOW, policy.clock_skew_s)?;
    check_checkpoint(&ect, trust)?;
    Ok(ect)
}

fn same_outcome(a: &Result<VerifiedEct, Rejection>, b: &Result<VerifiedEct, Rejection>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => a.code == b.code,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(claims) = claims_from(data) else {
        return;
    };
    let (trust, verifier) = fuzz_trust();
    let policy = verifier.policy();
    let max_parents = policy.max_parents;

    let typ = Profile::Draft00.typ();
    let first = normalise("t.o.k", header(typ), claims.clone(), max_parents);
    match &first {
        Err(r) => assert_rejection(
            r,
            &[RejectCode::InvalidClaims, RejectCode::InvalidCheckpoint],
        ),
        Ok(ect) => {
            check_accepted(ect, &claims, max_parents);
            if let Err(r) = check_time(ect, NOW, policy.clock_skew_s) {
                assert_rejection(&r, &[RejectCode::Expired, RejectCode::NotYetValid]);
            }
            if let Err(r) = check_checkpoint(ect, trust) {
                assert_rejection(
                    &r,
                    &[
                        RejectCode::InvalidCheckpoint,
                        RejectCode::RollbackUriNotAllowed,
                        RejectCode::UnknownIssuer,
                    ],
                );
            }
        }
    }

    // Both revisions: renaming the claims changes the profile and nothing else.
    let swapped = other_draft(&claims);
    let second = normalise("t.o.k", header(typ), swapped.clone(), max_parents);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            let flipped = match a.profile {
                Profile::Draft00 => Profile::Draft01,
                Profile::Draft01 => Profile::Draft00,
            };
            assert_eq!(b.profile, flipped);
            assert_eq!(b.claims, swapped);
            let mut b = b.clone();
            b.profile = a.profile;
            b.claims = a.claims.clone();
            assert_eq!(&b, a);
        }
        (Err(a), Err(b)) => assert_eq!(a.code, b.code, "{} / {}", a.detail, b.detail),
        (a, b) => panic!("the revisions disagree: {a:?} / {b:?}"),
    }

    // Signed and verified, the token is judged as the claim stage judges its claims.
    let profile = if claims.contains_key("pred") {
        Profile::Draft01
    } else {
        Profile::Draft00
    };
    let Ok(token) = signing_key().sign_ect(&claims, profile) else {
        return;
    };
    let verified = block_on(verifier.verify(&token, NOW));
    let expected = match parse_compact(&token, policy.max_token_bytes) {
        Err(r) => Err(r),
        Ok(parsed) => match parsed.claims.get("iss") {
            Some(Value::String(iss)) if !iss.is_empty() && !trust.knows_issuer(iss) => {
                Err(Rejection::new(RejectCode::UnknownIssuer, "-"))
            }
            _ => claim_stage(&token, profile.typ(), parsed.claims, policy, trust),
        },
    };
    if let Err(r) = &verified {
        assert_rejection(r, &[]);
    }
    assert!(
        same_outcome(&verified, &expected),
        "verifier: {verified:?}\nclaim stage: {expected:?}"
    );
});
