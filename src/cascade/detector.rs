//! The detection task: takes new nodes off the ingest queue, reads their neighbourhood, and
//! raises each cascade once.
//!
//! Raising is crash-safe without a lock: the `cascade_detected` ECT is signed first, stored
//! with its alert in one insert that loses to an existing alert of the same pattern and root
//! cause (so two replicas seeing the same cascade store one alert), and only then recorded in
//! the ledger. An alert whose ECT is not yet recorded is recorded again when the task starts.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::detect::{self, Detection, Node};
use crate::api::cascades::CascadeView;
use crate::dag::WorkflowGraph;
use crate::ect::VerifiedEct;
use crate::hitl::{Escalations, NewEscalation};
use crate::ledger::{IngestObserver, Ledger};
use crate::rollback::Scope;
use crate::rollback::evidence::EvidenceSigner;
use crate::rollback::request::{Requester, RollbackRequest, submit};
use crate::store::cascade::{CascadeAlert, NewCascadeAlert};
use crate::store::hitl::EscalationKind;
use crate::store::{EctRecord, Store, StoreError};

/// How detection behaves (`[cascade]`).
#[derive(Debug, Clone)]
pub struct CascadeSettings {
    pub window_s: i64,
    pub min_reporters: usize,
    /// Nodes waiting for detection; beyond this, new ones are dropped (and counted) rather
    /// than slowing ingest down.
    pub queue: usize,
    /// Workflows (or `*`) whose cascades start a rollback from the root cause.
    pub auto_rollback: Vec<String>,
    /// A cascade involving more agents than this escalates to a person.
    pub escalate_above_agents: usize,
}

impl CascadeSettings {
    fn rolls_back(&self, wid: Option<&str>) -> bool {
        wid.is_some_and(|wid| self.auto_rollback.iter().any(|w| w == "*" || w == wid))
    }
}

/// Who asks for the rollbacks that the auto-rollback policy starts.
pub const CASCADE_REQUESTER: &str = "unwind:cascade";

/// The ingest side of detection: hands error nodes and breaker reports to the task.
pub struct DetectionQueue {
    sender: mpsc::Sender<Node>,
}

impl DetectionQueue {
    /// The queue and the receiver [`CascadeDetector::run`] reads.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Node>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (Self { sender }, receiver)
    }
}

/// How far back a starting detector looks for nodes a killed process may not have examined.
pub const CATCH_UP_S: i64 = 600;

/// Whether detection looks at a node: errors and breaker reports.
fn examined(exec_act: &str, ext: &serde_json::Map<String, serde_json::Value>) -> bool {
    crate::ect::is_error_node(exec_act, ext) || exec_act == detect::CIRCUIT_BREAKER_OPEN
}

impl IngestObserver for DetectionQueue {
    fn appended(&self, ect: &VerifiedEct) {
        if !examined(&ect.exec_act, &ect.ext) {
            return;
        }
        let node = Node {
            jti: ect.jti.clone(),
            wid: ect.wid.clone(),
            iss: ect.iss.clone(),
            exec_act: ect.exec_act.clone(),
            iat: ect.iat,
            parents: ect.parents.clone(),
            ext: ect.ext.clone(),
        };
        if self.sender.try_send(node).is_err() {
            metrics::counter!("unwind_cascade_queue_dropped_total").increment(1);
            tracing::warn!(jti = %ect.jti, "cascade detection queue full: node not examined");
        }
    }
}

/// A cascade that was raised now (not one found already raised).
#[derive(Debug, Clone)]
pub struct RaisedAlert {
    pub alert: CascadeAlert,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cascade evidence: {0}")]
    Evidence(String),
    #[error("cascade escalation: {0}")]
    Escalation(String),
}

/// Runs detection for one process.
pub struct CascadeDetector {
    store: Arc<dyn Store>,
    ledger: Arc<Ledger>,
    signer: EvidenceSigner,
    settings: CascadeSettings,
    /// Told of every alert raised here.
    on_raised: Option<mpsc::UnboundedSender<RaisedAlert>>,
    /// Where cascades above the threshold escalate.
    escalations: Option<Arc<Escalations>>,
}

impl CascadeDetector {
    pub fn new(
        store: Arc<dyn Store>,
        ledger: Arc<Ledger>,
        signer: EvidenceSigner,
        settings: CascadeSettings,
    ) -> Self {
        Self {
            store,
            ledger,
            signer,
            settings,
            on_raised: None,
            escalations: None,
        }
    }

    /// Escalates cascades above `escalate_above_agents` through `escalations` (a `cascade`
    /// escalation and its `cascade.detected` webhook event).
    pub fn escalating_to(mut self, escalations: Arc<Escalations>) -> Self {
        self.escalations = Some(escalations);
        self
    }

    /// Sends every alert raised by this detector to `sink`.
    pub fn on_raised(mut self, sink: mpsc::UnboundedSender<RaisedAlert>) -> Self {
        self.on_raised = Some(sink);
        self
    }

