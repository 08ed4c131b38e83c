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

/// Room for `ext` under the profile's 4,096-byte limit, with margin for `cascade.omitted`.
const EXT_BUDGET: usize = 3_900;

/// Sets `ext[key]` to as many leading `items` as keep `ext` within [`EXT_BUDGET`]; returns how
/// many that is.
fn fill(ext: &mut Map<String, Value>, key: &str, items: &[Value]) -> usize {
    let size = |ext: &Map<String, Value>| Value::Object(ext.clone()).to_string().len();
    ext.insert(key.into(), Value::Array(Vec::new()));
    let mut used = size(ext);
    let mut kept = Vec::new();
    for item in items {
        let extra = item.to_string().len() + 1;
        if used + extra > EXT_BUDGET {
            break;
        }
        used += extra;
        kept.push(item.clone());
    }
    let n = kept.len();
    ext.insert(key.into(), Value::Array(kept));
    n
}

/// One entry per agent: how many of its steps were undone and, for an agent with one step,
/// which checkpoint and the state hashes it reported.
fn per_agent(steps: &[StepRecord]) -> Vec<Value> {
    let mut by_agent: std::collections::BTreeMap<&str, Vec<&StepRecord>> = Default::default();
    for s in steps {
        by_agent.entry(s.agent.as_str()).or_default().push(s);
    }
    by_agent
        .into_iter()
        .map(|(agent, steps)| {
            let undone = steps
                .iter()
                .filter(|s| s.execute_status.is_undone())
                .count();
            let mut entry = json!({"agent": agent, "steps": steps.len(), "undone": undone});
            if let [only] = steps.as_slice() {
                entry["checkpoint_id"] = json!(only.checkpoint_id);
                entry["execute_status"] = json!(only.execute_status);
                for key in ["state_hash_before", "state_hash_after"] {
                    let hash = only.response.as_ref().and_then(|r| r.get(key));
                    if let Some(v) = hash.filter(|v| v.is_string()) {
                        entry[key] = v.clone();
                    }
                }
            }
            entry
        })
        .collect()
}

/// SHA-256 over every step's outcome, in step order: the evidence commits to all of them even
/// when the lists are cut to fit.
fn steps_digest(steps: &[StepRecord]) -> String {
    let outcome: Vec<Value> = steps
        .iter()
        .map(|s| {
            let hash = |key: &str| s.response.as_ref().and_then(|r| r.get(key)).cloned();
            json!([
                s.checkpoint_id,
                s.agent,
                s.prepare_status,
                s.execute_status,
                hash("state_hash_before"),
                hash("state_hash_after"),
                s.reused_from,
            ])
        })
        .collect();
    let text = Value::Array(outcome).to_string();
    format!("sha256:{}", crate::ect::sha256_hex(text.as_bytes()))
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
        let mut ext = Map::new();
        ext.insert("cascade.rollback_id".into(), json!(rollback.rollback_id));
        ext.insert(
            "cascade.checkpoint_id".into(),
            json!(rollback.checkpoint_id),
        );
        ext.insert("cascade.scope".into(), json!(rollback.scope.as_str()));
        ext.insert("cascade.status".into(), json!(rollback.status.as_str()));
        ext.insert("cascade.steps".into(), json!(steps.len()));
        ext.insert("cascade.steps_digest".into(), json!(steps_digest(steps)));
        // Per-agent results (the draft's shape), then the failed agents, as many of each as
        // fit the profile's 4 KiB `ext` limit; the digest above commits to every step either way.
        let cascaded = per_agent(steps);
        let listed = fill(&mut ext, "cascade.cascaded", &cascaded);
        let failed: Vec<Value> = rollback.failed_agents.iter().map(|a| json!(a)).collect();
        let failed_listed = fill(&mut ext, "cascade.failed_agents", &failed);
        let omitted = (cascaded.len() - listed) + (failed.len() - failed_listed);
        if omitted > 0 {
            ext.insert("cascade.omitted".into(), json!(omitted));
        }
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
        assert_eq!(cascaded[0]["agent"], json!("spiffe://x/a"));
        assert_eq!(cascaded[0]["undone"], json!(1));
        assert_eq!(cascaded[0]["execute_status"], json!("completed"));
        assert_eq!(cascaded[0]["state_hash_after"], json!("sha256:bb"));
        assert_eq!(v.ext["cascade.steps"], json!(1));
        assert!(
            v.ext["cascade.steps_digest"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
        assert!(v.ext.get("cascade.omitted").is_none());
    }

    /// A thousand steps of a thousand agents still give a token the ledger accepts (ext within
    /// 4 KiB), listing what fits and counting what does not.
    #[tokio::test]
    async fn huge_rollbacks_fit_the_ext_limit() {
        let key = Arc::new(SigningKey::generate(KeyAlg::ES256).unwrap());
        let signer = EvidenceSigner::new(key.clone(), COORD, Profile::Draft00, 3600);
        let (mut record, template) = record();
        let steps: Vec<StepRecord> = (0..1000)
            .map(|i| StepRecord {
                checkpoint_id: format!("cp-{i:04}-{}", "x".repeat(30)),
                agent: format!("spiffe://example.com/agent/{i:04}"),
                ..template[0].clone()
            })
            .collect();
        record.failed_agents = steps.iter().map(|s| s.agent.clone()).collect();
        let now = Utc::now().timestamp();
        let ev = signer
            .rollback_complete(&record, &steps, "start", now)
            .unwrap();
        let v = verifier(&key).verify(&ev.token, now).await.unwrap();
        let listed = v.ext["cascade.cascaded"].as_array().unwrap().len()
            + v.ext["cascade.failed_agents"].as_array().unwrap().len();
        assert!(listed > 0);
        assert_eq!(v.ext["cascade.omitted"], json!(2000 - listed));
        assert_eq!(v.ext["cascade.steps"], json!(1000));
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
