//! Claim rules of the ECT profile (spec/ect.md "Claims"), the cascade draft's `cascade.*`
//! checkpoint rules, and the one error-node predicate shared by detectors and planners.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::trust::TrustStore;
use super::{EctHeader, Profile, RejectCode, Rejection, VerifiedEct, sha256_hex};

/// `exec_act` of a checkpoint ECT.
pub const EXEC_ACT_CHECKPOINT: &str = "checkpoint";

/// The fields of a `checkpoint` ECT's `ext` that rollbacks need.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub reversible: bool,
    pub rollback_uri: Option<String>,
    /// `cascade.ttl` in seconds; the checkpoint expires at `iat + ttl`.
    pub ttl_s: Option<f64>,
    pub target: Option<String>,
    pub description: Option<String>,
}

impl CheckpointInfo {
    /// Reads and type-checks the checkpoint keys of an `ext` object
    /// (`invalid_checkpoint` when `cascade.reversible` is missing, a reversible checkpoint has
    /// no `cascade.rollback_uri`, or `cascade.ttl` is not a positive number).
    pub fn from_ext(ext: &Map<String, Value>) -> Result<Self, Rejection> {
        let invalid = |detail: &str| Rejection::new(RejectCode::InvalidCheckpoint, detail);
        let reversible = match ext.get("cascade.reversible") {
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("cascade.reversible must be a boolean")),
            None => {
                return Err(invalid(
                    "a checkpoint needs ext cascade.reversible (boolean)",
                ));
            }
        };
        let rollback_uri = match ext.get("cascade.rollback_uri") {
            Some(Value::String(uri)) if !uri.is_empty() => Some(uri.clone()),
            Some(_) => return Err(invalid("cascade.rollback_uri must be a non-empty string")),
            None if reversible => {
                return Err(invalid(
                    "a reversible checkpoint needs ext cascade.rollback_uri",
                ));
            }
            None => None,
        };
        let ttl_s = match ext.get("cascade.ttl") {
            Some(Value::Number(n)) => match n.as_f64() {
                Some(ttl) if ttl > 0.0 && ttl.is_finite() => Some(ttl),
                _ => return Err(invalid("cascade.ttl must be a positive number of seconds")),
            },
            Some(_) => return Err(invalid("cascade.ttl must be a positive number of seconds")),
            None => None,
        };
        let text = |key: &str| -> Result<Option<String>, Rejection> {
            match ext.get(key) {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(&format!("{key} must be a string"))),
                None => Ok(None),
            }
        };
        Ok(Self {
            reversible,
            rollback_uri,
            ttl_s,
            target: text("cascade.target")?,
            description: text("cascade.description")?,
        })
    }

    /// Unix seconds at which the checkpoint expires, if it has a TTL.
    pub fn expires_at(&self, iat: i64) -> Option<i64> {
        self.ttl_s.map(|ttl| iat.saturating_add(ttl.ceil() as i64))
    }
}

/// The error-node predicate (spec/ect.md), and the only one: detectors, planners and anything
/// else asking "did this step fail?" must call it rather than re-derive the rule.
///
/// True when `exec_act` is `error` or ends in `_failed`, or `ext` has `cascade.error: true` or
/// `pol_decision: "rejected"` (normalisation moves -00's top-level `pol_decision` into `ext`,
/// so one lookup covers both drafts).
pub fn is_error_node(exec_act: &str, ext: &Map<String, Value>) -> bool {
    exec_act == "error"
        || exec_act.ends_with("_failed")
        || ext.get("cascade.error") == Some(&Value::Bool(true))
        || ext.get("pol_decision").and_then(Value::as_str) == Some("rejected")
}

/// Largest serialized `ext` object, in bytes.
pub const MAX_EXT_BYTES: usize = 4096;
/// Deepest `ext` nesting; the `ext` object itself is depth 1.
pub const MAX_EXT_DEPTH: usize = 5;
/// Longest `jti` and `exec_act`.
pub const MAX_ID_CHARS: usize = 128;

/// JSON type of a `cascade.*` key, from the cascade draft's "ECT Integration" table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CascadeType {
    Number,
    String,
    Boolean,
    Array,
}

