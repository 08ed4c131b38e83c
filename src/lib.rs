//! Unwind: a rollback coordinator for multi-agent workflows.
//!
//! Agents record what they did as Execution Context Tokens (ECTs, signed JWTs whose parent
//! lists form a DAG). Unwind verifies and appends them to a ledger ([`ledger`], [`store`]),
//! answers questions about their DAG ([`dag`]), plans rollbacks over it ([`rollback`]) and
//! serves all of it over HTTP ([`api`]).
//! See `docs/architecture.md` for the map of modules and what may call what.

pub mod agents;
pub mod api;
pub mod cascade;
pub mod cli;
pub mod config;
pub mod dag;
pub mod hitl;
pub mod ledger;
pub mod retention;
pub mod rollback;
pub mod service;
pub mod store;
pub mod ui;

/// The token library, kept in its own crate so agents can use it without the coordinator.
pub use unwind_ect as ect;
