//! The ECTs an agent signs: checkpoints, actions, errors and rollback results.
//!
//! Claim names follow the configured [`Profile`] (-00 `par`/`ext` by default). Every token is
//! addressed (`aud`) to the coordinator, which records it in its ledger.

use serde_json::{Map, Value, json};
use unwind_ect::{Profile, SigningKey};

use crate::store::{StoredCheckpoint, now_unix};

/// Default lifetime of the action, error and result ECTs an agent signs: one day, enough for
/// the coordinator to record them.
pub const DEFAULT_EVIDENCE_TTL_S: i64 = 24 * 3600;

/// Longest lifetime of the error ECT that answers a refused coordinator call: it is recorded at
/// once or not at all, so a long-lived one would only be a token to replay.
pub const MAX_REFUSAL_TTL_S: i64 = 300;

/// `exec_act` of the error ECT returned when a verified rollback request cannot be carried out
/// (an expired checkpoint, a snapshot that fails verification).
pub const EXEC_ACT_VERIFICATION_FAILED: &str = "rollback_verification_failed";

/// Signing failed (the key could not sign, or the claims could not be serialised).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign ECT: {0}")]
pub struct SignError(pub String);

/// Signs ECTs as one agent. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EctSigner {
    iss: String,
    key: SigningKey,
    aud: Vec<String>,
    profile: Profile,
    evidence_ttl_s: i64,
    clock_offset_s: i64,
}

impl EctSigner {
    /// A signer for agent `iss` whose tokens are addressed to `aud` (the coordinator).
    pub fn new(iss: impl Into<String>, key: SigningKey, aud: impl Into<String>) -> Self {
        Self {
            iss: iss.into(),
            key,
            aud: vec![aud.into()],
            profile: Profile::Draft00,
            evidence_ttl_s: DEFAULT_EVIDENCE_TTL_S,
            clock_offset_s: 0,
        }
    }

    /// Uses the names of another draft revision.
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Changes the lifetime of action, error and result ECTs (seconds, at least 1).
    pub fn with_evidence_ttl(mut self, ttl_s: i64) -> Self {
        self.evidence_ttl_s = ttl_s.max(1);
        self
    }

    /// Test hook: runs this signer's clock `offset_s` seconds ahead (negative: behind) of the
    /// system clock, to reproduce clock skew between machines. Leave it unset in production.
    pub fn with_clock_offset(mut self, offset_s: i64) -> Self {
        self.clock_offset_s = offset_s;
        self
    }

    /// Now (Unix seconds) by this signer's clock: the system clock plus any test offset.
    pub fn now(&self) -> i64 {
        now_unix().saturating_add(self.clock_offset_s)
    }

