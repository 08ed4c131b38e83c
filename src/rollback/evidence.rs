//! Signed evidence of a rollback (design.md §8, api.md "Signed records Unwind emits"):
//! `rollback_start`, sent to every agent as the `Execution-Context` of its calls, and
//! `rollback_complete`, signed once when the rollback reaches a terminal state. Both are ECTs
//! of the rollback's workflow, signed with the coordinator's key and recorded in the ledger.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::model::{RollbackRecord, StepRecord};
use crate::ect::{KeyError, Profile, SigningKey};

/// A signed evidence token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub jti: String,
    pub token: String,
}

/// Signs the coordinator's rollback evidence.
#[derive(Clone)]
pub struct EvidenceSigner {
    key: Arc<SigningKey>,
    coordinator_id: String,
    profile: Profile,
    ttl_s: i64,
}

impl EvidenceSigner {
    pub fn new(key: Arc<SigningKey>, coordinator_id: &str, profile: Profile, ttl_s: u64) -> Self {
        Self {
            key,
            coordinator_id: coordinator_id.to_string(),
            profile,
            ttl_s: i64::try_from(ttl_s).unwrap_or(i64::MAX),
        }
    }

    /// `rollback_start`: `par` is the trigger (or the checkpoint), `aud` the coordinator and
    /// every agent with a step, `exp` the evidence lifetime (a rollback still running then is
    /// failed).
    pub fn rollback_start(
        &self,
        rollback: &RollbackRecord,
        now: i64,
    ) -> Result<Evidence, KeyError> {
        let mut aud = vec![self.coordinator_id.clone()];
        aud.extend(rollback.plan.agents());
        aud.dedup();
        let parent = rollback
            .trigger_ect
            .clone()
            .unwrap_or_else(|| rollback.checkpoint_id.clone());
        let mut ext = Map::new();
        ext.insert("cascade.rollback_id".into(), json!(rollback.rollback_id));
        ext.insert(
            "cascade.checkpoint_id".into(),
            json!(rollback.checkpoint_id),
        );
        ext.insert("cascade.scope".into(), json!(rollback.scope.as_str()));
        if let Some(reason) = &rollback.reason {
            ext.insert("cascade.reason".into(), json!(reason));
        }
        self.sign("rollback_start", &rollback.wid, aud, vec![parent], ext, now)
    }

    /// `rollback_complete`: `par` is the rollback's `rollback_start`; `cascade.status` is the
    /// terminal state, `cascade.cascaded` one entry per step, `cascade.failed_agents` the agents
    /// whose checkpoints were not undone.
    pub fn rollback_complete(
        &self,
        rollback: &RollbackRecord,
        steps: &[StepRecord],
        start_jti: &str,
        now: i64,
    ) -> Result<Evidence, KeyError> {
        let cascaded: Vec<Value> = steps
            .iter()
            .map(|s| {
                let mut entry = json!({
                    "checkpoint_id": s.checkpoint_id,
                    "agent": s.agent,
                    "prepare_status": s.prepare_status,
                    "execute_status": s.execute_status,
                });
                for key in ["state_hash_before", "state_hash_after"] {
                    if let Some(v) = s
                        .response
                        .as_ref()
                        .and_then(|r| r.get(key))
                        .filter(|v| v.is_string())
                    {
                        entry[key] = v.clone();
                    }
                }
                if let Some(from) = &s.reused_from {
                    entry["reused_from"] = json!(from);
                }
                entry
            })
            .collect();
        let mut ext = Map::new();
        ext.insert("cascade.rollback_id".into(), json!(rollback.rollback_id));
        ext.insert(
            "cascade.checkpoint_id".into(),
            json!(rollback.checkpoint_id),
        );
        ext.insert("cascade.scope".into(), json!(rollback.scope.as_str()));
        ext.insert("cascade.status".into(), json!(rollback.status.as_str()));
        ext.insert("cascade.cascaded".into(), Value::Array(cascaded));
        ext.insert(
            "cascade.failed_agents".into(),
            json!(rollback.failed_agents),
        );
        let aud = vec![self.coordinator_id.clone()];
        self.sign(
            "rollback_complete",
            &rollback.wid,
            aud,
            vec![start_jti.to_string()],
            ext,
            now,
        )
    }