/// The `cascade.*` ext keys and their types (the seed table, plus `cascade.total_cooldown_s`
/// from its circuit-breaker-close example). Keys not listed are kept unchecked.
const CASCADE_KEYS: &[(&str, CascadeType)] = &[
    ("cascade.downstream_agent", CascadeType::String),
    ("cascade.error_rate", CascadeType::Number),
    ("cascade.window_s", CascadeType::Number),
    ("cascade.cooldown_s", CascadeType::Number),
    ("cascade.total_cooldown_s", CascadeType::Number),
    ("cascade.reversible", CascadeType::Boolean),
    ("cascade.rollback_uri", CascadeType::String),
    ("cascade.target", CascadeType::String),
    ("cascade.ttl", CascadeType::Number),
    ("cascade.rollback_id", CascadeType::String),
    ("cascade.checkpoint_id", CascadeType::String),
    ("cascade.scope", CascadeType::String),
    ("cascade.status", CascadeType::String),
    ("cascade.reason", CascadeType::String),
    ("cascade.pattern", CascadeType::String),
    ("cascade.affected_agents", CascadeType::Number),
    ("cascade.blast_radius", CascadeType::Array),
    ("cascade.cascaded", CascadeType::Array),
    ("cascade.failed_agents", CascadeType::Array),
    ("cascade.state_hash_before", CascadeType::String),
    ("cascade.state_hash_after", CascadeType::String),
    ("cascade.description", CascadeType::String),
];

/// Keys a checkpoint defines; an ill-typed one in a checkpoint is `invalid_checkpoint`.
const CHECKPOINT_KEYS: &[&str] = &[
    "cascade.reversible",
    "cascade.rollback_uri",
    "cascade.target",
    "cascade.ttl",
    "cascade.description",
];

fn invalid_claims(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectCode::InvalidClaims, detail)
}

/// Checks the claims' presence, types and formats and normalises them (one parent list, one
/// `ext`, -00's `pol`/`pol_decision` moved into `ext`). Time and checkpoint rules are separate
/// ([`check_time`], [`check_checkpoint`]) so an import can record an expired token.
///
/// `profile` is taken from the parent claim's name (`par`: -00, `pred`: -01), the one claim
/// every token must carry; the `typ` spelling is accepted independently of it.
pub fn normalise(
    token: &str,
    header: EctHeader,
    claims: Map<String, Value>,
    max_parents: usize,
) -> Result<VerifiedEct, Rejection> {
    if claims.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        // Text with U+0000 cannot be stored faithfully (PostgreSQL refuses it in text and JSON).
        return Err(invalid_claims(
            "claims must not contain the character U+0000",
        ));
    }
    let iss = required_string(&claims, "iss")?;
    if iss.is_empty() {
        return Err(invalid_claims("iss must not be empty"));
    }
    let aud = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid_claims("aud must be a string or an array of strings"))?,
        Some(Value::Array(_)) => return Err(invalid_claims("aud must not be an empty array")),
        Some(_) => {
            return Err(invalid_claims(
                "aud must be a string or an array of strings",
            ));
        }
        None => return Err(invalid_claims("aud is required")),
    };
    let iat = required_int(&claims, "iat")?;
    let exp = required_int(&claims, "exp")?;
    if exp <= iat {
        return Err(invalid_claims("exp must be after iat"));
    }
    let jti = required_string(&claims, "jti")?;
    if !is_valid_id(&jti) {
        return Err(invalid_claims(
            "jti must be 1 to 128 printable ASCII characters without spaces",
        ));
    }
    let exec_act = required_string(&claims, "exec_act")?;
    let exec_act_chars = exec_act.chars().count();
    if exec_act_chars == 0
        || exec_act_chars > MAX_ID_CHARS
        || exec_act.chars().any(char::is_control)
    {
        return Err(invalid_claims(
            "exec_act must be 1 to 128 characters, no control characters",
        ));
    }
    let wid = optional_string(&claims, "wid")?;
    if wid.as_deref() == Some("") {
        return Err(invalid_claims("wid must not be empty"));
    }
    let sub = optional_string(&claims, "sub")?;
    let inp_hash = optional_hash(&claims, "inp_hash")?;
    let out_hash = optional_hash(&claims, "out_hash")?;

    let (profile, parents_value) = match (claims.get("par"), claims.get("pred")) {
        (Some(_), Some(_)) => return Err(invalid_claims("a token carries par or pred, not both")),
        (Some(p), None) => (Profile::Draft00, p),
        (None, Some(p)) => (Profile::Draft01, p),
        (None, None) => return Err(invalid_claims("the parent list (par or pred) is required")),
    };
    let parents = parse_parents(parents_value, &jti, max_parents)?;

    let mut ext = match (claims.get("ext"), claims.get("ect_ext")) {
        (Some(_), Some(_)) => {
            return Err(invalid_claims("a token carries ext or ect_ext, not both"));
        }
        (Some(v), None) | (None, Some(v)) => check_ext(v)?.clone(),
        (None, None) => Map::new(),
    };
    match (claims.get("pol"), claims.get("pol_decision")) {
        (None, None) => {}
        (Some(Value::String(pol)), Some(Value::String(decision))) => {
            if ext.contains_key("pol") || ext.contains_key("pol_decision") {
                return Err(invalid_claims(
                    "pol/pol_decision given both top-level and in ext",
                ));
            }
            ext.insert("pol".into(), Value::String(pol.clone()));
            ext.insert("pol_decision".into(), Value::String(decision.clone()));
        }
        (Some(_), Some(_)) => return Err(invalid_claims("pol and pol_decision must be strings")),
        _ => return Err(invalid_claims("pol and pol_decision come together")),
    }
    check_cascade_types(&ext, exec_act == EXEC_ACT_CHECKPOINT)?;

    Ok(VerifiedEct {
        content_hash: sha256_hex(token.as_bytes()),
        token: token.to_owned(),
        header,
        profile,
        jti,
        iss,
        sub,
        aud,
        iat,
        exp,
        wid,
        exec_act,
        parents,
        ext,
        inp_hash,
        out_hash,
        claims,
    })
}

