//! The human-escalation part of the store's contract: escalations, the webhook outbox and the
//! record of every delivery attempt. One trait ([`HitlStore`], required by [`super::Store`]),
//! implemented in `postgres/hitl.rs` and `sqlite/hitl.rs` with the same behaviour.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Page, StoreError};

/// Why a person is asked to look (api.md "Escalation item").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscalationKind {
    CriticalCannotPrepare,
    IrreversibleCheckpoint,
    Cascade,
    PartialRollback,
    FailedRollback,
    CrossWorkflow,
}

impl EscalationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CriticalCannotPrepare => "critical_cannot_prepare",
            Self::IrreversibleCheckpoint => "irreversible_checkpoint",
            Self::Cascade => "cascade",
            Self::PartialRollback => "partial_rollback",
            Self::FailedRollback => "failed_rollback",
            Self::CrossWorkflow => "cross_workflow",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(Value::String(text.to_string())).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscalationStatus {
    Open,
    Resolved,
}

impl EscalationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Resolved => "resolved",
        }
    }
}

/// A stored escalation.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    pub id: String,
    pub kind: EscalationKind,
    pub status: EscalationStatus,
    pub wid: String,
    pub rollback_id: Option<String>,
    pub cascade_id: Option<String>,
    pub detail: Value,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub decision: Option<String>,
    pub decided_by: Option<String>,
    pub comment: Option<String>,
}

/// How an escalation was closed.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The rollback decision, or `None` for an escalation closed without one.
    pub decision: Option<String>,
    /// `operator:<name>`.
    pub decided_by: String,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResolveOutcome {
    Resolved(Escalation),
    /// It was resolved already (nothing written).
    NotOpen(Escalation),
    NotFound,
}

/// One event for one webhook, to be stored in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// `evt_<uuid>`, the same for every webhook and every attempt.
    pub event_id: String,
    /// The cause of the event; the same cause enqueued again for the same URL is a no-op.
    pub event_key: String,
    pub event_type: String,
    pub url: String,
    /// The JSON body, sent byte for byte on every attempt.
    pub body: String,
}

/// An outbox row claimed by a delivery worker.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Delivery {
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub url: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// One attempt's result, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Try again after this delay (from the store's clock).
    RetryIn(Duration),
}

/// One recorded attempt with its event (`GET /v1/webhook-deliveries`).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub url: String,
    pub attempt: i64,
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub body: String,
}

/// Escalations and webhook deliveries. Times come from the store's clock (PostgreSQL's
/// `now()` for leases and retries; the process clock on SQLite, as for rollbacks).
#[async_trait::async_trait]
pub trait HitlStore: Send + Sync {
    /// Stores `escalation` (status `open`) and `events` in one transaction, unless an open
    /// escalation with the same `dedup_key` exists: then nothing is written and that one is
    /// returned. `true` when this call created it.
    async fn raise_escalation(
        &self,
        escalation: &Escalation,
        dedup_key: &str,
        events: &[OutboxEvent],
    ) -> Result<(Escalation, bool), StoreError>;

    /// Stores events in one transaction; those whose (`event_key`, `url`) is stored already are
    /// left out.
    async fn enqueue_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError>;

    async fn get_escalation(&self, id: &str) -> Result<Option<Escalation>, StoreError>;

    /// Escalations oldest first, of one status or all.
    async fn list_escalations(
        &self,
        status: Option<EscalationStatus>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Escalation>, StoreError>;

    /// Resolves one open escalation.
    async fn resolve_escalation(
        &self,
        id: &str,
        resolution: &Resolution,
    ) -> Result<ResolveOutcome, StoreError>;

    /// Resolves every open escalation of a rollback; returns those it resolved.
    async fn resolve_rollback_escalations(
        &self,
        rollback_id: &str,
        resolution: &Resolution,
    ) -> Result<Vec<Escalation>, StoreError>;

    /// Claims up to `limit` pending deliveries that are due and not leased by a live worker
    /// (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: one statement on the single writer), for
    /// `lease_for`. Oldest first.
    async fn claim_deliveries(
        &self,
        owner: &str,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Records an attempt and what follows it, in one transaction, and gives the lease up.
    /// `false` (and nothing written) when `owner` no longer holds the row's lease.
    async fn record_attempt(
        &self,
        delivery: &Delivery,
        owner: &str,
        attempt: &Attempt,
        outcome: AttemptOutcome,
    ) -> Result<bool, StoreError>;

    /// Every attempt, oldest first.
    async fn list_attempts(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AttemptRecord>, StoreError>;
}

/// An escalation as both back ends read it (`detail` as JSON text).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EscalationRow {
    pub seq: i64,
    pub id: String,
    pub kind: String,
    pub status: String,
    pub wid: String,
    pub rollback_id: Option<String>,
    pub cascade_id: Option<String>,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub decision: Option<String>,
    pub decided_by: Option<String>,
    pub comment: Option<String>,
}

impl EscalationRow {
    pub(crate) fn into_escalation(self) -> Result<Escalation, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("escalation {}: {what}", self.id));
        let kind = EscalationKind::parse(&self.kind).ok_or_else(|| corrupt("kind"))?;
        let status = match self.status.as_str() {
            "open" => EscalationStatus::Open,
            "resolved" => EscalationStatus::Resolved,
            _ => return Err(corrupt("status")),
        };
        let detail = serde_json::from_str(&self.detail).map_err(|_| corrupt("detail"))?;
        Ok(Escalation {
            id: self.id,
            kind,
            status,
            wid: self.wid,
            rollback_id: self.rollback_id,
            cascade_id: self.cascade_id,
            detail,
            created_at: self.created_at,
            resolved_at: self.resolved_at,
            decision: self.decision,
            decided_by: self.decided_by,
            comment: self.comment,
        })
    }
}

/// An attempt joined with its outbox row, as both back ends read it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub url: String,
    pub attempt: i64,
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub body: String,
}

impl From<AttemptRow> for AttemptRecord {
    fn from(r: AttemptRow) -> Self {
        Self {
            seq: r.seq,
            event_id: r.event_id,
            event_type: r.event_type,
            url: r.url,
            attempt: r.attempt,
            attempted_at: r.attempted_at,
            duration_ms: r.duration_ms,
            http_status: r.http_status,
            error: r.error,
            body: r.body,
        }
    }
}

/// The select list of attempts joined with their outbox row (`a`, `o`).
pub(crate) const ATTEMPT_COLUMNS: &str = "a.seq, o.event_id, o.event_type, o.url, a.attempt, \
     a.attempted_at, a.duration_ms, a.http_status, a.error, o.body";

/// `detail` as stored; NUL characters are refused on both back ends alike.
pub(crate) fn detail_text(detail: &Value) -> Result<String, StoreError> {
    let text = detail.to_string();
    if text.contains("\\u0000") {
        return Err(StoreError::Invalid(
            "NUL character in escalation detail".into(),
        ));
    }
    Ok(text)
}
