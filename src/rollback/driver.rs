//! The rollback driver: a worker claims a rollback with a lease and moves it through the state
//! machine of design.md §6, persisting every step's result before the next decision, so that
//! a worker that dies is replaced by another that resumes where it stopped.
//!
//! Exactly-once towards agents rests on two things: every call carries the rollback's id (an
//! agent answers a repeated id with its stored answer), and every write is fenced by the lease
//! (a worker that lost its lease can no longer change anything). Evidence is signed once: the
//! token is persisted in the rollback before it is recorded in the ledger, and a resumed worker
//! reuses it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::evidence::{EvidenceSigner, agent_context_jti};
use super::inflight::{Done, InFlight, Reporter, Retrying};
use super::model::{
    ExecuteStatus, Lease, PrepareStatus, RollbackFilter, RollbackRecord, RollbackStatus, StepError,
    StepRecord,
};
use crate::agents::bulkhead::{Bulkhead, BulkheadPermit};
use crate::agents::{AgentClient, ExecuteAnswer, ExecuteResult, Final, PrepareAnswer, StepCall};
use crate::hitl::Escalations;
use crate::ledger::Ledger;
use crate::store::{Store, StoreError};

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// Identifies this worker in leases (replica id + process).
    pub owner: String,
    pub lease: Duration,
    /// Concurrent agent calls of one rollback.
    pub max_concurrency: usize,
    pub step_deadline: Duration,
    /// How often to look for work when nothing wakes the worker.
    pub poll_interval: Duration,
    /// Rollbacks one worker drives at the same time.
    pub max_rollbacks: usize,
    /// Of those, rollbacks of one workflow.
    pub max_rollbacks_per_workflow: usize,
    /// Lifetime of a rollback's `rollback_start` (its `exp`): a rollback not finished by then,
    /// awaiting a decision or not, ends `failed` — agents would refuse its context anyway.
    pub evidence_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("evidence: {0}")]
    Evidence(String),
    /// An agent call's task panicked or was cancelled.
    #[error("agent call task: {0}")]
    CallTask(#[from] tokio::task::JoinError),
    #[error("escalation: {0}")]
    Hitl(#[from] crate::hitl::HitlError),
}

/// Result key under which a signed-but-not-yet-recorded evidence token is kept.
const PENDING_START: &str = "evidence_start_token";
const PENDING_COMPLETE: &str = "evidence_complete_token";

/// Drives rollbacks; one per process, any number of processes per database.
pub struct Coordinator {
    store: Arc<dyn Store>,
    ledger: Arc<Ledger>,
    agents: Arc<AgentClient>,
    evidence: EvidenceSigner,
    /// Raises escalations and webhook events at the states a person must know about.
    escalations: Arc<Escalations>,
    settings: DriverSettings,
    wake: Notify,
    /// Worker slots per workflow.
    workflow_slots: Bulkhead,
}

impl Coordinator {
    pub fn new(
        store: Arc<dyn Store>,
        ledger: Arc<Ledger>,
        agents: Arc<AgentClient>,
        evidence: EvidenceSigner,
        escalations: Arc<Escalations>,
        settings: DriverSettings,
    ) -> Arc<Self> {
        let workflow_slots = Bulkhead::new("rollbacks", settings.max_rollbacks_per_workflow);
        Arc::new(Self {
            store,
            ledger,
            agents,
            evidence,
            escalations,
            settings,
            wake: Notify::new(),
            workflow_slots,
        })
    }

    /// The client this worker calls agents with (and its circuit breakers).
    pub fn agents(&self) -> &Arc<AgentClient> {
        &self.agents
    }

    /// Tells the worker there may be new work (a new rollback, a decision).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Claims and drives rollbacks until `shutdown` completes.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.settings.max_rollbacks.max(1),
        ));
        // Owned here, so that when this worker stops (or its task is aborted) every rollback
        // it drives stops with it, as in a process that dies: none keeps renewing its lease.
        let mut drives = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        let mut last_sweep: Option<std::time::Instant> = None;
        loop {
            while drives.try_join_next().is_some() {}
            if last_sweep.is_none_or(|t| t.elapsed() >= self.sweep_interval()) {
                last_sweep = Some(std::time::Instant::now());
                if let Err(e) = self.release_expired_waiting().await {
                    tracing::warn!(error = %e, "cannot look for expired rollbacks");
                }
            }
            let permit = tokio::select! {
                _ = &mut shutdown => return,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let claimed = self
                .store
                .claim_next_rollback(&self.settings.owner, self.settings.lease)
                .await;
            match claimed {
                Ok(Some(lease)) => {
                    let me = self.clone();
                    drives.spawn(async move {
                        let id = lease.rollback_id.clone();
                        let Some(_slot) = me.workflow_slot(&lease).await else {
                            return;
                        };
                        if let Err(e) = me.drive(lease).await {
                            tracing::warn!(rollback_id = %id, error = %e, "rollback interrupted; it resumes when its lease expires");
                        }
                        drop(permit);
                    });
                    continue;
                }
                Ok(None) => drop(permit),
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "cannot claim rollbacks");
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.settings.poll_interval) => {},
            }
        }
    }

    /// A worker slot of the claimed rollback's workflow. When its workflow already has
    /// `max_rollbacks_per_workflow` rollbacks here, the rollback is put back: its lease is cut
    /// to one poll interval, after which any worker may claim it again, and this worker's slot
    /// goes to the next rollback — of another workflow, if that one is full.
    async fn workflow_slot(&self, lease: &Lease) -> Option<BulkheadPermit> {
        let wid = match self.store.get_rollback(&lease.rollback_id).await {
            Ok(Some((rb, _))) => rb.wid,
            Ok(None) => return None,
            Err(e) => {
                // Like any error while driving: the lease runs out, then it is tried again.
                tracing::warn!(rollback_id = %lease.rollback_id, error = %e, "cannot read claimed rollback");
                return None;
            }
        };
        if let Some(slot) = self.workflow_slots.try_acquire(&wid) {
            return Some(slot);
        }
        tracing::debug!(rollback_id = %lease.rollback_id, %wid, "workflow at its rollback limit; rollback deferred");
        if let Err(e) = self
            .store
            .renew_lease(lease, self.settings.poll_interval)
            .await
        {
            tracing::warn!(rollback_id = %lease.rollback_id, error = %e, "cannot defer rollback");
        }
        None
    }

    /// How often to look for rollbacks awaiting a decision past their evidence lifetime: a
    /// small fraction of that lifetime, at least every second and at most every minute.
    fn sweep_interval(&self) -> Duration {
        (self.settings.evidence_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Rollbacks awaiting a decision are not claimed; those past their evidence lifetime are
    /// handed back to the workers, which end them `failed` (see [`Self::drive_leased`]).
    async fn release_expired_waiting(&self) -> Result<(), DriveError> {
        let filter = RollbackFilter {
            wid: None,
            status: Some(RollbackStatus::AwaitingDecision),
        };
        let mut cursor: Option<String> = None;
        let mut released = false;
        loop {
            let page = self
                .store
                .list_rollbacks(&filter, cursor.as_deref(), 1000)
                .await?;
            for rb in page.items.iter().filter(|rb| self.evidence_expired(rb)) {
                let to_worker = self
                    .store
                    .transition_rollback(
                        &rb.rollback_id,
                        RollbackStatus::AwaitingDecision,
                        RollbackStatus::Executing,
                        serde_json::Map::new(),
                    )
                    .await?;
                released |= to_worker.is_some();
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if released {
            self.wake();
        }
        Ok(())
    }

    /// True once the rollback's evidence lifetime, counted from its request, has passed.
    fn evidence_expired(&self, rb: &RollbackRecord) -> bool {
        let age = chrono::Utc::now().signed_duration_since(rb.created_at);
        age.to_std()
            .is_ok_and(|age| age >= self.settings.evidence_ttl)
    }

    /// Moves one rollback as far as it can go under `lease`.
    pub async fn drive(&self, lease: Lease) -> Result<(), DriveError> {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (store, lease, lost, period) = (
                self.store.clone(),
                lease.clone(),
                lost.clone(),
                self.settings.lease / 3,
            );
            let lease_for = self.settings.lease;
            // A JoinSet aborts its task when dropped: if this drive is cancelled, the lease
            // stops being renewed and another worker can take the rollback over.
            let mut renewer = tokio::task::JoinSet::new();
            renewer.spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    if store.renew_lease(&lease, lease_for).await.is_err() {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            });
            renewer
        };
        let outcome = self.drive_leased(&lease, &lost).await;
        drop(renewer);
        // After an error the lease is kept until it expires: the next attempt (here or on
        // another replica) comes a lease later instead of at once, over and over.
        if outcome.is_ok() && !lost.load(Ordering::SeqCst) {
            let _ = self.store.release_lease(&lease).await;
        }
        outcome
    }

    async fn drive_leased(&self, lease: &Lease, lost: &AtomicBool) -> Result<(), DriveError> {
        loop {
            if lost.load(Ordering::SeqCst) {
                return Err(StoreError::LeaseLost(lease.rollback_id.clone()).into());
            }
            let Some((mut rb, mut steps)) = self.store.get_rollback(&lease.rollback_id).await?
            else {
                return Err(StoreError::NoSuchRollback(lease.rollback_id.clone()).into());
            };
            if rb.status.is_terminal() {
                return Ok(());
            }
            if self.evidence_expired(&rb) {
                return self.expire(lease, &mut rb, &mut steps).await;
            }
            if rb.status == RollbackStatus::AwaitingDecision {
                return Ok(());
            }
            if rb.superseded_by.is_some() {
                return self
                    .finish(lease, &mut rb, &steps, Some(RollbackStatus::Superseded))
                    .await;
            }
            match rb.status {
                RollbackStatus::Accepted => {
                    if self.waits_for_superseded(&rb).await? {
                        // The rollbacks it replaces have not stopped yet: look again shortly.
                        tokio::time::sleep(self.settings.poll_interval).await;
                        continue;
                    }
                    self.reuse_superseded_steps(lease, &rb, &mut steps).await?;
                    self.record_start(lease, &mut rb).await?;
                    rb.status = RollbackStatus::Preparing;
                    self.save(lease, &mut rb).await?;
                }
                RollbackStatus::Preparing => self.prepare_phase(lease, &mut rb, &mut steps).await?,
                RollbackStatus::Executing => {
                    self.execute_phase(lease, &mut rb, &mut steps, lost).await?;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Ends a rollback whose evidence lifetime passed: `failed`, with the steps it never
    /// finished marked so that the operator sees why.
    async fn expire(
        &self,
        lease: &Lease,
        rb: &mut RollbackRecord,
        steps: &mut [StepRecord],
    ) -> Result<(), DriveError> {
        tracing::warn!(rollback_id = %rb.rollback_id, "rollback passed its evidence lifetime; it ends failed");
        let mut unfinished = Vec::new();
        for step in steps
            .iter_mut()
            .filter(|s| s.execute_status == ExecuteStatus::Pending)
        {
            step.error = Some(step_error(
                "rollback_expired",
                "the rollback did not finish within rollback.evidence_ttl_s",
            ));
            unfinished.push(step.clone());
        }
        self.store.update_steps(lease, &unfinished).await?;
        self.finish(lease, rb, steps, Some(RollbackStatus::Failed))
            .await
    }

    /// True while a rollback this one supersedes is still running.
    async fn waits_for_superseded(&self, rb: &RollbackRecord) -> Result<bool, DriveError> {
        Ok(self
            .superseded_by_me(rb)
            .await?
            .iter()
            .any(|r| !r.status.is_terminal()))
    }

    async fn superseded_by_me(
        &self,
        rb: &RollbackRecord,
    ) -> Result<Vec<RollbackRecord>, DriveError> {
        let filter = RollbackFilter {
            wid: Some(rb.wid.clone()),
            status: None,
        };
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .store
                .list_rollbacks(&filter, cursor.as_deref(), 1000)
                .await?;
            out.extend(
                page.items
                    .into_iter()
                    .filter(|r| r.superseded_by.as_deref() == Some(&rb.rollback_id)),
            );
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Steps that a superseded rollback already undid are not run again (design.md §7).
    async fn reuse_superseded_steps(
        &self,
        lease: &Lease,
        rb: &RollbackRecord,
        steps: &mut [StepRecord],
    ) -> Result<(), DriveError> {
        for old in self.superseded_by_me(rb).await? {
            let Some((_, old_steps)) = self.store.get_rollback(&old.rollback_id).await? else {
                continue;
            };
            let mut reused = Vec::new();
            for done in old_steps.iter().filter(|s| s.execute_status.is_undone()) {
                if let Some(step) = steps.iter_mut().find(|s| {
                    s.checkpoint_id == done.checkpoint_id
                        && s.execute_status == ExecuteStatus::Pending
                }) {
                    step.prepare_status = done.prepare_status;
                    step.execute_status = done.execute_status;
                    step.response = done.response.clone();
                    step.reused_from = Some(old.rollback_id.clone());
                    reused.push(step.clone());
                }
            }
            self.store.update_steps(lease, &reused).await?;
        }
        Ok(())
    }

    /// Signs `rollback_start` once (the token is kept in the rollback before it is recorded).
    async fn record_start(&self, lease: &Lease, rb: &mut RollbackRecord) -> Result<(), DriveError> {
        if rb.evidence_start.is_some() && result_str(rb, PENDING_START).is_none() {
            return Ok(());
        }
        let token = match result_str(rb, PENDING_START) {
            Some(token) => token,
            None => {
                let ev = self
                    .evidence
                    .rollback_start(rb, chrono::Utc::now().timestamp())
                    .map_err(|e| DriveError::Evidence(e.to_string()))?;
                rb.evidence_start = Some(ev.jti);
                set_result(rb, PENDING_START, Value::String(ev.token.clone()));
                self.save(lease, rb).await?;
                ev.token
            }
        };
        self.record_evidence(std::slice::from_ref(&token)).await?;
        set_result(rb, PENDING_START, Value::Null);
        self.save(lease, rb).await?;
        Ok(())
    }

    /// Records the coordinator's own tokens; every one must be accepted (or already there).
    async fn record_evidence(&self, tokens: &[String]) -> Result<(), DriveError> {
        let results = self
            .ledger
            .ingest(tokens)
            .await
            .map_err(|e| DriveError::Evidence(e.to_string()))?;
        if results.len() != tokens.len() {
            return Err(DriveError::Evidence("no ingest result".into()));
        }
        match results.iter().find_map(|r| r.outcome.as_ref().err()) {
            None => Ok(()),
            Some(rejection) => Err(DriveError::Evidence(format!(
                "the ledger refused it: {rejection}"
            ))),
        }
    }

    /// The `Execution-Context` of each agent's calls: the rollback's `rollback_start`, or,
    /// when its `aud` could not name every agent, each agent's own context (signed and
    /// recorded once; found in the ledger by its derived `jti` after a restart).
    async fn contexts(
        &self,
        rb: &RollbackRecord,
        steps: &[StepRecord],
    ) -> Result<Contexts, DriveError> {
        let jti = rb
            .evidence_start
            .as_deref()
            .ok_or_else(|| DriveError::Evidence("rollback_start missing".into()))?;
        let start = self.store.get_ect(jti).await?.ok_or_else(|| {
            DriveError::Evidence(format!("rollback_start {jti} is not in the ledger"))
        })?;
        let named: BTreeSet<&str> = start
            .claims
            .get("aud")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let missing: BTreeSet<&str> = steps
            .iter()
            .map(|s| s.agent.as_str())
            .filter(|a| !named.contains(a))
            .collect();
        let mut per_agent = HashMap::new();
        let mut unsigned = Vec::new();
        for agent in &missing {
            let context_jti = agent_context_jti(jti, agent);
            match self.store.get_ect(&context_jti).await? {
                Some(record) => {
                    per_agent.insert(agent.to_string(), Arc::from(record.token));
                }
                None => unsigned.push(*agent),
            }
        }
        let now = chrono::Utc::now().timestamp();
        for chunk in unsigned.chunks(1000) {
            let mut tokens = Vec::with_capacity(chunk.len());
            for agent in chunk {
                let ev = self
                    .evidence
                    .agent_context(rb, jti, agent, now)
                    .map_err(|e| DriveError::Evidence(e.to_string()))?;
                tokens.push(ev.token.clone());
                per_agent.insert(agent.to_string(), Arc::from(ev.token));
            }
            self.record_evidence(&tokens).await?;
        }
        Ok(Contexts {
            shared: Arc::from(start.token),
            per_agent,
        })
    }

    async fn prepare_phase(
        &self,
        lease: &Lease,
        rb: &mut RollbackRecord,
        steps: &mut [StepRecord],
    ) -> Result<(), DriveError> {
        if take_decision(rb).as_deref() == Some("retry") {
            // Steps not yet undone (not prepared, skipped, or failed at execute) are asked
            // again; undone steps and prepared ones still waiting keep their results.
            let mut reset = Vec::new();
            for step in steps
                .iter_mut()
                .filter(|s| s.reversible && !s.execute_status.is_undone())
            {
                let waiting = step.prepare_status == PrepareStatus::Prepared
                    && step.execute_status == ExecuteStatus::Pending;
                if !waiting {
                    step.prepare_status = PrepareStatus::Pending;
                    step.execute_status = ExecuteStatus::Pending;
                    step.error = None;
                    reset.push(step.clone());
                }
            }
            self.store.update_steps(lease, &reset).await?;
            rb.failed_agents.clear();
            self.save(lease, rb).await?;
        }
        let contexts = self.contexts(rb, steps).await?;
        let mut pending = Vec::new();
        let mut settled = Vec::new();
        for (i, step) in steps.iter_mut().enumerate() {
            if step.prepare_status != PrepareStatus::Pending
                || step.execute_status != ExecuteStatus::Pending
            {
                continue;
            }
            if !step.reversible {
                step.prepare_status = PrepareStatus::CannotPrepare;
                step.execute_status = ExecuteStatus::Escalated;
                step.error = Some(step_error(
                    "irreversible",
                    "the checkpoint is irreversible: a person must decide",
                ));
                settled.push(step.clone());
            } else if step.expired {
                step.prepare_status = PrepareStatus::CannotPrepare;
                step.error = Some(step_error(
                    "checkpoint_expired",
                    "the checkpoint's TTL has passed",
                ));
                settled.push(step.clone());
            } else {
                pending.push(i);
            }
        }
        self.store.update_steps(lease, &settled).await?;
        if settled.iter().any(|s| !s.reversible) {
            self.escalations.irreversible_found(rb, steps).await?;
        }

        let origin = Self::origin(rb);
        let mut inflight = InFlight::new();
        let mut queue = pending.into_iter();
        loop {
            while inflight.len() < self.settings.max_concurrency.max(1) {
                let Some(i) = queue.next() else { break };
                self.launch(
                    &mut inflight,
                    i,
                    &steps[i],
                    &origin,
                    &contexts,
                    CallJob::prepare,
                );
            }
            let Some(batch) = inflight.next_batch().await? else {
                break;
            };
            let mut changed = apply_retrying(steps, batch.retrying);
            for done in batch.done {
                let index = done.index;
                let (step, answer) = settle(steps, done);
                match answer {
                    Final::Answer(PrepareAnswer::Prepared) => {
                        step.prepare_status = PrepareStatus::Prepared;
                        step.error = None;
                    }
                    Final::Answer(PrepareAnswer::CannotPrepare { reason, .. }) => {
                        step.prepare_status = PrepareStatus::CannotPrepare;
                        step.error = Some(step_error("cannot_prepare", &reason));
                    }
                    Final::Failed(e) | Final::DeadlinePassed(e) => {
                        step.prepare_status = PrepareStatus::Unreachable;
                        step.error = Some(step_error(e.code, &e.detail));
                    }
                }
                changed.insert(index);
            }
            self.write_steps(lease, steps, &changed).await?;
        }

        let blocked: Vec<&StepRecord> = steps
            .iter()
            .filter(|s| {
                matches!(
                    s.prepare_status,
                    PrepareStatus::CannotPrepare | PrepareStatus::Unreachable
                )
            })
            .filter(|s| {
                s.execute_status == ExecuteStatus::Pending
                    || s.execute_status == ExecuteStatus::Escalated
            })
            .collect();
        use super::model::OnCannotPrepare as O;
        let critical_blocked = blocked.iter().any(|s| s.critical);
        let next = match (rb.on_cannot_prepare, blocked.is_empty()) {
            (_, true) => RollbackStatus::Executing,
            (O::Abort, false) => {
                return self
                    .finish(lease, rb, steps, Some(RollbackStatus::Aborted))
                    .await;
            }
            (O::Escalate, false) => RollbackStatus::AwaitingDecision,
            (O::Auto, false) if critical_blocked => RollbackStatus::AwaitingDecision,
            (O::Auto | O::Partial, false) => {
                self.skip_blocked(lease, steps).await?;
                RollbackStatus::Executing
            }
        };
        rb.status = next;
        self.escalations.rollback_reached(rb, steps).await?;
        self.save(lease, rb).await?;
        Ok(())
    }

    /// Blocked steps give way: a skipped step no longer holds back its ancestors.
    async fn skip_blocked(
        &self,
        lease: &Lease,
        steps: &mut [StepRecord],
    ) -> Result<(), DriveError> {
        let mut skipped = Vec::new();
        for step in steps.iter_mut() {
            if step.execute_status == ExecuteStatus::Pending
                && matches!(
                    step.prepare_status,
                    PrepareStatus::CannotPrepare | PrepareStatus::Unreachable
                )
            {
                step.execute_status = ExecuteStatus::Skipped;
                skipped.push(step.clone());
            }
        }
        self.store.update_steps(lease, &skipped).await?;
        Ok(())
    }

    async fn execute_phase(
        &self,
        lease: &Lease,
        rb: &mut RollbackRecord,
        steps: &mut [StepRecord],
        lost: &AtomicBool,
    ) -> Result<(), DriveError> {
        match take_decision(rb).as_deref() {
            Some("abort") => {
                return self
                    .finish(lease, rb, steps, Some(RollbackStatus::Aborted))
                    .await;
            }
            Some("proceed_partial") => {
                self.save(lease, rb).await?;
                self.skip_blocked(lease, steps).await?;
            }
            _ => {}
        }
        let contexts = self.contexts(rb, steps).await?;
        let origin = Self::origin(rb);
        let mut order = ExecuteOrder::new(steps);
        let mut inflight = InFlight::new();
        let mut critical_failed = false;
        let mut superseded = false;
        let mut last_check: Option<std::time::Instant> = None;
        loop {
            // A step boundary: a broader rollback may have taken this one over. Looked up at
            // most every 100 ms, so a wide rollback does not read itself once per step.
            let due = last_check.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if due && !superseded && !critical_failed && !lost.load(Ordering::SeqCst) {
                last_check = Some(std::time::Instant::now());
                if let Some((fresh, _)) = self.store.get_rollback(&rb.rollback_id).await? {
                    superseded = fresh.superseded_by.is_some();
                }
            }
            while !superseded
                && !critical_failed
                && inflight.len() < self.settings.max_concurrency.max(1)
            {
                let Some(i) = order.next_ready() else { break };
                let timed_execute = |job: CallJob, reporter| async move {
                    let started = std::time::Instant::now();
                    let outcome = job.execute(reporter).await;
                    metrics::histogram!("unwind_rollback_step_seconds").record(started.elapsed());
                    outcome
                };
                self.launch(
                    &mut inflight,
                    i,
                    &steps[i],
                    &origin,
                    &contexts,
                    timed_execute,
                );
            }
            let Some(batch) = inflight.next_batch().await? else {
                break;
            };
            let mut changed = apply_retrying(steps, batch.retrying);
            for done in batch.done {
                let index = done.index;
                let (step, answer) = settle(steps, done);
                match answer {
                    Final::Answer(a) => {
                        step.execute_status = match a.status {
                            ExecuteResult::Completed => ExecuteStatus::Completed,
                            ExecuteResult::Compensated => ExecuteStatus::Compensated,
                            ExecuteResult::Failed => ExecuteStatus::Failed,
                            ExecuteResult::Escalated => ExecuteStatus::Escalated,
                        };
                        step.error = match step.execute_status {
                            ExecuteStatus::Failed => Some(step_error(
                                "agent_failed",
                                "the agent could not undo the checkpoint",
                            )),
                            ExecuteStatus::Escalated => Some(step_error(
                                "agent_escalated",
                                "the agent asks a person to decide",
                            )),
                            _ => None,
                        };
                        if let Some(token) = &a.ect {
                            self.record_agent_ect(&step.agent, token).await;
                        }
                        step.response = Some(a.raw.clone());
                    }
                    Final::Failed(e) | Final::DeadlinePassed(e) => {
                        step.execute_status = ExecuteStatus::Failed;
                        step.error = Some(step_error(e.code, &e.detail));
                    }
                }
                if step.critical && !step.execute_status.is_undone() {
                    critical_failed = true;
                }
                changed.insert(index);
                order.finished(index, steps);
            }
            // Written before any step that waited for these is called.
            self.write_steps(lease, steps, &changed).await?;
        }
        if superseded {
            return self
                .finish(lease, rb, steps, Some(RollbackStatus::Superseded))
                .await;
        }
        if critical_failed {
            rb.status = RollbackStatus::AwaitingDecision;
            self.escalations.rollback_reached(rb, steps).await?;
            self.save(lease, rb).await?;
            return Ok(());
        }
        self.finish(lease, rb, steps, None).await
    }

    /// Starts step `i`'s call (`run`: prepare or execute) as a task of `inflight`.
    fn launch<T, F, Fut>(
        &self,
        inflight: &mut InFlight<T>,
        i: usize,
        step: &StepRecord,
        origin: &CallOrigin,
        contexts: &Contexts,
        run: F,
    ) where
        T: Send + 'static,
        F: FnOnce(CallJob, Reporter) -> Fut,
        Fut: std::future::Future<Output = (Final<T>, u32)> + Send + 'static,
    {
        let base = step.attempts;
        let job = self.job(step, origin, contexts.for_agent(&step.agent));
        let call = run(job, inflight.reporter(i, base));
        inflight.spawn(async move {
            let (answer, count) = call.await;
            Done {
                index: i,
                answer,
                attempts: base.saturating_add(count),
            }
        });
    }

    /// What every call of `rb` shares.
    fn origin(rb: &RollbackRecord) -> CallOrigin {
        CallOrigin {
            rollback_id: Arc::from(rb.rollback_id.as_str()),
            scope: rb.scope.as_str(),
            wid: Arc::from(rb.wid.as_str()),
            start_jti: Arc::from(rb.evidence_start.as_deref().unwrap_or_default()),
        }
    }

    /// The call of `step` in the rollback of `origin`.
    fn job(&self, step: &StepRecord, origin: &CallOrigin, context: Arc<str>) -> CallJob {
        CallJob {
            agents: self.agents.clone(),
            agent: step.agent.clone(),
            rollback_uri: step.rollback_uri.clone().unwrap_or_default(),
            rollback_id: origin.rollback_id.clone(),
            checkpoint_id: step.checkpoint_id.clone(),
            scope: origin.scope,
            context,
            wid: origin.wid.clone(),
            start_jti: origin.start_jti.clone(),
            deadline: tokio::time::Instant::now() + self.settings.step_deadline,
        }
    }

    /// Writes the steps at `changed` in one transaction.
    async fn write_steps(
        &self,
        lease: &Lease,
        steps: &[StepRecord],
        changed: &BTreeSet<usize>,
    ) -> Result<(), DriveError> {
        let batch: Vec<StepRecord> = changed.iter().map(|&i| steps[i].clone()).collect();
        self.store.update_steps(lease, &batch).await?;
        Ok(())
    }

    /// Records an agent's own `rollback_complete` / `compensate` ECT when it is the step's
    /// agent's and verifies; otherwise it is only logged.
    async fn record_agent_ect(&self, agent: &str, token: &str) {
        let now = chrono::Utc::now().timestamp();
        match self.ledger.verifier().verify(token, now).await {
            Ok(ect) if ect.iss == agent => {
                if let Err(e) = self.ledger.ingest(&[token.to_string()]).await {
                    tracing::warn!(%agent, error = %e, "agent's evidence not recorded");
                }
            }
            Ok(ect) => {
                tracing::warn!(%agent, iss = %ect.iss, "agent returned an ECT of another issuer; not recorded")
            }
            Err(r) => {
                tracing::warn!(%agent, error = %r, "agent's evidence does not verify; not recorded")
            }
        }
    }

    /// Ends the rollback: the terminal state (computed unless given), `failed_agents`, and
    /// exactly one `rollback_complete`.
    async fn finish(
        &self,
        lease: &Lease,
        rb: &mut RollbackRecord,
        steps: &[StepRecord],
        forced: Option<RollbackStatus>,
    ) -> Result<(), DriveError> {
        let undone = |s: &StepRecord| s.execute_status.is_undone();
        let status = forced.unwrap_or_else(|| {
            let requested_undone = steps
                .iter()
                .any(|s| s.checkpoint_id == rb.checkpoint_id && undone(s));
            if !requested_undone {
                RollbackStatus::Failed
            } else if steps.iter().all(undone) {
                RollbackStatus::Completed
            } else {
                RollbackStatus::Partial
            }
        });
        let failed: BTreeSet<String> = steps
            .iter()
            .filter(|s| !undone(s))
            .map(|s| s.agent.clone())
            .collect();
        rb.failed_agents = if status == RollbackStatus::Superseded {
            Vec::new()
        } else {
            failed.into_iter().collect()
        };
        if rb.evidence_start.is_none() || result_str(rb, PENDING_START).is_some() {
            self.record_start(lease, rb).await?;
        }
        let token = match result_str(rb, PENDING_COMPLETE) {
            Some(token) => token,
            None => {
                let mut terminal = rb.clone();
                terminal.status = status;
                let start = rb.evidence_start.clone().unwrap_or_default();
                let ev = self
                    .evidence
                    .rollback_complete(&terminal, steps, &start, chrono::Utc::now().timestamp())
                    .map_err(|e| DriveError::Evidence(e.to_string()))?;
                rb.evidence_complete = Some(ev.jti);
                set_result(rb, PENDING_COMPLETE, Value::String(ev.token.clone()));
                set_result(rb, "final_status", json!(status.as_str()));
                self.save(lease, rb).await?;
                ev.token
            }
        };
        self.record_evidence(std::slice::from_ref(&token)).await?;
        set_result(rb, PENDING_COMPLETE, Value::Null);
        // The status signed in the evidence wins over a recomputation after a restart.
        rb.status = rb
            .result
            .get("final_status")
            .and_then(Value::as_str)
            .and_then(RollbackStatus::parse)
            .unwrap_or(status);
        self.escalations.rollback_reached(rb, steps).await?;
        self.save(lease, rb).await?;
        metrics::counter!("unwind_rollbacks_total", "status" => rb.status.as_str()).increment(1);
        tracing::info!(rollback_id = %rb.rollback_id, status = rb.status.as_str(), "rollback finished");
        Ok(())
    }

    async fn save(&self, lease: &Lease, rb: &mut RollbackRecord) -> Result<(), DriveError> {
        *rb = self.store.update_rollback(lease, rb).await?;
        Ok(())
    }
}

/// Each agent's `Execution-Context` for one rollback.
struct Contexts {
    /// The rollback's `rollback_start`, for every agent its `aud` names.
    shared: Arc<str>,
    /// Agents' own contexts, when the shared one could not name them all.
    per_agent: HashMap<String, Arc<str>>,
}

impl Contexts {
    fn for_agent(&self, agent: &str) -> Arc<str> {
        self.per_agent.get(agent).unwrap_or(&self.shared).clone()
    }
}

/// One step's agent call, owned: calls run as tasks of their own, so that they keep moving
/// while the driver writes their results. (Polled from inside the driver's task, a call
/// suspended in the middle of a store query would hold a pool connection that the driver's
/// own write is waiting for.)
struct CallJob {
    agents: Arc<AgentClient>,
    agent: String,
    rollback_uri: String,
    rollback_id: Arc<str>,
    checkpoint_id: String,
    scope: &'static str,
    context: Arc<str>,
    wid: Arc<str>,
    start_jti: Arc<str>,
    /// Each step's deadline starts with its first call.
    deadline: tokio::time::Instant,
}

impl CallJob {
    fn call(&self) -> StepCall<'_> {
        StepCall {
            agent: &self.agent,
            rollback_uri: &self.rollback_uri,
            rollback_id: &self.rollback_id,
            checkpoint_id: &self.checkpoint_id,
            scope: self.scope,
            context: &self.context,
            wid: &self.wid,
            start_jti: &self.start_jti,
        }
    }

    /// Prepares until a final answer; also returns the number of calls made.
    async fn prepare(self, reporter: Reporter) -> (Final<PrepareAnswer>, u32) {
        let mut count = 0;
        let answer = self
            .agents
            .prepare(&self.call(), self.deadline, |r| {
                count = r.attempt;
                reporter.report(r);
            })
            .await;
        (answer, count)
    }

    /// Executes until a final answer; also returns the number of calls made.
    async fn execute(self, reporter: Reporter) -> (Final<ExecuteAnswer>, u32) {
        let mut count = 0;
        let answer = self
            .agents
            .execute(&self.call(), self.deadline, |r| {
                count = r.attempt;
                reporter.report(r);
            })
            .await;
        (answer, count)
    }
}

/// What every call of one rollback shares.
struct CallOrigin {
    rollback_id: Arc<str>,
    scope: &'static str,
    wid: Arc<str>,
    start_jti: Arc<str>,
}

/// A step's error as stored (details are cut at 500 characters).
pub(super) fn step_error(code: &str, detail: &str) -> StepError {
    StepError {
        code: code.to_string(),
        detail: detail.chars().take(500).collect(),
    }
}

/// A call that ended: its step with the final attempt count and no next attempt, and the
/// answer for the phase to interpret.
fn settle<T>(steps: &mut [StepRecord], done: Done<T>) -> (&mut StepRecord, Final<T>) {
    let step = &mut steps[done.index];
    step.attempts = done.attempts;
    step.next_attempt_at = None;
    (step, done.answer)
}

/// Retry reports applied to the steps; the indices of the steps they changed.
fn apply_retrying(steps: &mut [StepRecord], reports: Vec<Retrying>) -> BTreeSet<usize> {
    let mut changed = BTreeSet::new();
    for r in reports {
        let step = &mut steps[r.index];
        step.attempts = r.attempts;
        step.error = Some(r.error);
        step.next_attempt_at = Some(r.next_attempt_at);
        changed.insert(r.index);
    }
    changed
}

/// Which prepared steps may execute now: those whose every downstream step in the plan is
/// final. Counts what each step still waits for, so a finished step costs its dependents only.
/// A step that is already final when the order is made (skipped, escalated, done before a
/// restart) is looked through: its ancestors wait for what it waited for, so a skipped step
/// lets its ancestors go without letting them overtake the checkpoints below it.
struct ExecuteOrder {
    /// Steps a step still waits for, by index.
    blockers: Vec<usize>,
    /// The steps that wait for each step.
    dependents: Vec<Vec<usize>>,
    ready: std::collections::VecDeque<usize>,
}

impl ExecuteOrder {
    fn new(steps: &[StepRecord]) -> Self {
        let index: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.checkpoint_id.as_str(), i))
            .collect();
        let below: Vec<Vec<usize>> = steps
            .iter()
            .map(|s| {
                s.waits_for
                    .iter()
                    .filter_map(|w| index.get(w.as_str()).copied())
                    .collect()
            })
            .collect();
        let mut blockers = vec![0; steps.len()];
        let mut dependents = vec![Vec::new(); steps.len()];
        // `seen[j] == i + 1`: step j was met in step i's walk (one array for every walk).
        let mut seen = vec![0usize; steps.len()];
        let mut stack = Vec::new();
        for i in 0..steps.len() {
            stack.extend(below[i].iter().copied());
            while let Some(j) = stack.pop() {
                if seen[j] == i + 1 {
                    continue;
                }
                seen[j] = i + 1;
                if steps[j].execute_status.is_final() {
                    stack.extend(below[j].iter().copied());
                } else {
                    blockers[i] += 1;
                    dependents[j].push(i);
                }
            }
        }
        let ready = (0..steps.len())
            .filter(|&i| blockers[i] == 0 && Self::runnable(&steps[i]))
            .collect();
        Self {
            blockers,
            dependents,
            ready,
        }
    }

    fn runnable(step: &StepRecord) -> bool {
        step.execute_status == ExecuteStatus::Pending
            && step.prepare_status == PrepareStatus::Prepared
    }

    fn next_ready(&mut self) -> Option<usize> {
        self.ready.pop_front()
    }

    /// Step `i` is final: the steps that waited only for it become ready.
    fn finished(&mut self, i: usize, steps: &[StepRecord]) {
        for &d in &self.dependents[i] {
            self.blockers[d] = self.blockers[d].saturating_sub(1);
            if self.blockers[d] == 0 && Self::runnable(&steps[d]) {
                self.ready.push_back(d);
            }
        }
    }
}

fn result_str(rb: &RollbackRecord, key: &str) -> Option<String> {
    rb.result
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn set_result(rb: &mut RollbackRecord, key: &str, value: Value) {
    if !rb.result.is_object() {
        rb.result = json!({});
    }
    if let Some(map) = rb.result.as_object_mut() {
        if value.is_null() {
            map.remove(key);
        } else {
            map.insert(key.to_string(), value);
        }
    }
}

/// The operator decision waiting to be applied, removed from the record (the caller saves).
fn take_decision(rb: &mut RollbackRecord) -> Option<String> {
    let decision = result_str(rb, "pending_decision");
    if decision.is_some() {
        set_result(rb, "pending_decision", Value::Null);
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps `names`, each waiting for the checkpoints listed beside it, with the given
    /// statuses.
    fn steps(spec: &[(&str, &[&str], ExecuteStatus)]) -> Vec<StepRecord> {
        spec.iter()
            .map(|(name, waits, status)| StepRecord {
                rollback_id: "r".into(),
                checkpoint_id: (*name).into(),
                agent: "a".into(),
                rollback_uri: None,
                rank: 0,
                critical: false,
                reversible: true,
                expired: false,
                waits_for: waits.iter().map(|w| (*w).to_string()).collect(),
                prepare_status: PrepareStatus::Prepared,
                execute_status: *status,
                attempts: 0,
                next_attempt_at: None,
                error: None,
                response: None,
                reused_from: None,
                updated_at: chrono::Utc::now(),
            })
            .collect()
    }

    #[test]
    fn a_skipped_step_does_not_let_its_ancestor_overtake_what_is_below_it() {
        use ExecuteStatus::{Pending, Skipped};
        // root -> skipped -> leaf: root must wait for leaf.
        let mut s = steps(&[
            ("root", &["mid"], Pending),
            ("mid", &["leaf"], Skipped),
            ("leaf", &[], Pending),
        ]);
        let mut order = ExecuteOrder::new(&s);
        assert_eq!(order.next_ready(), Some(2), "the leaf goes first");
        assert_eq!(order.next_ready(), None, "the root waits for the leaf");
        s[2].execute_status = ExecuteStatus::Completed;
        order.finished(2, &s);
        assert_eq!(order.next_ready(), Some(0));
    }

    #[test]
    fn shared_descendants_behind_final_steps_count_once() {
        use ExecuteStatus::{Completed, Escalated, Pending};
        // root waits for a and b (both final), which both wait for leaf.
        let mut s = steps(&[
            ("root", &["a", "b"], Pending),
            ("a", &["leaf"], Escalated),
            ("b", &["leaf"], Completed),
            ("leaf", &[], Pending),
        ]);
        let mut order = ExecuteOrder::new(&s);
        assert_eq!(order.next_ready(), Some(3));
        assert_eq!(order.next_ready(), None);
        s[3].execute_status = ExecuteStatus::Failed;
        order.finished(3, &s);
        assert_eq!(order.next_ready(), Some(0), "one blocker, released once");
    }
}