/// `iat` later than `now + skew` is `not_yet_valid`; `exp` at or before `now - skew` is
/// `expired`.
pub fn check_time(ect: &VerifiedEct, now: i64, skew: i64) -> Result<(), Rejection> {
    if ect.iat > now.saturating_add(skew) {
        return Err(Rejection::new(
            RejectCode::NotYetValid,
            format!(
                "iat {} is in the future (now {now}, skew {skew} s)",
                ect.iat
            ),
        ));
    }
    if ect.exp <= now.saturating_sub(skew) {
        return Err(Rejection::new(
            RejectCode::Expired,
            format!("expired at {} (now {now}, skew {skew} s)", ect.exp),
        ));
    }
    Ok(())
}

/// A `checkpoint` needs a `wid`, valid checkpoint keys, and a `rollback_uri` its issuer may
/// name (the SSRF guard: Unwind will call that URI later).
pub fn check_checkpoint(ect: &VerifiedEct, trust: &TrustStore) -> Result<(), Rejection> {
    if ect.exec_act != EXEC_ACT_CHECKPOINT {
        return Ok(());
    }
    if ect.wid.is_none() {
        return Err(Rejection::new(
            RejectCode::InvalidCheckpoint,
            "a checkpoint needs a wid",
        ));
    }
    let info = CheckpointInfo::from_ext(&ect.ext)?;
    if let Some(uri) = &info.rollback_uri {
        crate::trust::parse_rollback_uri(uri)
            .map_err(|why| Rejection::new(RejectCode::InvalidCheckpoint, why))?;
        trust.rollback_uri_allowed(&ect.iss, uri)?;
    }
    Ok(())
}

fn required_string(claims: &Map<String, Value>, name: &str) -> Result<String, Rejection> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid_claims(format!("{name} must be a string"))),
        None => Err(invalid_claims(format!("{name} is required"))),
    }
}

fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, Rejection> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid_claims(format!("{name} must be a string"))),
        None => Ok(None),
    }
}

fn required_int(claims: &Map<String, Value>, name: &str) -> Result<i64, Rejection> {
    match claims.get(name) {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| invalid_claims(format!("{name} must be an integer"))),
        Some(_) => Err(invalid_claims(format!("{name} must be an integer"))),
        None => Err(invalid_claims(format!("{name} is required"))),
    }
}