    fn sign(
        &self,
        exec_act: &str,
        wid: &str,
        aud: Vec<String>,
        parents: Vec<String>,
        ext: Map<String, Value>,
        now: i64,
    ) -> Result<Evidence, KeyError> {
        let jti = uuid::Uuid::new_v4().to_string();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.coordinator_id));
        claims.insert("aud".into(), json!(aud));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now.saturating_add(self.ttl_s)));
        claims.insert("jti".into(), json!(jti));
        claims.insert("wid".into(), json!(wid));
        claims.insert("exec_act".into(), json!(exec_act));
        claims.insert(self.profile.parents_claim().into(), json!(parents));
        claims.insert(self.profile.ext_claim().into(), Value::Object(ext));
        let token = self.key.sign_ect(&claims, self.profile)?;
        Ok(Evidence { jti, token })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;

    use super::*;
    use crate::ect::{KeyAlg, TrustStore, Verifier, VerifyPolicy};
    use crate::rollback::model::*;
    use crate::rollback::planner::{Plan, PlannedStep, Scope};

    const COORD: &str = "spiffe://unwind.test/coordinator";

    fn record() -> (RollbackRecord, Vec<StepRecord>) {
        let step = |cp: &str, agent: &str| PlannedStep {
            checkpoint_id: cp.into(),
            agent: agent.into(),
            rollback_uri: Some("https://agent.example/rb".into()),
            rank: 0,
            reversible: true,
            expired: false,
            critical: true,
            waits_for: vec![],
        };
        let plan = Plan {
            wid: "wf-1".into(),
            checkpoint_id: "A".into(),
            trigger_ect: Some("B1".into()),
            scope: Scope::SubDag,
            steps: vec![step("B", "spiffe://x/b"), step("A", "spiffe://x/a")],
            critical_path: vec!["A".into()],
        };
        let now = Utc::now();
        let record = RollbackRecord {
            rollback_id: "urn:uuid:6f1c1b7e-1111-4222-8333-944455556666".into(),
            wid: "wf-1".into(),
            checkpoint_id: "A".into(),
            trigger_ect: Some("B1".into()),
            scope: Scope::SubDag,
            status: RollbackStatus::Partial,
            requested_by: "operator:ops".into(),
            reason: Some("bad route".into()),
            on_cannot_prepare: OnCannotPrepare::Auto,
            request_hash: "h".into(),
            plan,
            failed_agents: vec!["spiffe://x/b".into()],
            superseded_by: None,
            evidence_start: None,
            evidence_complete: None,
            result: json!({}),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let steps = vec![StepRecord {
            rollback_id: record.rollback_id.clone(),
            checkpoint_id: "A".into(),
            agent: "spiffe://x/a".into(),
            rollback_uri: None,
            rank: 1,
            critical: true,
            reversible: true,
            expired: false,
            waits_for: vec!["B".into()],
            prepare_status: PrepareStatus::Prepared,
            execute_status: ExecuteStatus::Completed,
            attempts: 2,
            next_attempt_at: None,
            error: None,
            response: Some(
                json!({"status": "completed", "state_hash_before": "sha256:aa", "state_hash_after": "sha256:bb"}),
            ),
            reused_from: None,
            updated_at: now,
        }];
        (record, steps)
    }

    fn verifier(key: &SigningKey) -> Verifier {
        let mut trust = TrustStore::from_config(&Default::default()).unwrap();
        trust.add_static_issuer(COORD, key.public_jwks());
        Verifier::new(Arc::new(trust), VerifyPolicy::default())
    }

    #[tokio::test]
    async fn start_and_complete_verify_and_carry_the_rollback() {
        let key = Arc::new(SigningKey::generate(KeyAlg::ES256).unwrap());
        let signer = EvidenceSigner::new(key.clone(), COORD, Profile::Draft00, 3600);
        let (record, steps) = record();
        let now = Utc::now().timestamp();
        let start = signer.rollback_start(&record, now).unwrap();
        let v = verifier(&key).verify(&start.token, now).await.unwrap();
        assert_eq!(v.jti, start.jti);
        assert_eq!(v.exec_act, "rollback_start");
        assert_eq!(v.iss, COORD);
        assert_eq!(v.wid.as_deref(), Some("wf-1"));
        assert_eq!(v.parents, vec!["B1".to_string()], "par is the trigger");
        assert_eq!(
            v.aud,
            vec![
                COORD.to_string(),
                "spiffe://x/a".into(),
                "spiffe://x/b".into()
            ]
        );
        assert_eq!(v.exp - v.iat, 3600);
        assert_eq!(v.ext["cascade.rollback_id"], json!(record.rollback_id));
        assert_eq!(v.ext["cascade.scope"], json!("sub_dag"));
        assert_eq!(v.ext["cascade.reason"], json!("bad route"));
        crate::ect::verify::require_audience(&v, "spiffe://x/b").unwrap();

        let complete = signer
            .rollback_complete(&record, &steps, &start.jti, now)
            .unwrap();
        let v = verifier(&key).verify(&complete.token, now).await.unwrap();
        assert_eq!(v.exec_act, "rollback_complete");
        assert_eq!(v.parents, vec![start.jti.clone()]);
        assert_eq!(v.ext["cascade.status"], json!("partial"));
        assert_eq!(v.ext["cascade.failed_agents"], json!(["spiffe://x/b"]));
        let cascaded = v.ext["cascade.cascaded"].as_array().unwrap();
        assert_eq!(cascaded[0]["execute_status"], json!("completed"));
        assert_eq!(cascaded[0]["state_hash_after"], json!("sha256:bb"));
    }

    #[tokio::test]
    async fn without_a_trigger_the_checkpoint_is_the_parent_and_draft_01_names_are_used() {
        let key = Arc::new(SigningKey::generate(KeyAlg::ES256).unwrap());
        let signer = EvidenceSigner::new(key.clone(), COORD, Profile::Draft01, 60);
        let (mut record, _) = record();
        record.trigger_ect = None;
        let now = Utc::now().timestamp();
        let start = signer.rollback_start(&record, now).unwrap();
        let v = verifier(&key).verify(&start.token, now).await.unwrap();
        assert_eq!(v.parents, vec!["A".to_string()]);
        assert!(v.claims.contains_key("pred") && v.claims.contains_key("ect_ext"));
        assert_eq!(v.header.typ, "exec+jwt");
    }
}
