//! The agent: its identity, the coordinator it trusts, its checkpoint store and its rollback
//! hooks, with the prepare/execute logic that keeps every answer idempotent per `rollback_id`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use unwind_ect::config::{TrustConfig, TrustIssuerConfig};
use unwind_ect::{Profile, SigningKey, TrustStore, VerifiedEct, Verifier, VerifyPolicy};

use crate::ects::{EctSigner, RollbackResult, SignError};
use crate::store::{AnswerKey, CheckpointStore, Claim, StoreError, StoredCheckpoint};

/// How long a duplicate request waits for the answer of the request that holds its key.
pub const DEFAULT_CLAIM_WAIT: Duration = Duration::from_secs(30);

/// What a rollback hook sees about the checkpoint and the request.
#[derive(Debug, Clone)]
pub struct CheckpointCtx {
    pub rollback_id: String,
    pub checkpoint: StoredCheckpoint,
    /// `scope` of a prepare request (`single`, `sub_dag`, `full_workflow`); `None` at execute.
    pub scope: Option<String>,
    /// The workflow of the rollback (the coordinator's `rollback_start` `wid`).
    pub wid: Option<String>,
    /// The coordinator's verified `rollback_start` ECT that authorised this request.
    pub rollback_start: VerifiedEct,
}

/// A prepare hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepareDecision {
    Prepared,
    CannotPrepare(String),
}

/// Result status of an executed rollback (the wire values of the execute answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStatus {
    Completed,
    Compensated,
    Failed,
    Escalated,
}

impl RollbackStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
            Self::Escalated => "escalated",
        }
    }
}

/// What a restore (or compensation) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOutcome {
    pub status: RollbackStatus,
    pub state_hash_before: Option<String>,
    pub state_hash_after: Option<String>,
}

impl RestoreOutcome {
    pub fn new(status: RollbackStatus) -> Self {
        Self {
            status,
            state_hash_before: None,
            state_hash_after: None,
        }
    }

    pub fn completed() -> Self {
        Self::new(RollbackStatus::Completed)
    }

    /// Adds the state hashes (`sha256:` or base64url forms, as the handler computes them).
    pub fn with_hashes(mut self, before: Option<String>, after: Option<String>) -> Self {
        self.state_hash_before = before;
        self.state_hash_after = after;
        self
    }
}

/// A hook that did not produce an outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// State restoration is impossible (e.g. an external API call): the agent calls
    /// [`RollbackHandler::compensate`] instead.
    #[error("cannot restore: {0}")]
    NotRestorable(String),
    /// Nothing was changed and a retry may succeed: the claim is released and the coordinator
    /// gets a 503, so it retries with the same `rollback_id`.
    #[error("temporary failure: {0}")]
    Retry(String),
    /// The rollback failed; answered (and remembered) as `failed`.
    #[error("{0}")]
    Failed(String),
}

/// The agent's rollback hooks. Each runs at most once per (`rollback_id`, checkpoint, phase).
#[async_trait]
pub trait RollbackHandler: Send + Sync + 'static {
    /// Checks that the checkpoint can be rolled back now. The agent has already checked the
    /// request, expiry, reversibility and the snapshot's integrity.
    async fn prepare(&self, _ctx: &CheckpointCtx) -> PrepareDecision {
        PrepareDecision::Prepared
    }

    /// Restores state from `snapshot`, which decrypted and matched `out_hash`.
    async fn restore(
        &self,
        ctx: &CheckpointCtx,
        snapshot: Vec<u8>,
    ) -> Result<RestoreOutcome, HandlerError>;

    /// Semantically reverses the checkpointed action when [`RollbackHandler::restore`] answered
    /// [`HandlerError::NotRestorable`]. The default escalates to a human.
    async fn compensate(&self, _ctx: &CheckpointCtx) -> Result<RestoreOutcome, HandlerError> {
        Ok(RestoreOutcome::new(RollbackStatus::Escalated))
    }
}

/// Where the trusted coordinator's public keys come from.
#[derive(Debug, Clone)]
pub enum CoordinatorKeys {
    Static(JwkSet),
    /// A JWKS URL, fetched on first use, cached and refreshed (no redirects followed).
    Url(String),
}

