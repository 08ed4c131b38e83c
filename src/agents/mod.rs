//! The coordinator's HTTP client to agents (api.md, "Agent protocol"; design.md §6, §8).
//!
//! A rollback step calls its agent twice: prepare (`POST {rollback_uri}/prepare`), then execute
//! (`POST {rollback_uri}`), both carrying the rollback's `rollback_start` ECT in
//! `Execution-Context`. [`AgentClient`] makes one such call at a time (`*_once`) or retries it
//! with [`Backoff`] until a final answer or the step's deadline. It decides only what an
//! answer means for the call (answer, retry, give up); the rollback driver decides what it
//! means for the step and records the attempts.
//!
//! Safety rules enforced here rather than by callers: the `rollback_uri` must be allowed for
//! the checkpoint's issuer before every call; redirects are never followed; answers are read
//! within a size cap; a call never outlives the step deadline.
//!
//! Containment (the cascade draft's "Circuit Breaker Protocol" and "Bulkhead Patterns"): every
//! call waits for a place in its workflow's [`bulkhead`], then asks the agent's circuit breaker
//! ([`circuit`] is the state machine, [`breakers`] shares it between replicas), which may refuse
//! it locally. Each call's duration also feeds the agent's [`latency`] signal.

mod answer;
mod backoff;
pub mod breakers;
pub mod bulkhead;
pub mod circuit;
mod client;
pub mod latency;

pub use answer::{ExecuteAnswer, ExecuteResult, PrepareAnswer};
pub use backoff::Backoff;
pub use client::{
    AgentClient, AgentError, AttemptReport, CallError, CallOutcome, CallSettings,
    DEFAULT_CALL_TIMEOUT, EXECUTION_CONTEXT, Final, MAX_ANSWER_BYTES, StepCall,
};