/// `jti` (and parent ids): 1..=128 printable ASCII characters, 0x21..=0x7E. Space is left out
/// so ids survive being written in paths, headers and logs unchanged.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_CHARS && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn parse_parents(value: &Value, jti: &str, max_parents: usize) -> Result<Vec<String>, Rejection> {
    let Value::Array(items) = value else {
        return Err(invalid_claims(
            "the parent list must be an array of strings",
        ));
    };
    if items.len() > max_parents {
        return Err(invalid_claims(format!(
            "{} parents, more than the limit of {max_parents}",
            items.len()
        )));
    }
    let mut parents: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(parent) = item else {
            return Err(invalid_claims(
                "the parent list must be an array of strings",
            ));
        };
        if !is_valid_id(parent) {
            return Err(invalid_claims("a parent id is not a valid jti"));
        }
        if parent == jti {
            return Err(invalid_claims("a token cannot be its own parent"));
        }
        if parents.contains(parent) {
            return Err(invalid_claims(format!("parent `{parent}` is listed twice")));
        }
        parents.push(parent.clone());
    }
    Ok(parents)
}

/// `inp_hash`/`out_hash`: base64url SHA-256 (43 chars, no padding), or the cascade draft's
/// `sha256:<64 hex | 43 base64url>`.
fn optional_hash(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, Rejection> {
    let Some(value) = optional_string(claims, name)? else {
        return Ok(None);
    };
    if is_valid_hash(&value) {
        Ok(Some(value))
    } else {
        Err(invalid_claims(format!(
            "{name} must be a base64url SHA-256 (43 chars) or sha256:<hex or base64url>"
        )))
    }
}

fn is_valid_hash(value: &str) -> bool {
    let is_b64_sha256 =
        |s: &str| s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|b| b.len() == 32);
    match value.strip_prefix("sha256:") {
        Some(rest) => {
            (rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit())) || is_b64_sha256(rest)
        }
        None => is_b64_sha256(value),
    }
}

/// `ext`/`ect_ext`: an object, serialized at most 4096 bytes, nested at most 5 deep.
fn check_ext(value: &Value) -> Result<&Map<String, Value>, Rejection> {
    let Value::Object(map) = value else {
        return Err(invalid_claims("ext must be an object"));
    };
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, value)
        .map_err(|_| invalid_claims("ext cannot be serialized"))?;
    if counter.0 > MAX_EXT_BYTES {
        return Err(invalid_claims(format!(
            "ext is {} bytes serialized, more than {MAX_EXT_BYTES}",
            counter.0
        )));
    }
    if depth(value) > MAX_EXT_DEPTH {
        return Err(invalid_claims(format!(
            "ext is nested deeper than {MAX_EXT_DEPTH} levels"
        )));
    }
    Ok(map)
}