    /// Examines nodes until the queue closes or `shutdown` completes.
    pub async fn run(
        self,
        mut nodes: mpsc::Receiver<Node>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        if let Err(e) = self.record_pending().await {
            tracing::warn!(error = %e, "cannot record pending cascade evidence");
        }
        match self.catch_up().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(nodes = n, "examined recent nodes again after the start"),
            Err(e) => tracing::warn!(error = %e, "cannot examine recent nodes after the start"),
        }
        tokio::pin!(shutdown);
        loop {
            let node = tokio::select! {
                _ = &mut shutdown => return,
                n = nodes.recv() => match n { Some(n) => n, None => return },
            };
            if let Err(e) = self.examine(&node).await {
                tracing::warn!(jti = %node.jti, error = %e, "cascade detection failed for a node");
            }
        }
    }

    /// Examines again the error and breaker nodes among the newest `queue` ledger positions
    /// received in the last [`CATCH_UP_S`]: a process killed with nodes in its queue (kept in
    /// memory) loses them, and the next one to start examines them. Raising is idempotent, so
    /// nodes already examined cost queries but raise nothing twice. Returns the nodes examined.
    pub async fn catch_up(&self) -> Result<usize, DetectError> {
        let since =
            chrono::Utc::now() - chrono::Duration::seconds(CATCH_UP_S.max(self.settings.window_s));
        let limit = u32::try_from(self.settings.queue).unwrap_or(u32::MAX);
        let nodes: Vec<Node> = self
            .store
            .newest_ects(limit)
            .await?
            .into_iter()
            .filter(|r| r.received_at >= since && examined(&r.exec_act, &r.ext))
            .map(node_of)
            .collect();
        for node in &nodes {
            self.examine(node).await?;
        }
        Ok(nodes.len())
    }

    /// Runs every pattern around `node` and raises what it completes; returns the alerts
    /// raised now.
    pub async fn examine(&self, node: &Node) -> Result<Vec<RaisedAlert>, DetectError> {
        let window = self.settings.window_s;
        let mut found: Vec<Detection> = Vec::new();
        if node.breaker_downstream().is_some() {
            let reports = self
                .store
                .ects_issued_between(
                    detect::CIRCUIT_BREAKER_OPEN,
                    node.iat.saturating_sub(window),
                    node.iat.saturating_add(window),
                    1000,
                )
                .await?;
            let reports: Vec<Node> = reports.into_iter().map(node_of).collect();
            found.extend(detect::error_clustering(
                node,
                &reports,
                window,
                self.settings.min_reporters,
            ));
        }
        if node.is_error() {
            let ancestors: Vec<Node> = self
                .store
                .ancestors_of(&node.jti, detect::MAX_ANCESTOR_DEPTH)
                .await?
                .into_iter()
                .map(node_of)
                .collect();
            found.extend(detect::depth_first(node, &ancestors, window));
            for parent in ancestors.iter().filter(|a| node.parents.contains(&a.jti)) {
                let children: Vec<Node> = self
                    .store
                    .children_of(&parent.jti, 1000)
                    .await?
                    .into_iter()
                    .map(node_of)
                    .collect();
                found.extend(detect::breadth_first(node, parent, &children, window));
            }
        }
        let mut raised = Vec::new();
        for detection in found {
            if let Some(alert) = self.raise(&detection).await? {
                raised.push(alert);
            }
        }
        Ok(raised)
    }

    /// Stores the alert and its evidence unless this cascade was raised before.
    async fn raise(&self, d: &Detection) -> Result<Option<RaisedAlert>, DetectError> {
        let pattern = d.pattern.as_str();
        if self
            .store
            .cascade_alert_exists(pattern, &d.root_cause)
            .await?
        {
            // The same cascade, seen again: it may have spread to more agents, enough to
            // escalate now.
            if let Some(wider) = self
                .store
                .widen_cascade_alert(pattern, &d.root_cause, &d.affected_agents)
                .await?
            {
                self.escalate(&wider).await?;
            }
            return Ok(None);
        }
        let nodes = match &d.wid {
            Some(wid) => self.store.workflow_nodes(wid).await?,
            None => self.store.unscoped_nodes().await?,
        };
        let graph = WorkflowGraph::build(d.wid.clone(), nodes).await;
        let now = chrono::Utc::now().timestamp();
        let radius = graph.blast_radius(&d.root_cause, None, now);
        let (blast_radius, radius_agents) = radius
            .map(|r| (r.nodes, r.agents))
            .unwrap_or_else(|| (vec![d.root_cause.clone()], Vec::new()));
        let agents: BTreeSet<String> = radius_agents
            .into_iter()
            .chain(d.affected_agents.iter().cloned())
            .collect();
        let agents: Vec<String> = agents.into_iter().collect();
        let ev = self
            .signer
            .cascade_detected(
                d.wid.as_deref(),
                pattern,
                &d.root_cause,
                d.affected_agents.len(),
                &agents,
                now,
            )
            .map_err(|e| DetectError::Evidence(e.to_string()))?;
        let new = NewCascadeAlert {
            id: format!("cas_{}", uuid::Uuid::new_v4().simple()),
            wid: d.wid.clone(),
            pattern: pattern.to_string(),
            root_cause_ect: d.root_cause.clone(),
            affected_agents: d.affected_agents.clone(),
            blast_radius,
            ect: ev.jti,
            token: ev.token,
        };
        let Some(alert) = self.store.insert_cascade_alert(&new).await? else {
            return Ok(None);
        };
        self.record(&alert).await?;
        metrics::counter!("unwind_cascades_detected_total", "pattern" => pattern).increment(1);
        tracing::warn!(
            cascade_id = %alert.alert.id,
            pattern,
            root_cause = %alert.alert.root_cause_ect,
            agents = alert.alert.affected_agents.len(),
            "cascade detected"
        );
        if self.settings.rolls_back(alert.alert.wid.as_deref()) {
            self.roll_back(&alert.alert).await;
        }
        let raised = RaisedAlert { alert };
        if let Some(sink) = &self.on_raised {
            let _ = sink.send(raised.clone());
        }
        Ok(Some(raised))
    }

    /// The auto-rollback policy: a `sub_dag` rollback from the root cause's nearest
    /// checkpoint. Its id derives from the alert's, so asking again (a restart, another
    /// replica) is the same request. A refusal (no checkpoint above the root cause, a broader
    /// rollback already running) is logged: the alert stands either way.
    async fn roll_back(&self, alert: &NewCascadeAlert) {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, alert.id.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_ref()[..16]);
        let id = uuid::Builder::from_custom_bytes(bytes).into_uuid();
        let request = RollbackRequest {
            rollback_id: Some(format!("urn:uuid:{id}")),
            checkpoint_id: None,
            trigger_ect: Some(alert.root_cause_ect.clone()),
            scope: Some(Scope::SubDag),
            reason: Some(format!("cascade {} ({})", alert.id, alert.pattern)),
            on_cannot_prepare: None,
        };
        let requester = Requester::Operator {
            principal: CASCADE_REQUESTER.into(),
        };
        match submit(self.store.as_ref(), &request, &requester).await {
            Ok(outcome) => {
                tracing::info!(cascade_id = %alert.id, ?outcome, "cascade rollback requested")
            }
            Err(e) => {
                tracing::warn!(cascade_id = %alert.id, error = %e, "cascade rollback not started")
            }
        }
    }

    /// Records an alert's ECT in the ledger and escalates it when it is large enough, then
    /// marks it recorded; after a crash both are repeated (the ledger and the escalation's
    /// dedup rule make that harmless).
    async fn record(&self, alert: &CascadeAlert) -> Result<(), DetectError> {
        let results = self
            .ledger
            .ingest(std::slice::from_ref(&alert.alert.token))
            .await
            .map_err(|e| DetectError::Evidence(e.to_string()))?;
        match results.first().map(|r| &r.outcome) {
            Some(Ok(_)) => {}
            Some(Err(rejection)) => {
                return Err(DetectError::Evidence(format!(
                    "the ledger refused cascade_detected {}: {rejection}",
                    alert.alert.ect
                )));
            }
            None => return Err(DetectError::Evidence("no ingest result".into())),
        }
        self.escalate(alert).await?;
        self.store
            .mark_cascade_alert_recorded(&alert.alert.id)
            .await?;
        Ok(())
    }

    async fn escalate(&self, stored: &CascadeAlert) -> Result<(), DetectError> {
        let alert = &stored.alert;
        let (Some(escalations), Some(wid)) = (&self.escalations, &alert.wid) else {
            return Ok(());
        };
        if alert.affected_agents.len() <= self.settings.escalate_above_agents {
            return Ok(());
        }
        let detail = serde_json::to_value(CascadeView::from(stored.clone()))
            .map_err(|e| DetectError::Escalation(e.to_string()))?;
        escalations
            .raise(NewEscalation {
                kind: EscalationKind::Cascade,
                wid: wid.clone(),
                rollback_id: None,
                cascade_id: Some(alert.id.clone()),
                detail,
            })
            .await
            .map_err(|e| DetectError::Escalation(e.to_string()))?;
        Ok(())
    }

    /// Alerts stored before a crash whose ECT the ledger may not have yet.
    async fn record_pending(&self) -> Result<(), DetectError> {
        for alert in self.store.unrecorded_cascade_alerts().await? {
            self.record(&alert).await?;
        }
        Ok(())
    }
}

fn node_of(r: EctRecord) -> Node {
    Node {
        jti: r.jti,
        wid: r.wid,
        iss: r.iss,
        exec_act: r.exec_act,
        iat: r.iat,
        parents: r.parents,
        ext: r.ext,
    }
}
