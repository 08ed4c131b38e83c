//! Webhook events (api.md "HITL webhook"): which cause gives which `type`, and the body that is
//! stored once and sent byte for byte on every attempt.

use serde::Serialize;
use serde_json::Value;

use super::escalation::EscalationView;
use crate::api::rollbacks::RollbackView;
use crate::rollback::model::RollbackStatus;
use crate::store::hitl::EscalationKind;

/// The `type` of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    AwaitingDecision,
    Partial,
    Failed,
    Aborted,
    Superseded,
    CheckpointIrreversible,
    CascadeDetected,
    CrossFailure,
    /// The ledger's signed head, pinned periodically (`ledger.head_interval_s`).
    LedgerHead,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingDecision => "rollback.awaiting_decision",
            Self::Partial => "rollback.partial",
            Self::Failed => "rollback.failed",
            Self::Aborted => "rollback.aborted",
            Self::Superseded => "rollback.superseded",
            Self::CheckpointIrreversible => "checkpoint.irreversible",
            Self::CascadeDetected => "cascade.detected",
            Self::CrossFailure => "workflow.cross_failure",
            Self::LedgerHead => "ledger.head",
        }
    }

    /// The event an escalation of `kind` sends.
    pub fn of_kind(kind: EscalationKind) -> Self {
        match kind {
            EscalationKind::CriticalCannotPrepare => Self::AwaitingDecision,
            EscalationKind::IrreversibleCheckpoint => Self::CheckpointIrreversible,
            EscalationKind::Cascade => Self::CascadeDetected,
            EscalationKind::PartialRollback => Self::Partial,
            EscalationKind::FailedRollback => Self::Failed,
            EscalationKind::CrossWorkflow => Self::CrossFailure,
        }
    }
}

/// What a rollback reaching `status` raises: an escalation for the states a person must look
/// at, a bare event for the other non-completed ends, nothing otherwise.
pub enum RollbackNotice {
    Escalation(EscalationKind),
    Event(EventType),
    None,
}

impl RollbackNotice {
    pub fn of(status: RollbackStatus) -> Self {
        match status {
            RollbackStatus::AwaitingDecision => {
                Self::Escalation(EscalationKind::CriticalCannotPrepare)
            }
            RollbackStatus::Partial => Self::Escalation(EscalationKind::PartialRollback),
            RollbackStatus::Failed => Self::Escalation(EscalationKind::FailedRollback),
            RollbackStatus::Aborted => Self::Event(EventType::Aborted),
            RollbackStatus::Superseded => Self::Event(EventType::Superseded),
            _ => Self::None,
        }
    }
}

/// The event body.
#[derive(Debug, Serialize)]
pub struct EventBody<'a> {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub created_at: String,
    pub wid: &'a str,
    pub rollback: Option<&'a RollbackView>,
    pub cascade: Option<&'a Value>,
    /// Where the operator decides; only while the rollback awaits a decision.
    pub decision_url: Option<String>,
    /// The escalation that caused the event, if one did.
    pub escalation: Option<&'a EscalationView>,
}

impl<'a> EventBody<'a> {
    /// A new event (fresh `evt_<uuid>` id, now) about `wid`.
    pub fn new(
        event_type: EventType,
        wid: &'a str,
        rollback: Option<&'a RollbackView>,
        public_url: &str,
    ) -> Self {
        let decision_url = rollback
            .filter(|r| r.status == RollbackStatus::AwaitingDecision)
            .map(|r| {
                format!(
                    "{}/v1/rollbacks/{}/decision",
                    public_url.trim_end_matches('/'),
                    r.rollback_id
                )
            });
        Self {
            id: format!("evt_{}", uuid::Uuid::new_v4()),
            event_type: event_type.as_str(),
            created_at: crate::api::rfc3339(chrono::Utc::now()),
            wid,
            rollback,
            cascade: None,
            decision_url,
            escalation: None,
        }
    }

    /// The bytes stored and sent.
    pub fn to_text(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// The body of a `ledger.head` event: the signed head as the heads file keeps it.
#[derive(Debug, Serialize)]
pub struct LedgerHeadBody<'a> {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub created_at: String,
    pub head: &'a crate::ledger::heads::SignedHead,
}

impl<'a> LedgerHeadBody<'a> {
    pub fn new(head: &'a crate::ledger::heads::SignedHead) -> Self {
        Self {
            id: format!("evt_{}", uuid::Uuid::new_v4()),
            event_type: EventType::LedgerHead.as_str(),
            created_at: crate::api::rfc3339(chrono::Utc::now()),
            head,
        }
    }
}
