//! The agent side of the Unwind rollback protocol.
//!
//! An agent takes a checkpoint before each consequential action ([`CheckpointStore`] keeps the
//! snapshot encrypted, under a quota, until it expires) and publishes a signed `checkpoint`
//! ECT naming its rollback endpoint. When the coordinator rolls back, it calls that endpoint in
//! two phases (prepare, then execute) with its `rollback_start` ECT in `Execution-Context`;
//! [`Agent::router`] serves those calls, verifies the coordinator's token, checks the snapshot
//! against `out_hash` before any restore, runs the [`RollbackHandler`] hooks at most once per
//! `rollback_id` (also across restarts), and answers with signed evidence.
//!
//! ```no_run
//! use std::sync::Arc;
//! use unwind_ect::{KeyAlg, SigningKey};
//! use unwind_agent::{
//!     Agent, CheckpointCtx, CheckpointStore, CoordinatorKeys, HandlerError, RestoreOutcome,
//!     RollbackHandler, SnapshotKey, StoreOptions,
//! };
//!
//! struct Router7;
//!
//! #[unwind_agent::async_trait]
//! impl RollbackHandler for Router7 {
//!     async fn restore(&self, _ctx: &CheckpointCtx, snapshot: Vec<u8>)
//!         -> Result<RestoreOutcome, HandlerError> {
//!         // apply `snapshot` (it decrypted and matched out_hash) to the router here
//!         let _ = snapshot;
//!         Ok(RestoreOutcome::completed())
//!     }
//! }
//!
//! # async fn run(coordinator_jwks: jsonwebtoken::jwk::JwkSet) -> Result<(), Box<dyn std::error::Error>> {
//! let id = "spiffe://example.com/agent/netops";
//! let store = CheckpointStore::open(StoreOptions::new(
//!     "sqlite://agent-data/agent.db", id, SnapshotKey::generate()?)).await?;
//! let agent = Agent::builder()
//!     .id(id)
//!     .signing_key(SigningKey::generate(KeyAlg::ES256)?)
//!     .coordinator("spiffe://unwind.local/coordinator", CoordinatorKeys::Static(coordinator_jwks))
//!     .store(store)
//!     .handler(Arc::new(Router7))
//!     .build()?;
//!
//! // Before a consequential action: record the state and publish the checkpoint ECT.
//! let (checkpoint, token) = agent
//!     .checkpoint(b"bgp peers: ...", 86_400, Some("router-07"), true, "wf-1", &[],
//!                 Some("https://netops.example.com/.well-known/cascade/rollback"))
//!     .await?;
//! # let _ = (checkpoint, token);
//!
//! let _purger = agent.spawn_purger(std::time::Duration::from_secs(60));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! axum::serve(listener, agent.router()).await?;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod cli;
pub mod crypto;
pub mod ects;
pub mod http;
pub mod reference;
pub mod store;

pub use agent::{
    Agent, AgentBuilder, AgentError, CheckpointCtx, CoordinatorKeys, HandlerError, PrepareDecision,
    RestoreOutcome, RollbackHandler, RollbackStatus, record_and_sign,
};
/// Implementations of [`RollbackHandler`] use this attribute.
pub use async_trait::async_trait;
pub use crypto::{SnapshotKey, out_hash};
pub use ects::{EctSigner, RollbackResult, SignError};
pub use store::{CheckpointStore, IntegrityFailure, StoreError, StoreOptions, StoredCheckpoint};
