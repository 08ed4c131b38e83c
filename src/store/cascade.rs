//! What cascade detection reads and writes: the neighbourhood of a new node (reports near a
//! time, ancestors, children), and the alerts, one per (pattern, root cause).

use chrono::{DateTime, Utc};

use super::{EctRecord, Page, StoreError};

/// A cascade alert as stored: what was raised, and the store's bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeAlert {
    pub seq: i64,
    pub alert: NewCascadeAlert,
    /// Whether the ledger holds `alert.token` yet.
    pub recorded: bool,
    pub detected_at: DateTime<Utc>,
}

/// A cascade to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCascadeAlert {
    pub id: String,
    /// The root cause's workflow.
    pub wid: Option<String>,
    /// `error_clustering`, `depth_first` or `breadth_first`.
    pub pattern: String,
    pub root_cause_ect: String,
    pub affected_agents: Vec<String>,
    /// jtis of the root cause's blast radius.
    pub blast_radius: Vec<String>,
    /// jti of the `cascade_detected` ECT.
    pub ect: String,
    /// The signed `cascade_detected` ECT.
    pub token: String,
}

#[async_trait::async_trait]
pub trait CascadeStore: Send + Sync {
    /// Tokens with this `exec_act` issued in `[since_iat, until_iat]`, oldest first, at most
    /// `limit`.
    async fn ects_issued_between(
        &self,
        exec_act: &str,
        since_iat: i64,
        until_iat: i64,
        limit: u32,
    ) -> Result<Vec<EctRecord>, StoreError>;

    /// The tokens at the newest `limit` ledger positions, oldest first (fewer where positions
    /// have gaps): what a restarted detector examines again.
    async fn newest_ects(&self, limit: u32) -> Result<Vec<EctRecord>, StoreError>;

    /// The ancestors of `jti` up to `max_depth` parent hops (any order, each once).
    async fn ancestors_of(&self, jti: &str, max_depth: u32) -> Result<Vec<EctRecord>, StoreError>;

    /// The children of `jti` (any order), at most `limit`.
    async fn children_of(&self, jti: &str, limit: u32) -> Result<Vec<EctRecord>, StoreError>;

    /// True when an alert for this pattern and root cause exists.
    async fn cascade_alert_exists(
        &self,
        pattern: &str,
        root_cause_ect: &str,
    ) -> Result<bool, StoreError>;

    /// Adds `agents` to the affected agents of the alert for this pattern and root cause, in
    /// one transaction; returns the alert when its set grew (a cascade spreading further),
    /// `None` when there is no such alert or nothing was new.
    async fn widen_cascade_alert(
        &self,
        pattern: &str,
        root_cause_ect: &str,
        agents: &[String],
    ) -> Result<Option<CascadeAlert>, StoreError>;

    /// Stores the alert unless one for the same pattern and root cause exists (then `None`:
    /// another node or replica raised it first).
    async fn insert_cascade_alert(
        &self,
        alert: &NewCascadeAlert,
    ) -> Result<Option<CascadeAlert>, StoreError>;

    /// Notes that the ledger holds the alert's ECT.
    async fn mark_cascade_alert_recorded(&self, id: &str) -> Result<(), StoreError>;

    /// Alerts whose ECT the ledger may not hold yet, oldest first.
    async fn unrecorded_cascade_alerts(&self) -> Result<Vec<CascadeAlert>, StoreError>;

    /// Alerts oldest first, optionally of one workflow.
    async fn list_cascade_alerts(
        &self,
        wid: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<CascadeAlert>, StoreError>;
}

/// One `cascade_alerts` row as selected by both back ends (JSON columns as text).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CascadeAlertRow {
    pub seq: i64,
    pub id: String,
    pub wid: Option<String>,
    pub pattern: String,
    pub root_cause_ect: String,
    pub affected_agents: String,
    pub blast_radius: String,
    pub ect: String,
    pub token: String,
    pub recorded: bool,
    pub detected_at: DateTime<Utc>,
}

impl CascadeAlertRow {
    pub(crate) fn into_alert(self) -> Result<CascadeAlert, StoreError> {
        let list = |column: &str, text: &str| {
            serde_json::from_str::<Vec<String>>(text).map_err(|e| {
                StoreError::Corrupt(format!("cascade alert {}: {column}: {e}", self.id))
            })
        };
        Ok(CascadeAlert {
            seq: self.seq,
            alert: NewCascadeAlert {
                affected_agents: list("affected_agents", &self.affected_agents)?,
                blast_radius: list("blast_radius", &self.blast_radius)?,
                id: self.id.clone(),
                wid: self.wid,
                pattern: self.pattern,
                root_cause_ect: self.root_cause_ect,
                ect: self.ect,
                token: self.token,
            },
            recorded: self.recorded,
            detected_at: self.detected_at,
        })
    }
}

/// `known` with `more` added (sorted, each once); `None` when `more` adds nothing.
pub(crate) fn widened(known: &[String], more: &[String]) -> Option<Vec<String>> {
    let mut all: std::collections::BTreeSet<&String> = known.iter().collect();
    let before = all.len();
    all.extend(more);
    (all.len() > before).then(|| all.into_iter().cloned().collect())
}

/// The JSON text of a list column.
pub(crate) fn list_column(items: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(items).map_err(|e| StoreError::Invalid(format!("list column: {e}")))
}

/// Upper bound on what one ancestors query returns (a dense DAG reaches a node many ways).
pub(crate) const MAX_ANCESTOR_ROWS: i64 = 10_000;
