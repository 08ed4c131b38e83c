//! Escalations: durable records that ask a person to look at something (api.md "Escalation
//! item"), each stored together with its webhook events in one transaction.
//!
//! Deduplication: at most one *open* escalation per kind and subject — the rollback when there
//! is one, else the cascade, else the workflow (and `detail.agent` when given). Raising the
//! same thing again while it is open returns the open one and sends nothing; once resolved, it
//! may be raised anew. That is also what makes raising safe to repeat after a crash.

use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use utoipa::ToSchema;

use super::HitlError;
use super::event::{EventBody, EventType, LedgerHeadBody};
use crate::api::rollbacks::RollbackView;
use crate::ledger::heads::{HeadSink, SignedHead};
use crate::store::Store;
use crate::store::hitl::{
    Escalation, EscalationKind, EscalationStatus, OutboxEvent, Resolution, ResolveOutcome,
};

/// An escalation to raise.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEscalation {
    pub kind: EscalationKind,
    pub wid: String,
    pub rollback_id: Option<String>,
    pub cascade_id: Option<String>,
    /// Anything that helps the person deciding (shown as `detail`; for `cascade`, sent as the
    /// event's `cascade` member).
    pub detail: Value,
}

/// The escalation item of the API and of webhook events.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EscalationView {
    pub id: String,
    pub kind: EscalationKind,
    pub status: EscalationStatus,
    pub wid: String,
    pub rollback_id: Option<String>,
    pub cascade_id: Option<String>,
    pub created_at: String,
    pub resolved_at: Option<String>,
    pub decision: Option<String>,
    pub decided_by: Option<String>,
    pub comment: Option<String>,
    #[schema(value_type = Object)]
    pub detail: Value,
}

