//! The coordinator's circuit breakers toward its agents, one per agent id, shared by replicas.
//!
//! Each replica counts its own calls in memory ([`Breaker`]); what replicas must agree on —
//! that a breaker is open, until when, and who probes it — is the agent's row in the store
//! ([`CircuitStore`]), changed only by compare-and-set. A replica reads that row at most once a
//! second per agent (a hot path is not one query per call), so a peer's opening reaches it
//! within a second. Of two replicas opening the same breaker, the one whose write wins signs
//! the `circuit_breaker_open` ECT; the other adopts the stored state. A half-open probe is
//! claimed by a conditional update, so one replica probes while the others keep refusing.
//!
//! When the store cannot be reached the breakers keep working on local state alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::circuit::{Admission, Breaker, CircuitSettings, CircuitState, PROBE_WAIT, Transition};
use super::latency::LatencyTracker;
use crate::hitl::{Escalations, NewEscalation};
use crate::ledger::Ledger;
use crate::rollback::evidence::EvidenceSigner;
use crate::rollback::model::{ALL_STATUSES, RollbackFilter};
use crate::store::hitl::EscalationKind;
use crate::store::{CircuitRow, Store};

/// How long a replica trusts its copy of an agent's shared row.
const SHARED_CACHE: Duration = Duration::from_secs(1);

/// The call a breaker decision is about: which agent, and the rollback it serves (the `wid`
/// and `rollback_start` jti that evidence of a transition names).
#[derive(Debug, Clone, Copy)]
pub struct CallSite<'a> {
    pub agent: &'a str,
    pub wid: &'a str,
    pub start_jti: &'a str,
}

/// A breaker's answer to a caller.
#[derive(Debug)]
pub enum Gate<'a> {
    /// Call, then hand the permit back with [`Circuits::record`].
    Pass(Permit<'a>),
    /// Refused locally; nothing may be sent before `retry_after`.
    Refused { retry_after: Duration },
}

/// An admitted call. Dropped without [`Circuits::record`] (a cancelled call), a probe frees
/// its slot for another caller.
#[derive(Debug)]
pub struct Permit<'a> {
    circuits: &'a Circuits,
    agent: String,
    probe: bool,
    recorded: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.circuits
                .entry(&self.agent, |e| e.breaker.abandon_probe());
        }
    }
}

/// One breaker as the circuits endpoint shows it (the cascade draft's format).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CircuitStatus {
    pub downstream_agent: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    pub error_rate: f64,
    pub window_s: u64,
    /// The `rollback_start` of the last failed call.
    pub last_failure_ect: Option<String>,
    pub cooldown_remaining_s: u64,
    /// This replica's view of the agent's latency (design.md §10): the p99 of its recent calls,
    /// their slow moving baseline, and whether the p99 is over three times the baseline.
    pub latency_p99_ms: Option<f64>,
    pub latency_baseline_ms: Option<f64>,
    pub latency_spike: bool,
}

struct Entry {
    breaker: Breaker,
    latency: LatencyTracker,
    /// The shared row as last read or written.
    shared: Option<CircuitRow>,
    fetched: Option<Instant>,
    last_failure_ect: Option<String>,
}

/// Every agent's breaker in this process.
pub struct Circuits {
    settings: CircuitSettings,
    store: Arc<dyn Store>,
    ledger: Arc<Ledger>,
    evidence: EvidenceSigner,
    /// A half-open row this old is a probe whose replica went away: it may be claimed again.
    probe_stale: Duration,
    local: Mutex<HashMap<String, Entry>>,
    /// Where an opening that crosses workflows escalates.
    escalations: Option<Arc<Escalations>>,
}