/// An agent that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Builds an [`Agent`].
#[derive(Default)]
pub struct AgentBuilder {
    id: Option<String>,
    key: Option<SigningKey>,
    coordinator: Option<(String, CoordinatorKeys)>,
    store: Option<CheckpointStore>,
    handler: Option<Arc<dyn RollbackHandler>>,
    profile: Profile,
    policy: Option<VerifyPolicy>,
    evidence_ttl_s: Option<i64>,
    claim_wait: Option<Duration>,
    clock_offset_s: i64,
}

impl AgentBuilder {
    /// The agent's id (`iss` of its ECTs; a SPIFFE id).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn signing_key(mut self, key: SigningKey) -> Self {
        self.key = Some(key);
        self
    }

    /// The one coordinator whose `rollback_start` ECTs this agent obeys.
    pub fn coordinator(mut self, id: impl Into<String>, keys: CoordinatorKeys) -> Self {
        self.coordinator = Some((id.into(), keys));
        self
    }

    pub fn store(mut self, store: CheckpointStore) -> Self {
        self.store = Some(store);
        self
    }

    pub fn handler(mut self, handler: Arc<dyn RollbackHandler>) -> Self {
        self.handler = Some(handler);
        self
    }

    /// Claim names of the ECTs the agent signs (default -00).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// Algorithms and clock skew accepted on the coordinator's tokens (default ES256, 60 s).
    pub fn verify_policy(mut self, policy: VerifyPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    pub fn evidence_ttl_s(mut self, ttl_s: i64) -> Self {
        self.evidence_ttl_s = Some(ttl_s);
        self
    }

    /// Test hook: runs the agent's clock `offset_s` seconds ahead (negative: behind) of the
    /// system clock for everything it signs and checks (token times, checkpoint expiry), to
    /// test clock skew against a coordinator. Leave it unset in production.
    pub fn clock_offset_s(mut self, offset_s: i64) -> Self {
        self.clock_offset_s = offset_s;
        self
    }

    /// How long a duplicate request waits for a running one before answering 503.
    pub fn claim_wait(mut self, wait: Duration) -> Self {
        self.claim_wait = Some(wait);
        self
    }

    pub fn build(self) -> Result<Agent, AgentError> {
        let id = self.id.ok_or(AgentError::Missing("agent id"))?;
        let key = self.key.ok_or(AgentError::Missing("signing key"))?;
        let (coordinator_id, keys) = self.coordinator.ok_or(AgentError::Missing("coordinator"))?;
        let store = self.store.ok_or(AgentError::Missing("checkpoint store"))?;
        let handler = self
            .handler
            .ok_or(AgentError::Missing("rollback handler"))?;
        if id.is_empty() || coordinator_id.is_empty() {
            return Err(AgentError::Config("ids must not be empty".into()));
        }
        if coordinator_id.ends_with('*') {
            return Err(AgentError::Config(
                "the coordinator id must be exact, not a pattern".into(),
            ));
        }
        if store.agent_id() != id {
            return Err(AgentError::Config(format!(
                "the store holds checkpoints of `{}`, not `{id}`",
                store.agent_id()
            )));
        }
        let trust = match keys {
            CoordinatorKeys::Static(jwks) => {
                let mut trust = TrustStore::from_config(&TrustConfig::default())
                    .map_err(|e| AgentError::Config(e.to_string()))?;
                trust.add_static_issuer(&coordinator_id, jwks);
                trust
            }
            CoordinatorKeys::Url(url) => TrustStore::from_config(&TrustConfig {
                issuers: vec![TrustIssuerConfig {
                    id: coordinator_id.clone(),
                    jwks_url: Some(url),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .map_err(|e| AgentError::Config(e.to_string()))?,
        };
        let verifier = Verifier::new(Arc::new(trust), self.policy.unwrap_or_default());
        let mut signer = EctSigner::new(id.clone(), key, coordinator_id.clone())
            .with_profile(self.profile)
            .with_clock_offset(self.clock_offset_s);
        if let Some(ttl) = self.evidence_ttl_s {
            signer = signer.with_evidence_ttl(ttl);
        }
        Ok(Agent {
            inner: Arc::new(Inner {
                coordinator_id,
                verifier,
                signer,
                store,
                handler,
                claim_wait: self.claim_wait.unwrap_or(DEFAULT_CLAIM_WAIT),
            }),
        })
    }
}

struct Inner {
    coordinator_id: String,
    verifier: Verifier,
    signer: EctSigner,
    store: CheckpointStore,
    handler: Arc<dyn RollbackHandler>,
    claim_wait: Duration,
}

/// The agent side of the rollback protocol. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.id())
            .field("coordinator", &self.inner.coordinator_id)
            .finish_non_exhaustive()
    }
}

/// A refusal of a rollback request, turned into an HTTP error by the router.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// 401: the `Execution-Context` is missing or does not authorise this request. Never
    /// carries a signed token: the caller is unknown.
    Unauthenticated(String),
    /// 431: the header is too large.
    HeaderTooLarge,
    BadRequest(String),
    NotFound(String),
    /// 403: the request belongs to another workflow than the checkpoint.
    Forbidden(String),
    /// 503: retry later with the same `rollback_id`.
    Unavailable(String),
    Internal(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy => Refusal::Unavailable(e.to_string()),
            StoreError::NotFound => Refusal::NotFound("unknown checkpoint".into()),
            other => Refusal::Internal(other.to_string()),
        }
    }
}

