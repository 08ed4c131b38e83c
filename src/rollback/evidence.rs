//! The ECTs Unwind signs as evidence (design.md §8, api.md "Signed records Unwind emits"):
//! `rollback_start`, sent to every agent as the `Execution-Context` of its calls, and
//! `rollback_complete`, signed once when the rollback reaches a terminal state, both of the
//! rollback's workflow; and `cascade_detected`, of its root cause's workflow. All are signed
//! with the coordinator's key and recorded in the ledger.

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

/// Sets `ext[key]` to as many leading `items` as keep `ext` within `budget` bytes (at most
/// [`EXT_BUDGET`]); returns how many that is.
fn fill(ext: &mut Map<String, Value>, key: &str, items: &[Value], budget: usize) -> usize {
    let size = |ext: &Map<String, Value>| Value::Object(ext.clone()).to_string().len();
    ext.insert(key.into(), Value::Array(Vec::new()));
    let mut used = size(ext);
    let mut kept = Vec::new();
    for item in items {
        let extra = item.to_string().len() + 1;
        if used + extra > budget {
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
    /// Largest token the ledger and the agents accept (the `Execution-Context` limit).
    max_token_bytes: usize,
}

/// The `Execution-Context` limit of api.md: no token Unwind sends may be larger.
pub const CONTEXT_LIMIT: usize = 16 * 1024;

/// `ext["cascade.audience"]` of a `rollback_start` whose `aud` could not name every agent
/// within the token limit: each agent is sent its own context instead
/// ([`EvidenceSigner::agent_context`]).
pub const AUDIENCE_PER_AGENT: &str = "per_agent";

impl EvidenceSigner {
    pub fn new(key: Arc<SigningKey>, coordinator_id: &str, profile: Profile, ttl_s: u64) -> Self {
        Self {
            key,
            coordinator_id: coordinator_id.to_string(),
            profile,
            ttl_s: i64::try_from(ttl_s).unwrap_or(i64::MAX),
            max_token_bytes: CONTEXT_LIMIT,
        }
    }

    /// Tokens are kept within `bytes` (and never above [`CONTEXT_LIMIT`]).
    pub fn with_token_limit(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes.min(CONTEXT_LIMIT);
        self
    }

    /// `rollback_start`: `par` is the trigger (or the checkpoint), `aud` the coordinator and
    /// every agent with a step, `exp` the evidence lifetime (a rollback still running then is
    /// failed).
    ///
    /// When so many agents take part that `aud` would push the token over the limit, `aud` is
    /// the coordinator alone, `ext["cascade.audience"]` is [`AUDIENCE_PER_AGENT`] with the
    /// number of agents in `ext["cascade.agents"]`, and every agent's calls carry its own
    /// [`agent_context`](Self::agent_context) instead.
    pub fn rollback_start(
        &self,
        rollback: &RollbackRecord,
        now: i64,
    ) -> Result<Evidence, KeyError> {
        let mut aud = vec![self.coordinator_id.clone()];
        let agents = rollback.plan.agents();
        aud.extend(agents.iter().cloned());
        aud.dedup();
        let parent = rollback
            .trigger_ect
            .clone()
            .unwrap_or_else(|| rollback.checkpoint_id.clone());
        let ext = Self::rollback_ext(rollback);
        let all = self.sign(
            Unsigned {
                exec_act: "rollback_start",
                wid: Some(&rollback.wid),
                aud,
                parent: &parent,
                ext: ext.clone(),
                jti: None,
            },
            now,
        )?;
        if all.token.len() <= self.max_token_bytes {
            return Ok(all);
        }
        let mut ext = ext;
        ext.insert("cascade.audience".into(), json!(AUDIENCE_PER_AGENT));
        ext.insert("cascade.agents".into(), json!(agents.len()));
        let aud = vec![self.coordinator_id.clone()];
        self.sign(
            Unsigned {
                exec_act: "rollback_start",
                wid: Some(&rollback.wid),
                aud,
                parent: &parent,
                ext,
                jti: None,
            },
            now,
        )
    }

    /// One agent's `Execution-Context` for a rollback whose `rollback_start` (`start_jti`)
    /// could not name every agent: a `rollback_start` for that agent alone (`aud` = the
    /// coordinator and the agent), child of the rollback's own (`par` and
    /// `ext["cascade.context_of"]`), with a `jti` derived from both so that signing it again
    /// after a restart names the same token.
    pub fn agent_context(
        &self,
        rollback: &RollbackRecord,
        start_jti: &str,
        agent: &str,
        now: i64,
    ) -> Result<Evidence, KeyError> {
        let mut ext = Self::rollback_ext(rollback);
        ext.insert("cascade.context_of".into(), json!(start_jti));
        let aud = vec![self.coordinator_id.clone(), agent.to_string()];
        let jti = agent_context_jti(start_jti, agent);
        self.sign(
            Unsigned {
                exec_act: "rollback_start",
                wid: Some(&rollback.wid),
                aud,
                parent: start_jti,
                ext,
                jti: Some(jti),
            },
            now,
        )
    }

    fn rollback_ext(rollback: &RollbackRecord) -> Map<String, Value> {
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
        ext
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
        // fit the profile's 4 KiB `ext` limit — and the token limit, which may be smaller; the
        // digest above commits to every step either way.
        let cascaded = per_agent(steps);
        let failed: Vec<Value> = rollback.failed_agents.iter().map(|a| json!(a)).collect();
        let mut budget = EXT_BUDGET;
        loop {
            let mut ext = ext.clone();
            let listed = fill(&mut ext, "cascade.cascaded", &cascaded, budget);
            let failed_listed = fill(&mut ext, "cascade.failed_agents", &failed, budget);
            let omitted = (cascaded.len() - listed) + (failed.len() - failed_listed);
            if omitted > 0 {
                ext.insert("cascade.omitted".into(), json!(omitted));
            }
            let ev = self.sign(
                Unsigned {
                    exec_act: "rollback_complete",
                    wid: Some(&rollback.wid),
                    aud: vec![self.coordinator_id.clone()],
                    parent: start_jti,
                    ext,
                    jti: None,
                },
                now,
            )?;
            // Lists shrink until the token fits; with none left, the digest alone remains.
            if ev.token.len() <= self.max_token_bytes || listed + failed_listed == 0 {
                return Ok(ev);
            }
            budget /= 2;
        }
    }

    /// `cascade_detected` (the draft's "Alert Format"): `par` is the root cause, in its
    /// workflow; `cascade.affected_agents` the number of agents involved and
    /// `cascade.blast_radius` the agents themselves, as many as fit the `ext` limit (then
    /// `cascade.omitted`).
    pub fn cascade_detected(
        &self,
        wid: Option<&str>,
        pattern: &str,
        root_cause: &str,
        affected_agents: usize,
        blast_radius_agents: &[String],
        now: i64,
    ) -> Result<Evidence, KeyError> {
        let mut ext = Map::new();
        ext.insert("cascade.pattern".into(), json!(pattern));
        ext.insert("cascade.affected_agents".into(), json!(affected_agents));
        ext.insert("cascade.root_cause_ect".into(), json!(root_cause));
        let agents: Vec<Value> = blast_radius_agents.iter().map(|a| json!(a)).collect();
        let listed = fill(&mut ext, "cascade.blast_radius", &agents, EXT_BUDGET);
        if listed < agents.len() {
            ext.insert("cascade.omitted".into(), json!(agents.len() - listed));
        }
        self.coordinator_ect("cascade_detected", wid, root_cause, ext, now)
    }

    /// Another coordinator ECT about `wid` (e.g. `hitl_decision`), child of `parent`, addressed
    /// to the coordinator itself. `wid` is absent only for records about nodes that belong to
    /// no workflow.
    pub fn coordinator_ect(
        &self,
        exec_act: &str,
        wid: Option<&str>,
        parent: &str,
        ext: Map<String, Value>,
        now: i64,
    ) -> Result<Evidence, KeyError> {
        self.sign(
            Unsigned {
                exec_act,
                wid,
                aud: vec![self.coordinator_id.clone()],
                parent,
                ext,
                jti: None,
            },
            now,
        )
    }

    /// `circuit_breaker_open` (the cascade draft's "ECT Integration"): the breaker toward
    /// `agent` opened on a call of the rollback whose `rollback_start` is `start_jti` in
    /// workflow `wid` (its parent).
    pub fn circuit_open(
        &self,
        agent: &str,
        error_rate: f64,
        window_s: u64,
        cooldown_s: u64,
        (wid, start_jti): (&str, &str),
        now: i64,
    ) -> Result<Evidence, KeyError> {
        let mut ext = Map::new();
        ext.insert("cascade.downstream_agent".into(), json!(agent));
        ext.insert("cascade.error_rate".into(), json!(error_rate));
        ext.insert("cascade.window_s".into(), json!(window_s));
        ext.insert("cascade.cooldown_s".into(), json!(cooldown_s));
        self.coordinator_ect("circuit_breaker_open", Some(wid), start_jti, ext, now)
    }

    /// `circuit_breaker_close`: child of the `circuit_breaker_open` `open_jti`, in its `wid`;
    /// `total_cooldown_s` is every cooldown the breaker went through.
    pub fn circuit_close(
        &self,
        agent: &str,
        total_cooldown_s: u64,
        (wid, open_jti): (&str, &str),
        now: i64,
    ) -> Result<Evidence, KeyError> {
        let mut ext = Map::new();
        ext.insert("cascade.downstream_agent".into(), json!(agent));
        ext.insert("cascade.total_cooldown_s".into(), json!(total_cooldown_s));
        self.coordinator_ect("circuit_breaker_close", Some(wid), open_jti, ext, now)
    }

    /// One coordinator ECT; every one Unwind signs has exactly one parent.
    fn sign(&self, unsigned: Unsigned<'_>, now: i64) -> Result<Evidence, KeyError> {
        let Unsigned {
            exec_act,
            wid,
            aud,
            parent,
            ext,
            jti,
        } = unsigned;
        let jti = jti.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.coordinator_id));
        claims.insert("aud".into(), json!(aud));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now.saturating_add(self.ttl_s)));
        claims.insert("jti".into(), json!(jti));
        if let Some(wid) = wid {
            claims.insert("wid".into(), json!(wid));
        }
        claims.insert("exec_act".into(), json!(exec_act));
        claims.insert(self.profile.parents_claim().into(), json!([parent]));
        claims.insert(self.profile.ext_claim().into(), Value::Object(ext));
        let token = self.key.sign_ect(&claims, self.profile)?;
        Ok(Evidence { jti, token })
    }
}