    pub fn iss(&self) -> &str {
        &self.iss
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The `checkpoint` ECT of a stored checkpoint: `jti` = checkpoint id, `iat` = its creation
    /// time, `exp` = its expiry, `out_hash` of the snapshot, and `ext` with
    /// `cascade.reversible`, `cascade.ttl`, `cascade.target` and (reversible only)
    /// `cascade.rollback_uri`. The snapshot itself never appears in a claim.
    pub fn checkpoint_ect(
        &self,
        checkpoint: &StoredCheckpoint,
        wid: &str,
        parents: &[String],
        rollback_uri: Option<&str>,
    ) -> Result<String, SignError> {
        let mut ext = Map::new();
        ext.insert(
            "cascade.reversible".into(),
            Value::Bool(checkpoint.reversible),
        );
        ext.insert("cascade.ttl".into(), json!(checkpoint.ttl_s));
        if let Some(target) = &checkpoint.target {
            ext.insert("cascade.target".into(), json!(target));
        }
        if let Some(uri) = rollback_uri {
            ext.insert("cascade.rollback_uri".into(), json!(uri));
        }
        let mut claims = self.base(
            &checkpoint.jti,
            "checkpoint",
            Some(wid),
            parents,
            ext,
            checkpoint.created_at,
            checkpoint.expires_at,
        );
        claims.insert("out_hash".into(), json!(checkpoint.out_hash));
        self.sign(&claims)
    }

    /// An ECT recording an action of this agent (e.g. the consequential action a checkpoint
    /// guards, which lists the checkpoint in its parents).
    pub fn action_ect(
        &self,
        exec_act: &str,
        wid: Option<&str>,
        parents: &[String],
        ext: Map<String, Value>,
    ) -> Result<String, SignError> {
        let now = self.now();
        let claims = self.base(
            &new_jti(),
            exec_act,
            wid,
            parents,
            ext,
            now,
            now + self.evidence_ttl_s,
        );
        self.sign(&claims)
    }

    /// An error ECT: `ext` carries `cascade.error: true` and `cascade.reason`, plus `extra`.
    pub fn error_ect(
        &self,
        exec_act: &str,
        reason: &str,
        wid: Option<&str>,
        parents: &[String],
        extra: Map<String, Value>,
    ) -> Result<String, SignError> {
        let mut ext = extra;
        ext.insert("cascade.error".into(), Value::Bool(true));
        ext.insert("cascade.reason".into(), json!(truncate(reason, 512)));
        self.action_ect(exec_act, wid, parents, ext)
    }

    /// The error ECT answering a verified coordinator call that is refused: like
    /// [`EctSigner::error_ect`], with `exp` at most [`MAX_REFUSAL_TTL_S`] after `iat`.
    pub fn refusal_ect(
        &self,
        reason: &str,
        wid: Option<&str>,
        parents: &[String],
        extra: Map<String, Value>,
    ) -> Result<String, SignError> {
        let brief = Self {
            evidence_ttl_s: self.evidence_ttl_s.min(MAX_REFUSAL_TTL_S),
            ..self.clone()
        };
        brief.error_ect(EXEC_ACT_VERIFICATION_FAILED, reason, wid, parents, extra)
    }

    /// The agent's record of an executed rollback: `rollback_complete`, or `compensate` when
    /// the handler compensated; `par` = [checkpoint id].
    pub fn rollback_result_ect(&self, result: &RollbackResult<'_>) -> Result<String, SignError> {
        let exec_act = if result.status == "compensated" {
            "compensate"
        } else {
            "rollback_complete"
        };
        let mut ext = Map::new();
        ext.insert("cascade.rollback_id".into(), json!(result.rollback_id));
        ext.insert("cascade.checkpoint_id".into(), json!(result.checkpoint_id));
        ext.insert("cascade.status".into(), json!(result.status));
        if let Some(h) = result.state_hash_before {
            ext.insert("cascade.state_hash_before".into(), json!(h));
        }
        if let Some(h) = result.state_hash_after {
            ext.insert("cascade.state_hash_after".into(), json!(h));
        }
        self.action_ect(
            exec_act,
            result.wid,
            &[result.checkpoint_id.to_owned()],
            ext,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn base(
        &self,
        jti: &str,
        exec_act: &str,
        wid: Option<&str>,
        parents: &[String],
        ext: Map<String, Value>,
        iat: i64,
        exp: i64,
    ) -> Map<String, Value> {
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.iss));
        claims.insert("aud".into(), json!(self.aud));
        claims.insert("iat".into(), json!(iat));
        claims.insert("exp".into(), json!(exp));
        claims.insert("jti".into(), json!(jti));
        if let Some(wid) = wid {
            claims.insert("wid".into(), json!(wid));
        }
        claims.insert("exec_act".into(), json!(exec_act));
        claims.insert(self.profile.parents_claim().into(), json!(parents));
        if !ext.is_empty() {
            claims.insert(self.profile.ext_claim().into(), Value::Object(ext));
        }
        claims
    }

    fn sign(&self, claims: &Map<String, Value>) -> Result<String, SignError> {
        self.key
            .sign_ect(claims, self.profile)
            .map_err(|e| SignError(e.to_string()))
    }
}

/// What [`EctSigner::rollback_result_ect`] records.
#[derive(Debug, Clone, Copy)]
pub struct RollbackResult<'a> {
    pub rollback_id: &'a str,
    pub checkpoint_id: &'a str,
    pub wid: Option<&'a str>,
    /// `completed`, `compensated`, `failed` or `escalated`.
    pub status: &'a str,
    pub state_hash_before: Option<&'a str>,
    pub state_hash_after: Option<&'a str>,
}

/// A fresh token id.
pub fn new_jti() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use unwind_ect::KeyAlg;

    #[test]
    fn a_clock_offset_moves_the_times_it_signs() {
        let key = SigningKey::generate(KeyAlg::ES256).unwrap();
        let signer = EctSigner::new("spiffe://example.com/agent/a", key, "spiffe://c")
            .with_evidence_ttl(60)
            .with_clock_offset(-120);
        let before = now_unix();
        let token = signer.action_ect("act", None, &[], Map::new()).unwrap();
        let (_, claims) = unwind_ect::jws::decode_unverified(&token).unwrap();
        let iat = claims["iat"].as_i64().unwrap();
        assert!((before - 120..=now_unix() - 120).contains(&iat), "{claims}");
        assert_eq!(claims["exp"].as_i64().unwrap(), iat + 60);
        assert!((before - 120..=now_unix() - 120).contains(&signer.now()));
    }
}
