//! Human in the loop (design.md §6, api.md "HITL webhook"): escalations that ask a person to
//! look, operator decisions recorded as signed `hitl_decision` ECTs, and signed webhook events
//! delivered at least once through a durable outbox.
//!
//! - [`escalation`]: raising (deduplicated) and resolving escalations — the entry point for
//!   the rollback driver and for other detectors ([`Escalations::raise`]).
//! - [`event`]: the webhook event body and which cause gives which event type.
//! - [`webhook`]: the configured receivers, with their secrets resolved at start-up.
//! - [`signature`]: the `Unwind-Signature` header.
//! - [`delivery`]: the worker that sends outbox rows, retries and records every attempt.
//! - [`decision`]: an operator's rollback decision: escalations resolved, evidence signed.

use std::sync::Arc;

use crate::store::StoreError;

pub mod decision;
pub mod delivery;
pub mod escalation;
pub mod event;
mod rollback;
pub mod signature;
pub mod webhook;

pub use decision::Decisions;
pub use delivery::{Deliverer, DeliverySettings};
pub use escalation::{EscalationView, Escalations, NewEscalation};
pub use webhook::WebhookTarget;

#[derive(Debug, thiserror::Error)]
pub enum HitlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no rollback {0}")]
    NoSuchRollback(String),
    #[error("evidence: {0}")]
    Evidence(String),
    #[error("cannot encode an event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What the API reaches: escalations and decisions.
pub struct Hitl {
    pub escalations: Arc<Escalations>,
    pub decisions: Decisions,
}
