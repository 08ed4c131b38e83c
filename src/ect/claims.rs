//! Claim rules of the ECT profile (spec/ect.md "Claims"), the cascade draft's `cascade.*`
//! checkpoint rules, and the one error-node predicate shared by detectors and planners.

use serde_json::{Map, Value};

use super::{RejectCode, Rejection};

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

/// The error-node predicate (spec/ect.md): `exec_act` is `error` or ends in `_failed`, or `ext`
/// has `cascade.error: true` or `pol_decision: "rejected"` (after normalisation moved -00's
/// top-level `pol_decision` into `ext`).
pub fn is_error_node(exec_act: &str, ext: &Map<String, Value>) -> bool {
    exec_act == "error"
        || exec_act.ends_with("_failed")
        || ext.get("cascade.error") == Some(&Value::Bool(true))
        || ext.get("pol_decision").and_then(Value::as_str) == Some("rejected")
}