impl From<&Escalation> for EscalationView {
    fn from(e: &Escalation) -> Self {
        Self {
            id: e.id.clone(),
            kind: e.kind,
            status: e.status,
            wid: e.wid.clone(),
            rollback_id: e.rollback_id.clone(),
            cascade_id: e.cascade_id.clone(),
            created_at: crate::api::rfc3339(e.created_at),
            resolved_at: e.resolved_at.map(crate::api::rfc3339),
            decision: e.decision.clone(),
            decided_by: e.decided_by.clone(),
            comment: e.comment.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// Raises and resolves escalations and enqueues webhook events; one per process.
pub struct Escalations {
    store: Arc<dyn Store>,
    /// The webhook URLs every event goes to.
    urls: Vec<String>,
    /// Base of `decision_url`.
    public_url: String,
    /// Wakes the delivery worker when events were stored.
    wake: Arc<Notify>,
}

impl Escalations {
    pub fn new(
        store: Arc<dyn Store>,
        urls: Vec<String>,
        public_url: String,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            urls,
            public_url,
            wake,
        }
    }

    /// Stores an escalation and enqueues its webhook event in one transaction; returns the
    /// stored escalation — the already open one when the same kind and subject is open (see the
    /// module comment), in which case nothing new is sent.
    ///
    /// This is the entry point for detectors outside the rollback driver, e.g.
    ///
    /// ```ignore
    /// hitl.escalations.raise(NewEscalation {
    ///     kind: EscalationKind::Cascade,
    ///     wid: alert.wid.clone(),
    ///     rollback_id: None,
    ///     cascade_id: Some(alert.id.clone()),
    ///     detail: serde_json::to_value(&alert)?, // becomes the event's `cascade`
    /// }).await?;
    /// ```
    ///
    /// With a `rollback_id`, the event carries that rollback as `GET /v1/rollbacks/{id}` shows
    /// it ([`HitlError::NoSuchRollback`] when there is none).
    pub async fn raise(&self, new: NewEscalation) -> Result<Escalation, HitlError> {
        let rollback = match &new.rollback_id {
            Some(id) => match self.store.get_rollback(id).await? {
                Some((r, steps)) => Some(RollbackView::new(r, steps)),
                None => return Err(HitlError::NoSuchRollback(id.clone())),
            },
            None => None,
        };
        self.raise_with(new, rollback.as_ref()).await
    }

    /// [`Self::raise`] with the rollback as the event should show it (the driver raises before
    /// it saves the state that the escalation is about).
    pub(crate) async fn raise_with(
        &self,
        new: NewEscalation,
        rollback: Option<&RollbackView>,
    ) -> Result<Escalation, HitlError> {
        let escalation = Escalation {
            id: uuid::Uuid::new_v4().to_string(),
            kind: new.kind,
            status: EscalationStatus::Open,
            wid: new.wid.clone(),
            rollback_id: new.rollback_id.clone(),
            cascade_id: new.cascade_id.clone(),
            detail: new.detail.clone(),
            // The stored row (returned by the store) is what callers see.
            created_at: Utc::now(),
            resolved_at: None,
            decision: None,
            decided_by: None,
            comment: None,
        };
        let view = EscalationView::from(&escalation);
        let mut body = EventBody::new(
            EventType::of_kind(new.kind),
            &new.wid,
            rollback,
            &self.public_url,
        );
        body.escalation = Some(&view);
        if new.kind == EscalationKind::Cascade {
            body.cascade = Some(&new.detail);
        }
        let events = self.events(&body, &format!("escalation:{}", escalation.id))?;
        let (stored, created) = self
            .store
            .raise_escalation(&escalation, &dedup_key(&new), &events)
            .await?;
        if created {
            tracing::info!(id = %stored.id, kind = stored.kind.as_str(), wid = %stored.wid, "escalation raised");
            metrics::counter!("unwind_escalations_total", "kind" => stored.kind.as_str())
                .increment(1);
            self.wake.notify_one();
        }
        Ok(stored)
    }

    /// Enqueues an event about a rollback that needs no escalation (aborted, superseded); once
    /// per rollback and type.
    pub(crate) async fn rollback_event(
        &self,
        event_type: EventType,
        rollback: &RollbackView,
    ) -> Result<(), HitlError> {
        let body = EventBody::new(event_type, &rollback.wid, Some(rollback), &self.public_url);
        let key = format!("rollback:{}:{}", rollback.rollback_id, event_type.as_str());
        let events = self.events(&body, &key)?;
        self.store.enqueue_events(&events).await?;
        if !events.is_empty() {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Closes an escalation (an operator's `POST /v1/escalations/{id}/resolve`).
    pub async fn resolve(
        &self,
        id: &str,
        resolution: &Resolution,
    ) -> Result<ResolveOutcome, HitlError> {
        Ok(self.store.resolve_escalation(id, resolution).await?)
    }

    /// Enqueues a `ledger.head` event for a pinned head (once per head and signing time).
    pub async fn ledger_head(&self, head: &SignedHead) -> Result<(), HitlError> {
        let body = LedgerHeadBody::new(head);
        let key = format!("ledger.head:{}:{}", head.seq, head.iat);
        let events = self.outbox_rows(
            &body.id,
            body.event_type,
            &serde_json::to_string(&body)?,
            &key,
        );
        self.store.enqueue_events(&events).await?;
        if !events.is_empty() {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// One outbox row per webhook for `body`.
    fn events(&self, body: &EventBody<'_>, key: &str) -> Result<Vec<OutboxEvent>, HitlError> {
        if self.urls.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.outbox_rows(&body.id, body.event_type, &body.to_text()?, key))
    }

    /// One outbox row per webhook for an event body already encoded.
    fn outbox_rows(&self, id: &str, event_type: &str, text: &str, key: &str) -> Vec<OutboxEvent> {
        self.urls
            .iter()
            .map(|url| OutboxEvent {
                event_id: id.to_string(),
                event_key: key.to_string(),
                event_type: event_type.to_string(),
                url: url.clone(),
                body: text.to_string(),
            })
            .collect()
    }
}

/// What makes two open escalations the same (see the module comment).
fn dedup_key(new: &NewEscalation) -> String {
    let kind = new.kind.as_str();
    match (&new.rollback_id, &new.cascade_id) {
        (Some(rollback), _) => format!("{kind}|rollback:{rollback}"),
        (None, Some(cascade)) => format!("{kind}|cascade:{cascade}"),
        (None, None) => {
            let agent = new
                .detail
                .get("agent")
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("{kind}|wid:{}|agent:{agent}", new.wid)
        }
    }
}

#[async_trait::async_trait]
impl HeadSink for Escalations {
    async fn head_signed(&self, head: &SignedHead) -> Result<(), String> {
        self.ledger_head(head).await.map_err(|e| e.to_string())
    }
}
