//! An operator's decision on a rollback awaiting one (`POST /v1/rollbacks/{id}/decision`):
//! the rollback's open escalations are resolved with it, and a `hitl_decision` ECT signed by
//! the coordinator records who decided what, child of the escalated node (the rollback's
//! `rollback_start`, or its checkpoint before one exists).

use std::sync::Arc;

use serde_json::{Map, json};

use super::HitlError;
use crate::ledger::Ledger;
use crate::rollback::evidence::{Evidence, EvidenceSigner};
use crate::rollback::model::RollbackRecord;
use crate::store::Store;
use crate::store::hitl::{Escalation, Resolution};

/// The `exec_act` of the decision record.
pub const HITL_DECISION: &str = "hitl_decision";

/// What a decision left behind.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub escalations: Vec<Escalation>,
    pub ect: Evidence,
}

/// Records decisions; one per process.
pub struct Decisions {
    store: Arc<dyn Store>,
    ledger: Arc<Ledger>,
    signer: EvidenceSigner,
}

impl Decisions {
    pub fn new(store: Arc<dyn Store>, ledger: Arc<Ledger>, signer: EvidenceSigner) -> Self {
        Self {
            store,
            ledger,
            signer,
        }
    }

    /// Resolves the rollback's open escalations with `resolution` and records the signed
    /// decision in the ledger. Called after the decision was applied to the rollback.
    pub async fn record(
        &self,
        rollback: &RollbackRecord,
        resolution: &Resolution,
    ) -> Result<Recorded, HitlError> {
        let escalations = self
            .store
            .resolve_rollback_escalations(&rollback.rollback_id, resolution)
            .await?;
        let mut ext = Map::new();
        ext.insert("cascade.rollback_id".into(), json!(rollback.rollback_id));
        ext.insert("cascade.decision".into(), json!(resolution.decision));
        ext.insert("cascade.decided_by".into(), json!(resolution.decided_by));
        if let Some(comment) = &resolution.comment {
            ext.insert("cascade.comment".into(), json!(comment));
        }
        let ids: Vec<&str> = escalations.iter().map(|e| e.id.as_str()).collect();
        ext.insert("cascade.escalation_ids".into(), json!(ids));
        let parent = rollback
            .evidence_start
            .as_deref()
            .unwrap_or(&rollback.checkpoint_id);
        let ect = self
            .signer
            .coordinator_ect(
                HITL_DECISION,
                Some(&rollback.wid),
                parent,
                ext,
                chrono::Utc::now().timestamp(),
            )
            .map_err(|e| HitlError::Evidence(e.to_string()))?;
        let results = self
            .ledger
            .ingest(std::slice::from_ref(&ect.token))
            .await
            .map_err(|e| HitlError::Evidence(e.to_string()))?;
        match results.first().map(|r| &r.outcome) {
            Some(Ok(_)) => Ok(Recorded { escalations, ect }),
            Some(Err(rejection)) => Err(HitlError::Evidence(format!(
                "the ledger refused the decision record: {rejection}"
            ))),
            None => Err(HitlError::Evidence("no ingest result".into())),
        }
    }
}