/// The two phases of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Prepare,
    Execute,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Execute => "execute",
        }
    }
}

/// A parsed prepare/execute body.
#[derive(Debug, Clone)]
pub(crate) struct RollbackRequest {
    pub rollback_id: String,
    pub checkpoint_id: String,
    pub scope: Option<String>,
}

impl Agent {
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    pub fn id(&self) -> &str {
        self.inner.signer.iss()
    }

    pub fn coordinator_id(&self) -> &str {
        &self.inner.coordinator_id
    }

    pub fn store(&self) -> &CheckpointStore {
        &self.inner.store
    }

    /// The signer of this agent's ECTs.
    pub fn signer(&self) -> &EctSigner {
        &self.inner.signer
    }

    /// The agent's public keys (for the coordinator's trust configuration).
    pub fn public_jwks(&self) -> JwkSet {
        self.inner.signer.key().public_jwks()
    }

    /// Signs the `checkpoint` ECT of `checkpoint` (see [`EctSigner::checkpoint_ect`]).
    pub fn checkpoint_ect(
        &self,
        checkpoint: &StoredCheckpoint,
        wid: &str,
        parents: &[String],
        rollback_uri: Option<&str>,
    ) -> Result<String, SignError> {
        self.inner
            .signer
            .checkpoint_ect(checkpoint, wid, parents, rollback_uri)
    }

    /// Records a snapshot, signs its checkpoint ECT and keeps the token for the checkpoint
    /// probe: the usual way to take a checkpoint before a consequential action.
    #[allow(clippy::too_many_arguments)]
    pub async fn checkpoint(
        &self,
        snapshot: &[u8],
        ttl_s: u64,
        target: Option<&str>,
        reversible: bool,
        wid: &str,
        parents: &[String],
        rollback_uri: Option<&str>,
    ) -> Result<(StoredCheckpoint, String), AgentError> {
        record_and_sign(
            &self.inner.store,
            &self.inner.signer,
            snapshot,
            ttl_s,
            target,
            reversible,
            wid,
            parents,
            rollback_uri,
        )
        .await
    }

    /// Signs an action ECT (see [`EctSigner::action_ect`]).
    pub fn action_ect(
        &self,
        exec_act: &str,
        wid: Option<&str>,
        parents: &[String],
        ext: Map<String, Value>,
    ) -> Result<String, SignError> {
        self.inner.signer.action_ect(exec_act, wid, parents, ext)
    }

    /// Signs an error ECT (see [`EctSigner::error_ect`]).
    pub fn error_ect(
        &self,
        exec_act: &str,
        reason: &str,
        wid: Option<&str>,
        parents: &[String],
        extra: Map<String, Value>,
    ) -> Result<String, SignError> {
        self.inner
            .signer
            .error_ect(exec_act, reason, wid, parents, extra)
    }