/// Nesting depth of a JSON value: scalars 0, each object or array one more than its deepest
/// member.
fn depth(value: &Value) -> usize {
    match value {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Counts bytes written, to size the serialized `ext` without building the string.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn check_cascade_types(ext: &Map<String, Value>, is_checkpoint: bool) -> Result<(), Rejection> {
    for (key, want) in CASCADE_KEYS {
        let Some(value) = ext.get(*key) else { continue };
        let ok = match want {
            CascadeType::Number => value.is_number(),
            CascadeType::String => value.is_string(),
            CascadeType::Boolean => value.is_boolean(),
            CascadeType::Array => value.is_array(),
        };
        if !ok {
            let code = if is_checkpoint && CHECKPOINT_KEYS.contains(key) {
                RejectCode::InvalidCheckpoint
            } else {
                RejectCode::InvalidClaims
            };
            let kind = format!("{want:?}").to_lowercase();
            return Err(Rejection::new(code, format!("ext {key} must be a {kind}")));
        }
    }
    Ok(())
}

/// True when a string anywhere in `v` (keys included) contains U+0000.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{NOW, claims_with, obj};
    use serde_json::json;

    fn header() -> EctHeader {
        EctHeader {
            alg: "ES256".into(),
            typ: "exec+jwt".into(),
            kid: "k".into(),
        }
    }

    #[test]
    fn hash_formats() {
        for ok in [
            "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg",
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU",
            "sha256:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ] {
            assert!(is_valid_hash(ok), "{ok}");
        }
        for bad in [
            "",
            "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg=",
            "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg",
            "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgh",
            "sha256:",
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0",
            "sha256:zz86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "sha512:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        ] {
            assert!(!is_valid_hash(bad), "{bad}");
        }
    }

    #[test]
    fn ext_depth_counts_the_ext_object() {
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": {"b": {"c": {"d": {}}}}})), 5);
        assert_eq!(depth(&json!({"a": [1, {"b": []}]})), 4);
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("a") && is_valid_id(&"~".repeat(128)));
        for bad in ["", " ", "a b", "\u{7f}", "é", &"a".repeat(129)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn normalise_fills_every_field() {
        let c = claims_with(
            "j",
            json!({"sub": "s", "aud": ["a", "b"], "par": ["p"], "ext": {"k": 1},
                   "inp_hash": "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg"}),
        );
        let ect = normalise("t.o.k", header(), c.clone(), 100).unwrap();
        assert_eq!(ect.token, "t.o.k");
        assert_eq!(ect.content_hash, sha256_hex(b"t.o.k"));
        assert_eq!(ect.sub.as_deref(), Some("s"));
        assert_eq!(ect.aud, vec!["a", "b"]);
        assert_eq!(ect.parents, vec!["p"]);
        assert_eq!(ect.ext, obj(json!({"k": 1})));
        assert_eq!(
            ect.inp_hash.as_deref(),
            Some("n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg")
        );
        assert_eq!(ect.out_hash, None);
        assert_eq!((ect.iat, ect.exp), (NOW - 10, NOW + 600));
        assert_eq!(ect.claims, c);
        assert_eq!(ect.profile, Profile::Draft00);
    }

    #[test]
    fn time_boundaries() {
        let ect = normalise(
            "t",
            header(),
            claims_with("j", json!({"iat": NOW, "exp": NOW + 1})),
            100,
        )
        .unwrap();
        assert!(check_time(&ect, NOW, 0).is_ok());
        assert_eq!(
            check_time(&ect, NOW + 1, 0).unwrap_err().code,
            RejectCode::Expired
        );
        assert!(check_time(&ect, NOW + 1, 1).is_ok());
        assert_eq!(
            check_time(&ect, NOW - 1, 0).unwrap_err().code,
            RejectCode::NotYetValid
        );
        assert!(check_time(&ect, NOW - 1, 1).is_ok());
    }

    #[test]
    fn cascade_key_types() {
        let ok = obj(
            json!({"cascade.error_rate": 0.5, "cascade.scope": "sub_dag",
                            "cascade.failed_agents": [], "cascade.unlisted": {"x": 1}}),
        );
        assert!(check_cascade_types(&ok, false).is_ok());
        let bad = obj(json!({"cascade.ttl": "60"}));
        assert_eq!(
            check_cascade_types(&bad, false).unwrap_err().code,
            RejectCode::InvalidClaims
        );
        assert_eq!(
            check_cascade_types(&bad, true).unwrap_err().code,
            RejectCode::InvalidCheckpoint
        );
        let bad = obj(json!({"cascade.affected_agents": ["a"]}));
        assert_eq!(
            check_cascade_types(&bad, true).unwrap_err().code,
            RejectCode::InvalidClaims
        );
    }

    #[test]
    fn checkpoint_info() {
        let info = CheckpointInfo::from_ext(&obj(json!({
            "cascade.reversible": true, "cascade.rollback_uri": "https://h/r", "cascade.ttl": 1.5
        })))
        .unwrap();
        assert_eq!(info.expires_at(100), Some(102));
        let err = CheckpointInfo::from_ext(&obj(json!({"cascade.reversible": true}))).unwrap_err();
        assert_eq!(err.code, RejectCode::InvalidCheckpoint);
        assert!(CheckpointInfo::from_ext(&obj(json!({}))).is_err());
    }

    #[test]
    fn error_predicate() {
        let none = Map::new();
        assert!(is_error_node("error", &none));
        assert!(is_error_node("payment_failed", &none));
        assert!(!is_error_node("failed_payment", &none));
        assert!(is_error_node("x", &obj(json!({"cascade.error": true}))));
        assert!(!is_error_node("x", &obj(json!({"cascade.error": "true"}))));
        assert!(is_error_node(
            "x",
            &obj(json!({"pol_decision": "rejected"}))
        ));
        assert!(!is_error_node(
            "x",
            &obj(json!({"pol_decision": "approved"}))
        ));
    }
}