/// The claims of a coordinator ECT that vary; `jti` is generated unless given.
struct Unsigned<'a> {
    exec_act: &'a str,
    /// Absent only for records about nodes that belong to no workflow.
    wid: Option<&'a str>,
    aud: Vec<String>,
    parent: &'a str,
    ext: Map<String, Value>,
    jti: Option<String>,
}

/// The `jti` of `agent`'s own context for the rollback started by `start_jti`: a UUID (v8,
/// custom) made of the first 16 bytes of SHA-256 over both.
pub fn agent_context_jti(start_jti: &str, agent: &str) -> String {
    let input = format!("{start_jti}\n{agent}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
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

        // A ledger configured for smaller tokens gets shorter lists, not a refused token.
        let narrow = signer.clone().with_token_limit(1500);
        let ev = narrow
            .rollback_complete(&record, &steps, "start", now)
            .unwrap();
        assert!(ev.token.len() <= 1500, "{}", ev.token.len());
        let v = verifier(&key).verify(&ev.token, now).await.unwrap();
        let short_listed = v.ext["cascade.cascaded"].as_array().unwrap().len()
            + v.ext["cascade.failed_agents"].as_array().unwrap().len();
        assert!(short_listed < listed);
        assert_eq!(v.ext["cascade.omitted"], json!(2000 - short_listed));
    }

    /// Hundreds of agents do not fit one `aud`: the start names the coordinator alone and
    /// each agent gets its own context, within the limit, with a jti that signing again
    /// repeats.
    #[tokio::test]
    async fn too_many_agents_for_one_audience_get_contexts_of_their_own() {
        let key = Arc::new(SigningKey::generate(KeyAlg::ES256).unwrap());
        let signer = EvidenceSigner::new(key.clone(), COORD, Profile::Draft00, 3600);
        let (mut record, _) = record();
        let template = record.plan.steps[0].clone();
        record.plan.steps = (0..600)
            .map(|i| PlannedStep {
                checkpoint_id: format!("cp-{i}"),
                agent: format!("spiffe://example.com/agent/router-{i:04}"),
                ..template.clone()
            })
            .collect();
        let now = Utc::now().timestamp();
        let start = signer.rollback_start(&record, now).unwrap();
        assert!(start.token.len() <= CONTEXT_LIMIT, "{}", start.token.len());
        let v = verifier(&key).verify(&start.token, now).await.unwrap();
        assert_eq!(v.aud, vec![COORD.to_string()]);
        assert_eq!(v.ext["cascade.audience"], json!(AUDIENCE_PER_AGENT));
        assert_eq!(v.ext["cascade.agents"], json!(600));

        let agent = "spiffe://example.com/agent/router-0042";
        let ctx = signer
            .agent_context(&record, &start.jti, agent, now)
            .unwrap();
        let c = verifier(&key).verify(&ctx.token, now).await.unwrap();
        assert_eq!(c.exec_act, "rollback_start");
        assert_eq!(c.aud, vec![COORD.to_string(), agent.to_string()]);
        assert_eq!(c.parents, vec![start.jti.clone()]);
        assert_eq!(c.ext["cascade.context_of"], json!(start.jti));
        assert_eq!(c.ext["cascade.rollback_id"], json!(record.rollback_id));
        assert_eq!(c.jti, agent_context_jti(&start.jti, agent));
        let again = signer
            .agent_context(&record, &start.jti, agent, now)
            .unwrap();
        assert_eq!(again.jti, ctx.jti);
        assert_ne!(
            agent_context_jti(&start.jti, "spiffe://example.com/agent/router-0043"),
            ctx.jti
        );

        // A few agents still share the one start.
        let (small, _) = self::record();
        let start = signer.rollback_start(&small, now).unwrap();
        let v = verifier(&key).verify(&start.token, now).await.unwrap();
        assert_eq!(v.aud.len(), 3);
        assert!(v.ext.get("cascade.audience").is_none());
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