impl std::fmt::Debug for Circuits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuits")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Circuits {
    /// `call_timeout` bounds a probe: a half-open claim older than twice that is abandoned.
    pub fn new(
        settings: CircuitSettings,
        store: Arc<dyn Store>,
        ledger: Arc<Ledger>,
        evidence: EvidenceSigner,
        call_timeout: Duration,
    ) -> Self {
        Self {
            settings,
            store,
            ledger,
            evidence,
            probe_stale: call_timeout.saturating_mul(2).max(PROBE_WAIT),
            local: Mutex::new(HashMap::new()),
            escalations: None,
        }
    }

    /// Escalates openings toward an agent that has steps in the active rollbacks of two or
    /// more workflows (design.md §8, "failure crossing a workflow boundary").
    pub fn with_escalations(mut self, escalations: Arc<Escalations>) -> Self {
        self.escalations = Some(escalations);
        self
    }

    /// May a call to `site.agent` be made now?
    pub async fn admit(&self, site: CallSite<'_>) -> Gate<'_> {
        self.refresh(site.agent, false).await;
        let admission = self.entry(site.agent, |e| e.breaker.admit(Instant::now()));
        let probe = match admission {
            Admission::Call => false,
            Admission::Refuse { retry_after } => return Gate::Refused { retry_after },
            Admission::Probe if self.claim_probe(site.agent).await => true,
            Admission::Probe => {
                return Gate::Refused {
                    retry_after: PROBE_WAIT,
                };
            }
        };
        Gate::Pass(Permit {
            circuits: self,
            agent: site.agent.to_string(),
            probe,
            recorded: false,
        })
    }

    /// The outcome of an admitted call; `failed` when it counts against the breaker.
    pub async fn record(
        &self,
        mut permit: Permit<'_>,
        site: CallSite<'_>,
        failed: bool,
        elapsed: Duration,
    ) {
        permit.recorded = true;
        let (transition, spike) = self.entry(site.agent, |e| {
            if failed {
                e.last_failure_ect = Some(site.start_jti.to_string());
            }
            let spike = e.latency.observe(elapsed.as_secs_f64() * 1000.0);
            (
                e.breaker.record(Instant::now(), failed, permit.probe),
                spike,
            )
        });
        if spike {
            metrics::counter!("unwind_agent_latency_spikes_total").increment(1);
            tracing::warn!(
                agent = site.agent,
                "latency spike: p99 over 3x the baseline"
            );
        }
        match transition {
            None => {}
            Some(Transition::Opened {
                error_rate,
                cooldown,
                reopened,
            }) => self.opened(site, error_rate, cooldown, reopened).await,
            Some(Transition::Closed { total_cooldown }) => {
                self.closed(site.agent, total_cooldown).await
            }
        }
    }

    /// Every breaker known here or in the store.
    pub async fn statuses(&self) -> Vec<CircuitStatus> {
        let rows = match self.store.list_circuits().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "circuits: shared state unavailable; local state only");
                Vec::new()
            }
        };
        let window_s = self.settings.window.as_secs();
        let now = Instant::now();
        let mut out: BTreeMap<String, CircuitStatus> = BTreeMap::new();
        for (agent, e) in self.lock().iter_mut() {
            out.insert(
                agent.clone(),
                CircuitStatus {
                    downstream_agent: agent.clone(),
                    state: e.breaker.state(now).as_str().into(),
                    error_rate: e.breaker.error_rate(now),
                    window_s,
                    last_failure_ect: e.last_failure_ect.clone(),
                    cooldown_remaining_s: ceil_secs(e.breaker.cooldown_remaining(now)),
                    latency_p99_ms: e.latency.p99_ms(),
                    latency_baseline_ms: e.latency.baseline_ms(),
                    latency_spike: e.latency.spiking(),
                },
            );
        }
        let now_ms = crate::store::circuits::now_ms();
        for row in rows {
            let status = out
                .entry(row.agent.clone())
                .or_insert_with(|| CircuitStatus {
                    downstream_agent: row.agent.clone(),
                    state: CircuitState::Closed.as_str().into(),
                    error_rate: 0.0,
                    window_s,
                    last_failure_ect: None,
                    cooldown_remaining_s: 0,
                    latency_p99_ms: None,
                    latency_baseline_ms: None,
                    latency_spike: false,
                });
            if status.last_failure_ect.is_none() {
                status.last_failure_ect = row.last_failure_ect.clone();
            }
            if row.state() != CircuitState::Closed {
                // What the replicas agreed on wins over this replica's own view.
                let remaining = self.shared_remaining(&row, now_ms);
                status.state = match row.state() {
                    CircuitState::Open if remaining.is_zero() => CircuitState::HalfOpen,
                    state => state,
                }
                .as_str()
                .into();
                status.error_rate = row.error_rate;
                status.cooldown_remaining_s = match row.state() {
                    CircuitState::Open => ceil_secs(remaining),
                    _ => 0,
                };
            }
        }
        out.into_values().collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves a consistent map (every update is one step).
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<T>(&self, agent: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut local = self.lock();
        let entry = local.entry(agent.to_string()).or_insert_with(|| Entry {
            breaker: Breaker::new(self.settings),
            latency: LatencyTracker::default(),
            shared: None,
            fetched: None,
            last_failure_ect: None,
        });
        f(entry)
    }

    /// Reads the agent's shared row when the copy is older than [`SHARED_CACHE`] (or always,
    /// with `force`) and adopts a peer's change.
    async fn refresh(&self, agent: &str, force: bool) {
        let due = self.entry(agent, |e| {
            let due = force || e.fetched.is_none_or(|t| t.elapsed() >= SHARED_CACHE);
            if due {
                // One refresh per agent at a time: calls that find the copy stale meanwhile
                // use it as it is rather than all asking the store at once.
                e.fetched = Some(Instant::now());
            }
            due
        });
        if !due {
            return;
        }
        let row = self.store.get_circuit(agent).await;
        self.entry(agent, |e| {
            e.fetched = Some(Instant::now());
            match row {
                Ok(Some(row)) => self.adopt(e, row),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%agent, error = %err, "circuit: shared state unavailable")
                }
            }
        });
    }

    /// Takes a newer shared row over: a peer opened, reopened, claimed the probe or closed.
    fn adopt(&self, e: &mut Entry, row: CircuitRow) {
        let newer = e.shared.as_ref().is_none_or(|s| s.version < row.version);
        if newer {
            let now = Instant::now();
            match row.state() {
                CircuitState::Open | CircuitState::HalfOpen => {
                    let remaining = self.shared_remaining(&row, crate::store::circuits::now_ms());
                    e.breaker.adopt_open(
                        now,
                        remaining,
                        secs(row.cooldown_s),
                        secs(row.total_cooldown_s),
                        row.error_rate,
                    );
                }
                CircuitState::Closed if e.breaker.state(now) != CircuitState::Closed => {
                    e.breaker.adopt_closed();
                }
                CircuitState::Closed => {}
            }
            if row.last_failure_ect.is_some() {
                e.last_failure_ect = row.last_failure_ect.clone();
            }
            e.shared = Some(row);
        }
    }

    /// How long a shared open row still refuses calls: its cooldown; a half-open row, until
    /// its probe is stale.
    fn shared_remaining(&self, row: &CircuitRow, now_ms: i64) -> Duration {
        let ends_ms = match row.state() {
            CircuitState::Open => row
                .opened_at_ms
                .unwrap_or(row.updated_at_ms)
                .saturating_add(row.cooldown_s.saturating_mul(1000)),
            CircuitState::HalfOpen => row
                .updated_at_ms
                .saturating_add(i64::try_from(self.probe_stale.as_millis()).unwrap_or(i64::MAX)),
            CircuitState::Closed => now_ms,
        };
        Duration::from_millis(u64::try_from(ends_ms.saturating_sub(now_ms)).unwrap_or(0))
    }

    /// Claims the one probe of a half-open breaker for this replica. `false` when a peer got
    /// there first (its state is adopted).
    async fn claim_probe(&self, agent: &str) -> bool {
        let shared = self.entry(agent, |e| e.shared.clone());
        // Opened while the store was unreachable: nothing to agree on.
        let Some(row) = shared.filter(|r| r.state() != CircuitState::Closed) else {
            return true;
        };
        let claim = CircuitRow {
            state: CircuitState::HalfOpen.as_str().into(),
            ..row.clone()
        };
        match self.store.put_circuit(&claim, row.version).await {
            Ok(Some(stored)) => {
                self.entry(agent, |e| e.shared = Some(stored));
                transition_metric(CircuitState::HalfOpen);
                true
            }
            Ok(None) => {
                self.entry(agent, |e| e.breaker.abandon_probe());
                self.refresh(agent, true).await;
                false
            }
            Err(err) => {
                tracing::warn!(%agent, error = %err, "circuit: probe not shared; probing anyway");
                true
            }
        }
    }

    /// Shares an opening and signs its evidence, unless a peer's opening came first.
    async fn opened(
        &self,
        site: CallSite<'_>,
        error_rate: f64,
        cooldown: Duration,
        reopened: bool,
    ) {
        let agent = site.agent;
        let (total, mut base) =
            self.entry(agent, |e| (e.breaker.total_cooldown(), e.shared.clone()));
        let now = chrono::Utc::now().timestamp();
        let ev = match self.evidence.circuit_open(
            agent,
            error_rate,
            self.settings.window.as_secs(),
            cooldown.as_secs(),
            (site.wid, site.start_jti),
            now,
        ) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(%agent, error = %e, "circuit_breaker_open not signed");
                return;
            }
        };
        let row = CircuitRow {
            agent: agent.to_string(),
            state: CircuitState::Open.as_str().into(),
            opened_at_ms: Some(crate::store::circuits::now_ms()),
            cooldown_s: i64::try_from(cooldown.as_secs()).unwrap_or(i64::MAX),
            total_cooldown_s: i64::try_from(total.as_secs()).unwrap_or(i64::MAX),
            error_rate,
            last_failure_ect: Some(site.start_jti.to_string()),
            open_ect: Some(ev.jti.clone()),
            open_wid: Some(site.wid.to_string()),
            updated_at_ms: 0,
            version: 0,
        };
        // A write lost to a peer that merely closed the row is tried again on the fresh row.
        for _ in 0..3 {
            let expected = base.as_ref().map_or(0, |r| r.version);
            match self.store.put_circuit(&row, expected).await {
                Ok(Some(stored)) => {
                    self.entry(agent, |e| e.shared = Some(stored));
                    transition_metric(CircuitState::Open);
                    tracing::warn!(%agent, error_rate, cooldown_s = cooldown.as_secs(), reopened, "circuit breaker opened");
                    self.record_evidence(agent, &ev.token).await;
                    if let Some(escalations) = &self.escalations {
                        // Off the call path: it reads the active rollbacks.
                        let (store, escalations) = (self.store.clone(), escalations.clone());
                        let agent = agent.to_string();
                        tokio::spawn(async move {
                            if let Err(e) =
                                escalate_cross_workflow(store.as_ref(), &escalations, &agent).await
                            {
                                tracing::warn!(%agent, error = %e, "cross-workflow escalation not raised");
                            }
                        });
                    }
                    return;
                }
                Ok(None) => match self.store.get_circuit(agent).await {
                    Ok(Some(fresh)) if fresh.state() != CircuitState::Closed && !reopened => {
                        // A peer opened it: one opening, one ECT.
                        self.entry(agent, |e| self.adopt(e, fresh));
                        return;
                    }
                    Ok(fresh) => base = fresh,
                    Err(e) => {
                        tracing::warn!(%agent, error = %e, "circuit: opening not shared");
                        return;
                    }
                },
                Err(e) => {
                    tracing::warn!(%agent, error = %e, "circuit: opening not shared");
                    return;
                }
            }
        }
    }

    /// Shares a closing and signs `circuit_breaker_close` as the child of the last opening.
    async fn closed(&self, agent: &str, total: Duration) {
        let Some(base) = self.entry(agent, |e| e.shared.clone()) else {
            return;
        };
        let row = CircuitRow {
            state: CircuitState::Closed.as_str().into(),
            opened_at_ms: None,
            cooldown_s: i64::try_from(self.settings.cooldown.as_secs()).unwrap_or(i64::MAX),
            total_cooldown_s: 0,
            error_rate: 0.0,
            ..base.clone()
        };
        match self.store.put_circuit(&row, base.version).await {
            Ok(Some(stored)) => {
                self.entry(agent, |e| e.shared = Some(stored));
                transition_metric(CircuitState::Closed);
                tracing::info!(%agent, total_cooldown_s = total.as_secs(), "circuit breaker closed");
                let (Some(wid), Some(open)) = (&base.open_wid, &base.open_ect) else {
                    return;
                };
                let now = chrono::Utc::now().timestamp();
                match self
                    .evidence
                    .circuit_close(agent, total.as_secs(), (wid, open), now)
                {
                    Ok(ev) => self.record_evidence(agent, &ev.token).await,
                    Err(e) => {
                        tracing::warn!(%agent, error = %e, "circuit_breaker_close not signed")
                    }
                }
            }
            Ok(None) => self.refresh(agent, true).await,
            Err(e) => tracing::warn!(%agent, error = %e, "circuit: closing not shared"),
        }
    }

    async fn record_evidence(&self, agent: &str, token: &str) {
        let refused = match self.ledger.ingest(&[token.to_string()]).await {
            Ok(results) => results
                .into_iter()
                .find_map(|r| r.outcome.err())
                .map(|r| r.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = refused {
            tracing::warn!(%agent, %reason, "circuit evidence not recorded");
        }
    }
}

fn transition_metric(to: CircuitState) {
    metrics::counter!("unwind_circuit_transitions_total", "state" => to.as_str()).increment(1);
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Raises one `cross_workflow` escalation per workflow when the agent whose breaker opened has
/// steps in the active rollbacks of two or more workflows; the detail names the agent, every
/// such workflow and that workflow's rollbacks. Escalations deduplicate per workflow and agent.
async fn escalate_cross_workflow(
    store: &dyn Store,
    escalations: &Escalations,
    agent: &str,
) -> Result<(), crate::hitl::HitlError> {
    let mut by_wid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for status in ALL_STATUSES.iter().copied().filter(|s| !s.is_terminal()) {
        let filter = RollbackFilter {
            wid: None,
            status: Some(status),
        };
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .list_rollbacks(&filter, cursor.as_deref(), 1000)
                .await?;
            for rb in page.items {
                if rb.plan.steps.iter().any(|s| s.agent == agent) {
                    by_wid.entry(rb.wid).or_default().push(rb.rollback_id);
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    if by_wid.len() < 2 {
        return Ok(());
    }
    let workflows: Vec<&String> = by_wid.keys().collect();
    for (wid, rollbacks) in &by_wid {
        escalations
            .raise(NewEscalation {
                kind: EscalationKind::CrossWorkflow,
                wid: wid.clone(),
                rollback_id: None,
                cascade_id: None,
                detail: serde_json::json!({
                    "agent": agent,
                    "workflows": workflows,
                    "rollbacks": rollbacks,
                }),
            })
            .await?;
    }
    Ok(())
}
