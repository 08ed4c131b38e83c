//! The persisted shape of a rollback (design.md §6): its status machine, its steps, and the
//! records the store keeps for them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::planner::{Plan, Scope};

/// Where a rollback stands. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStatus {
    Accepted,
    Preparing,
    Executing,
    AwaitingDecision,
    Completed,
    Partial,
    Failed,
    Aborted,
    Superseded,
}

impl RollbackStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Partial | Self::Failed | Self::Aborted | Self::Superseded
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Preparing => "preparing",
            Self::Executing => "executing",
            Self::AwaitingDecision => "awaiting_decision",
            Self::Completed => "completed",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
            Self::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_STATUSES.iter().copied().find(|st| st.as_str() == s)
    }
}

pub const ALL_STATUSES: [RollbackStatus; 9] = [
    RollbackStatus::Accepted,
    RollbackStatus::Preparing,
    RollbackStatus::Executing,
    RollbackStatus::AwaitingDecision,
    RollbackStatus::Completed,
    RollbackStatus::Partial,
    RollbackStatus::Failed,
    RollbackStatus::Aborted,
    RollbackStatus::Superseded,
];

/// A step's answer to prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrepareStatus {
    Pending,
    Prepared,
    CannotPrepare,
    Unreachable,
}

/// A step's execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecuteStatus {
    Pending,
    Completed,
    Compensated,
    Failed,
    Escalated,
    Skipped,
}

impl ExecuteStatus {
    /// Done, one way or another: its ancestors no longer wait for it.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }
    /// The checkpoint's effects were undone.
    pub fn is_undone(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }
}

/// What to do when a step cannot prepare (design.md §6).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnCannotPrepare {
    /// On the critical path: wait for a decision; elsewhere: skip it and end `partial`.
    #[default]
    Auto,
    Abort,
    Partial,
    Escalate,
}

/// A step's error: `{"code","detail"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepError {
    pub code: String,
    pub detail: String,
}

/// A rollback as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRecord {
    /// `urn:uuid:<uuid>`, lowercase.
    pub rollback_id: String,
    pub wid: String,
    pub checkpoint_id: String,
    pub trigger_ect: Option<String>,
    pub scope: Scope,
    pub status: RollbackStatus,
    /// `operator:<name>` or an agent's id.
    pub requested_by: String,
    pub reason: Option<String>,
    pub on_cannot_prepare: OnCannotPrepare,
    /// SHA-256 of the request's identity (requester, target, scope, on_cannot_prepare): the
    /// idempotency check compares it.
    pub request_hash: String,
    pub plan: Plan,
    pub failed_agents: Vec<String>,
    pub superseded_by: Option<String>,
    /// jti of the `rollback_start` evidence ECT, once signed.
    pub evidence_start: Option<String>,
    /// jti of the `rollback_complete` evidence ECT, once signed.
    pub evidence_complete: Option<String>,
    /// Free-form outcome details (decisions, comments).
    pub result: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every change: the SSE event id, and an optimistic-concurrency guard.
    pub version: i64,
}

/// One checkpoint of a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub rollback_id: String,
    pub checkpoint_id: String,
    pub agent: String,
    pub rollback_uri: Option<String>,
    pub rank: u32,
    pub critical: bool,
    pub reversible: bool,
    pub expired: bool,
    pub waits_for: Vec<String>,
    pub prepare_status: PrepareStatus,
    pub execute_status: ExecuteStatus,
    /// Every call made for this step (prepare and execute).
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub error: Option<StepError>,
    /// The agent's last answer (JSON).
    pub response: Option<Value>,
    /// Set when a superseding rollback took this step's result over from another rollback.
    pub reused_from: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A worker's claim on a rollback. Every write made under it names `owner` and `fence`; a write
/// with a stale fence (another worker took the rollback over) is refused with
/// [`crate::store::StoreError::LeaseLost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub rollback_id: String,
    pub owner: String,
    /// Incremented by every claim of this rollback.
    pub fence: i64,
    pub until: DateTime<Utc>,
}

/// What the store tells the conflict rule about one active rollback of the same workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveRollback {
    pub record: RollbackRecord,
    pub steps: Vec<StepRecord>,
}

/// Everything the decision on a new request needs, read under the workflow's lock.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateContext {
    /// The rollback already stored under the requested `rollback_id`, if any.
    pub existing: Option<RollbackRecord>,
    /// Non-terminal rollbacks of the same workflow.
    pub active: Vec<ActiveRollback>,
}

/// The decision on a new request, taken inside the store's transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateDecision {
    /// Store the new rollback (status `accepted`); mark these active ones to be superseded by it.
    Insert { supersede: Vec<String> },
    /// Same `rollback_id`, same request: answer the stored one.
    Replay,
    /// Same `rollback_id`, another request.
    IdempotencyMismatch,
    /// Loses to an active rollback.
    Conflict { conflicting_rollback_id: String },
}

/// What `create_rollback` did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created(RollbackRecord),
    Replayed(RollbackRecord),
    IdempotencyMismatch(RollbackRecord),
    Conflict { conflicting_rollback_id: String },
}

/// A new rollback with its steps, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRollback {
    pub record: RollbackRecord,
    pub steps: Vec<StepRecord>,
}

/// Filters of `GET /v1/rollbacks`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RollbackFilter {
    pub wid: Option<String>,
    pub status: Option<RollbackStatus>,
}
