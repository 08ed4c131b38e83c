//! Rollbacks: which checkpoints a rollback calls and in what order (design.md §5, §6).
//!
//! - [`planner`]: pure planning over a [`crate::dag::WorkflowGraph`]: the checkpoint a trigger
//!   resolves to, the steps of a scope, their ranks, dependencies and critical path.
//! - [`model`]: the persisted rollback: status machine, steps, leases, conflict context.

pub mod conflict;
pub mod driver;
pub mod evidence;
mod inflight;
pub mod model;
pub mod planner;
pub mod request;

pub use model::{
    ExecuteStatus, Lease, OnCannotPrepare, PrepareStatus, RollbackRecord, RollbackStatus,
    StepError, StepRecord,
};
pub use planner::{Plan, PlanError, PlannedStep, Scope, Target, nearest_checkpoint, plan};