    /// Runs [`CheckpointStore::purge_expired`] every `every` until the task is aborted.
    pub fn spawn_purger(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.inner.store.clone();
        let signer = self.inner.signer.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match store.purge_expired(signer.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "expired checkpoints purged"),
                    Err(e) => tracing::warn!(error = %e, "purging expired checkpoints failed"),
                }
            }
        })
    }

    /// Verifies the `Execution-Context` tokens of a request: issued by the trusted
    /// coordinator, naming this agent in `aud`, and (for prepare/execute) a `rollback_start`
    /// whose `cascade.rollback_id` is the body's.
    pub(crate) async fn authenticate(
        &self,
        tokens: &[&str],
        rollback_id: Option<&str>,
        require_rollback_start: bool,
    ) -> Result<VerifiedEct, String> {
        if tokens.is_empty() {
            return Err("missing Execution-Context".into());
        }
        let now = self.inner.signer.now();
        let mut first_error = None;
        for token in tokens {
            match self
                .check_token(token, now, rollback_id, require_rollback_start)
                .await
            {
                Ok(ect) => return Ok(ect),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| "no usable Execution-Context".into()))
    }

    async fn check_token(
        &self,
        token: &str,
        now: i64,
        rollback_id: Option<&str>,
        require_rollback_start: bool,
    ) -> Result<VerifiedEct, String> {
        let ect = self
            .inner
            .verifier
            .verify(token, now)
            .await
            .map_err(|r| format!("{}: {}", r.code, r.detail))?;
        if ect.iss != self.inner.coordinator_id {
            return Err("not issued by the trusted coordinator".into());
        }
        unwind_ect::verify::require_audience(&ect, self.id())
            .map_err(|r| format!("{}: {}", r.code, r.detail))?;
        if require_rollback_start && ect.exec_act != "rollback_start" {
            return Err(format!(
                "exec_act `{}` is not rollback_start",
                truncate_id(&ect.exec_act)
            ));
        }
        let named = ect.ext.get("cascade.rollback_id");
        if require_rollback_start && named.is_none() {
            // Unbound to one rollback, the token could be replayed for any rollback_id.
            return Err("the rollback_start names no cascade.rollback_id".into());
        }
        if let (Some(expected), Some(named)) = (rollback_id, named)
            && named.as_str() != Some(expected)
        {
            return Err("cascade.rollback_id does not match the request".into());
        }
        Ok(ect)
    }

    /// The error ECT that goes with a verified rollback request the agent cannot carry out.
    /// Only called after [`Agent::authenticate`] accepted the coordinator's token: signing for
    /// an unknown caller would make the agent a signing oracle.
    fn refusal_ect(
        &self,
        reason: &str,
        request: Option<&RollbackRequest>,
        wid: Option<&str>,
        parents: &[String],
    ) -> Option<String> {
        let mut extra = Map::new();
        if let Some(req) = request {
            extra.insert("cascade.rollback_id".into(), json!(req.rollback_id));
            extra.insert("cascade.checkpoint_id".into(), json!(req.checkpoint_id));
        }
        match self.inner.signer.refusal_ect(reason, wid, parents, extra) {
            Ok(token) => Some(token),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign an error ECT");
                None
            }
        }
    }

    /// Runs one phase idempotently: the stored answer if there is one, else claims the key,
    /// runs the checks and the hook once, and stores the answer.
    pub(crate) async fn run_phase(
        &self,
        phase: Phase,
        request: RollbackRequest,
        rollback_start: VerifiedEct,
    ) -> Result<Value, Refusal> {
        let key = AnswerKey {
            rollback_id: request.rollback_id.clone(),
            checkpoint_id: request.checkpoint_id.clone(),
            phase: phase.as_str().into(),
        };
        let store = &self.inner.store;
        let Some(checkpoint) = store.get(&request.checkpoint_id).await? else {
            // Purged since it was answered: the answer still stands.
            return match store.answer(&key).await? {
                Some(answer) => Ok(answer),
                None => Err(Refusal::NotFound("unknown checkpoint".into())),
            };
        };
        if let (Some(cp_wid), Some(rb_wid)) = (&checkpoint.wid, &rollback_start.wid)
            && cp_wid != rb_wid
        {
            return Err(Refusal::Forbidden(
                "the rollback belongs to another workflow than the checkpoint".into(),
            ));
        }
        loop {
            match store.claim(&key, self.inner.claim_wait).await? {
                Claim::Answered(answer) => return Ok(answer),
                Claim::Owned => break,
                Claim::Interrupted { owner } => {
                    if !store.take_over(&key, &owner).await? {
                        continue;
                    }
                    if phase == Phase::Execute {
                        // A restore may have run partly before the process stopped: running it
                        // again could act twice, so a human decides.
                        tracing::warn!(
                            rollback_id = %key.rollback_id,
                            checkpoint_id = %key.checkpoint_id,
                            "execute interrupted by a restart; answering escalated"
                        );
                        let answer = self.execute_answer(
                            &request,
                            &checkpoint,
                            &rollback_start,
                            RestoreOutcome::new(RollbackStatus::Escalated),
                        );
                        store.complete(&key, &answer).await?;
                        return Ok(answer);
                    }
                    // Prepare changes nothing: run it again.
                    break;
                }
            }
        }
        let ctx = CheckpointCtx {
            rollback_id: request.rollback_id.clone(),
            checkpoint,
            scope: request.scope.clone(),
            wid: rollback_start.wid.clone(),
            rollback_start,
        };
        let result = match phase {
            Phase::Prepare => self.prepare(&request, &ctx).await,
            Phase::Execute => self.execute(&request, &ctx).await,
        };
        match result {
            // A refusal to prepare binds nothing and may change (a lock released): it is not
            // stored, so a rollback retried after an operator's decision asks again. A
            // `prepared` answer and every execute answer are stored and repeated.
            Ok(answer)
                if phase == Phase::Prepare
                    && answer.get("status").and_then(Value::as_str) == Some("cannot_prepare") =>
            {
                if let Err(e) = store.release(&key).await {
                    tracing::error!(error = %e, "cannot release a rollback claim");
                }
                Ok(answer)
            }
            Ok(answer) => {
                store.complete(&key, &answer).await?;
                Ok(answer)
            }
            Err(refusal) => {
                if let Err(e) = store.release(&key).await {
                    tracing::error!(error = %e, "cannot release a rollback claim");
                }
                Err(refusal)
            }
        }
    }

    async fn prepare(
        &self,
        request: &RollbackRequest,
        ctx: &CheckpointCtx,
    ) -> Result<Value, Refusal> {
        let cp = &ctx.checkpoint;
        let wid = cp.wid.as_deref().or(ctx.wid.as_deref());
        let parents = [ctx.rollback_start.jti.clone()];
        if cp.is_expired(self.inner.signer.now()) {
            let ect = self.refusal_ect("checkpoint_expired", Some(request), wid, &parents);
            return Ok(cannot_prepare("checkpoint_expired", ect));
        }
        if !cp.reversible {
            return Ok(cannot_prepare("irreversible", None));
        }
        match self.inner.store.load(&cp.jti).await {
            Ok(_) => {}
            Err(StoreError::Integrity(failure)) => {
                let reason = format!("checkpoint_integrity: {failure}");
                let ect = self.refusal_ect(&reason, Some(request), wid, &parents);
                return Ok(cannot_prepare("checkpoint_integrity", ect));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(match self.inner.handler.prepare(ctx).await {
            PrepareDecision::Prepared => json!({"status": "prepared"}),
            PrepareDecision::CannotPrepare(reason) => cannot_prepare(&reason, None),
        })
    }

    async fn execute(
        &self,
        request: &RollbackRequest,
        ctx: &CheckpointCtx,
    ) -> Result<Value, Refusal> {
        let cp = &ctx.checkpoint;
        let wid = cp.wid.as_deref().or(ctx.wid.as_deref());
        let parents = [ctx.rollback_start.jti.clone()];
        let refused = |reason: &str| {
            let mut answer = json!({"status": "failed"});
            if let Some(ect) = self.refusal_ect(reason, Some(request), wid, &parents) {
                answer["ect"] = json!(ect);
            }
            answer
        };
        if cp.is_expired(self.inner.signer.now()) {
            return Ok(refused("checkpoint_expired"));
        }
        if !cp.reversible {
            let outcome = RestoreOutcome::new(RollbackStatus::Escalated);
            return Ok(self.execute_answer(request, cp, &ctx.rollback_start, outcome));
        }
        let snapshot = match self.inner.store.load(&cp.jti).await {
            Ok(snapshot) => snapshot,
            Err(StoreError::Integrity(failure)) => {
                tracing::warn!(checkpoint_id = %cp.jti, %failure, "restore refused");
                return Ok(refused(&format!("checkpoint_integrity: {failure}")));
            }
            Err(e) => return Err(e.into()),
        };
        let handler = &self.inner.handler;
        let outcome = match handler.restore(ctx, snapshot).await {
            Ok(outcome) => Ok(outcome),
            Err(HandlerError::NotRestorable(why)) => {
                tracing::info!(checkpoint_id = %cp.jti, reason = %why, "compensating instead");
                handler.compensate(ctx).await
            }
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(HandlerError::Retry(why)) => return Err(Refusal::Unavailable(why)),
            Err(e) => {
                tracing::warn!(checkpoint_id = %cp.jti, error = %e, "rollback failed");
                RestoreOutcome::new(RollbackStatus::Failed)
            }
        };
        Ok(self.execute_answer(request, cp, &ctx.rollback_start, outcome))
    }

    /// The execute answer with the agent's `rollback_complete`/`compensate` ECT.
    fn execute_answer(
        &self,
        request: &RollbackRequest,
        cp: &StoredCheckpoint,
        rollback_start: &VerifiedEct,
        outcome: RestoreOutcome,
    ) -> Value {
        let mut answer = json!({"status": outcome.status.as_str()});
        if let Some(h) = &outcome.state_hash_before {
            answer["state_hash_before"] = json!(h);
        }
        if let Some(h) = &outcome.state_hash_after {
            answer["state_hash_after"] = json!(h);
        }
        let result = RollbackResult {
            rollback_id: &request.rollback_id,
            checkpoint_id: &cp.jti,
            wid: cp.wid.as_deref().or(rollback_start.wid.as_deref()),
            status: outcome.status.as_str(),
            state_hash_before: outcome.state_hash_before.as_deref(),
            state_hash_after: outcome.state_hash_after.as_deref(),
        };
        match self.inner.signer.rollback_result_ect(&result) {
            Ok(ect) => answer["ect"] = json!(ect),
            Err(e) => tracing::error!(error = %e, "cannot sign the rollback result ECT"),
        }
        answer
    }
}

/// Records a snapshot, signs its checkpoint ECT and attaches the token (shared by
/// [`Agent::checkpoint`] and the command line, which has no coordinator to trust).
#[allow(clippy::too_many_arguments)]
pub async fn record_and_sign(
    store: &CheckpointStore,
    signer: &EctSigner,
    snapshot: &[u8],
    ttl_s: u64,
    target: Option<&str>,
    reversible: bool,
    wid: &str,
    parents: &[String],
    rollback_uri: Option<&str>,
) -> Result<(StoredCheckpoint, String), AgentError> {
    if store.agent_id() != signer.iss() {
        return Err(AgentError::Config(
            "the store and the signer belong to different agents".into(),
        ));
    }
    let mut checkpoint = store
        .record_at(snapshot, ttl_s, target, reversible, signer.now())
        .await?;
    let token = signer.checkpoint_ect(&checkpoint, wid, parents, rollback_uri)?;
    store
        .attach_token(&checkpoint.jti, &token, Some(wid))
        .await?;
    checkpoint.wid = Some(wid.to_owned());
    checkpoint.token = Some(token.clone());
    Ok((checkpoint, token))
}

fn cannot_prepare(reason: &str, ect: Option<String>) -> Value {
    let mut answer = json!({"status": "cannot_prepare", "reason": reason});
    if let Some(ect) = ect {
        answer["ect"] = json!(ect);
    }
    answer
}

/// Keeps identifiers from requests short in messages and logs.
pub(crate) fn truncate_id(id: &str) -> String {
    id.chars().take(128).collect()
}
