//! What the rollback driver raises (design.md §6): an `irreversible_checkpoint` escalation when
//! prepare finds irreversible checkpoints in scope, and, when a rollback reaches a state a
//! person must know about, the escalation or event for it (see [`RollbackNotice`]).
//!
//! The driver calls these before it saves the state they are about, and fails the step of the
//! state machine when they fail: a crash in between repeats the call on resume, which the
//! deduplication of escalations and events turns into a no-op.

use serde_json::{Value, json};

use super::event::RollbackNotice;
use super::{Escalations, HitlError, NewEscalation};
use crate::api::rollbacks::RollbackView;
use crate::rollback::model::{ExecuteStatus, PrepareStatus, RollbackRecord, StepRecord};
use crate::store::hitl::EscalationKind;

impl Escalations {
    /// `irreversible_checkpoint` for the rollback's irreversible steps, if it has any.
    pub async fn irreversible_found(
        &self,
        rb: &RollbackRecord,
        steps: &[StepRecord],
    ) -> Result<(), HitlError> {
        let irreversible: Vec<Value> = steps
            .iter()
            .filter(|s| !s.reversible)
            .map(|s| json!({"checkpoint_id": s.checkpoint_id, "agent": s.agent, "critical": s.critical}))
            .collect();
        if irreversible.is_empty() {
            return Ok(());
        }
        let view = RollbackView::new(rb.clone(), steps.to_vec());
        self.raise_with(
            new(
                rb,
                EscalationKind::IrreversibleCheckpoint,
                json!({"checkpoints": irreversible}),
            ),
            Some(&view),
        )
        .await
        .map(drop)
    }

    /// The escalation or event for the state in `rb.status` (nothing for the others).
    pub async fn rollback_reached(
        &self,
        rb: &RollbackRecord,
        steps: &[StepRecord],
    ) -> Result<(), HitlError> {
        let notice = RollbackNotice::of(rb.status);
        if matches!(notice, RollbackNotice::None) {
            return Ok(());
        }
        let view = RollbackView::new(rb.clone(), steps.to_vec());
        match notice {
            RollbackNotice::Escalation(kind) => {
                let detail = json!({
                    "status": rb.status.as_str(),
                    "failed_agents": rb.failed_agents,
                    "steps": not_undone(steps),
                });
                self.raise_with(new(rb, kind, detail), Some(&view))
                    .await
                    .map(drop)
            }
            RollbackNotice::Event(event_type) => self.rollback_event(event_type, &view).await,
            RollbackNotice::None => Ok(()),
        }
    }
}

fn new(rb: &RollbackRecord, kind: EscalationKind, detail: Value) -> NewEscalation {
    NewEscalation {
        kind,
        wid: rb.wid.clone(),
        rollback_id: Some(rb.rollback_id.clone()),
        cascade_id: None,
        detail,
    }
}

/// The steps that hold the rollback back or were not undone, with why.
fn not_undone(steps: &[StepRecord]) -> Vec<Value> {
    steps
        .iter()
        .filter(|s| {
            !s.execute_status.is_undone()
                && (s.execute_status != ExecuteStatus::Pending
                    || matches!(
                        s.prepare_status,
                        PrepareStatus::CannotPrepare | PrepareStatus::Unreachable
                    ))
        })
        .map(|s| {
            json!({
                "checkpoint_id": s.checkpoint_id,
                "agent": s.agent,
                "critical": s.critical,
                "prepare_status": s.prepare_status,
                "execute_status": s.execute_status,
                "error": s.error,
            })
        })
        .collect()
}
