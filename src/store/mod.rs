//! The ledger store: one [`Store`] trait, one implementation per database
//! ([`postgres::PgStore`], [`sqlite::SqliteStore`]) with the same behaviour.
//!
//! The `ects` table is append-only: rows are inserted, never updated or deleted (PostgreSQL and
//! SQLite both refuse UPDATE/DELETE with a trigger). Each inserted token also gets the next
//! entry of the ledger's hash chain (`ledger_chain`, [`crate::ledger::chain`]) in the same
//! transaction; the chain step is serialised by the one-row `ledger_head`.
//!
//! [`connect`] picks the implementation from the URL scheme; the service calls
//! [`Store::migrate`] at start and [`Store::ready`] for `/readyz`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::dag::DagNode;
pub use crate::ledger::chain::{ChainEntry, ChainHead};
use crate::rollback::model::{
    CreateContext, CreateDecision, CreateOutcome, Lease, NewRollback, RollbackFilter,
    RollbackRecord, RollbackStatus, StepRecord,
};
pub use circuits::{CircuitRow, CircuitStore};
pub use hitl::HitlStore;
pub use keys::{KeyStore, NewKey, StoredKey};
pub use retention::RetentionStore;

pub mod cascade;
pub mod circuits;
mod common;
pub mod hitl;
pub mod keys;
pub mod postgres;
pub mod retention;
pub mod sqlite;
mod tcp_nodelay;

/// Page size of list endpoints when the client gives none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size; larger requests are served this many items.
pub const MAX_LIMIT: u32 = 1000;

/// Opens the store named by `url`: `sqlite:` (the file and its directory are created when
/// missing) or `postgres://` / `postgresql://`. Does not migrate.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else {
        Err(StoreError::Config(format!(
            "unsupported database url scheme (expected sqlite: or postgres://): {}",
            url.split(':').next().unwrap_or_default()
        )))
    }
}

/// A verified token ready to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEct {
    pub jti: String,
    pub wid: Option<String>,
    pub iss: String,
    pub sub: Option<String>,
    pub exec_act: String,
    pub parents: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub out_hash: Option<String>,
    pub ext: Map<String, Value>,
    /// The compact JWS as received; its payload is the claims as signed (read back from it).
    pub token: String,
    pub kid: String,
    /// Lowercase hex SHA-256 of `token`.
    pub content_hash: String,
}

/// A stored token.
#[derive(Debug, Clone, PartialEq)]
pub struct EctRecord {
    /// Ledger sequence number (insertion order, gaps possible).
    pub seq: i64,
    pub jti: String,
    pub wid: Option<String>,
    pub iss: String,
    pub sub: Option<String>,
    pub exec_act: String,
    pub parents: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub out_hash: Option<String>,
    pub ext: Map<String, Value>,
    pub claims: Map<String, Value>,
    pub token: String,
    pub kid: String,
    pub content_hash: String,
    pub received_at: DateTime<Utc>,
}

/// What ingest needs to know of an already stored token (duplicate and DAG checks).
#[derive(Debug, Clone, PartialEq)]
pub struct EctMeta {
    pub jti: String,
    pub wid: Option<String>,
    pub iss: String,
    pub iat: i64,
    pub content_hash: String,
}

/// Result of appending one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new row.
    Created,
    /// The same `jti` with a byte-identical token was already stored.
    Duplicate,
}

/// Filters of `GET /v1/ects`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EctFilter {
    pub wid: Option<String>,
    pub exec_act: Option<String>,
    pub iss: Option<String>,
}

/// One page of a list, oldest first; `next_cursor` is opaque.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// One workflow (`wid`) in the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSummary {
    pub wid: String,
    pub nodes: i64,
    pub agents: i64,
    pub checkpoints: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// One `ects` row exactly as stored, for an audit of the tables against the chain
/// (`unwind verify --live --database-url`); JSON columns as their text.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEctRow {
    pub seq: i64,
    pub jti: String,
    pub wid: Option<String>,
    pub iss: String,
    pub sub: Option<String>,
    pub exec_act: String,
    pub parents: String,
    pub iat: i64,
    pub exp: i64,
    pub out_hash: Option<String>,
    pub ext: String,
    pub token: String,
    pub kid: String,
    pub content_hash: String,
}

/// Every ledger table as stored, read in one snapshot-free pass (an audit of a ledger that is
/// being written may see an append half-way: run it again before trusting a finding).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerTables {
    /// `ects` in `seq` order.
    pub ects: Vec<StoredEctRow>,
    /// `ect_edges`: (parent, child, wid).
    pub edges: Vec<(String, String, Option<String>)>,
    /// `ledger_chain` in `seq` order: (seq, jti, chain_hash).
    pub chain: Vec<(i64, String, String)>,
    /// `ledger_head`: (seq, chain_hash, backfill).
    pub head: (i64, String, bool),
    /// `workflows`: (wid, nodes, checkpoints).
    pub workflows: Vec<(String, i64, i64)>,
    /// `workflow_agents`: (wid, iss).
    pub agents: Vec<(String, String)>,
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A token with this `jti` but other content is stored (found inside the append transaction,
    /// i.e. a concurrent writer won the race); nothing of the batch was written.
    #[error("jti {0} is already stored with other content")]
    JtiConflict(String),
    /// Migrations known to this build are not all applied.
    #[error("database schema is not up to date: {0}")]
    NotMigrated(String),
    #[error("bad cursor")]
    BadCursor,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Config(String),
    /// A write under a lease whose fence is stale: another worker has taken the rollback over.
    #[error("lease on rollback {0} was lost")]
    LeaseLost(String),
    /// No rollback with this id.
    #[error("no rollback {0}")]
    NoSuchRollback(String),
    /// The rollback has no step for this checkpoint.
    #[error("rollback {rollback_id} has no step {checkpoint_id}")]
    NoSuchStep {
        rollback_id: String,
        checkpoint_id: String,
    },
    /// A value the store refuses to write (both back ends alike), or a request that contradicts
    /// what is stored; nothing was written.
    #[error("invalid write: {0}")]
    Invalid(String),
}

/// The ledger's persistence. Implementations are cheap to clone behind an `Arc`.
#[async_trait::async_trait]
pub trait Store:
    cascade::CascadeStore + CircuitStore + HitlStore + KeyStore + RetentionStore + Send + Sync + 'static
{
    fn backend(&self) -> Backend;

    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Ok when the database answers and every migration of this build is applied.
    async fn ready(&self) -> Result<(), StoreError>;

    /// The stored metadata of those of `jtis` that exist (any order).
    async fn find_meta(&self, jtis: &[String]) -> Result<Vec<EctMeta>, StoreError>;

    /// Appends a batch in one transaction. The caller orders parents before children and has
    /// checked the DAG rules. For each token, in input order: `Created`, or `Duplicate` when the
    /// same `jti` with the same `content_hash` is stored, each with the token's chain entry (the
    /// original one for a duplicate). A stored `jti` with another `content_hash` rolls the whole
    /// transaction back with [`StoreError::JtiConflict`].
    ///
    /// Created tokens are chained in input order, after the chain's head, under one lock of the
    /// head per batch: appends from any number of tasks or replicas give one gapless chain.
    /// Also records edges (parent -> child) and workflow summaries.
    async fn append_chained(
        &self,
        batch: &[NewEct],
    ) -> Result<Vec<(InsertOutcome, ChainEntry)>, StoreError>;

    /// [`Store::append_chained`] without the chain entries.
    async fn append(&self, batch: &[NewEct]) -> Result<Vec<InsertOutcome>, StoreError> {
        Ok(self
            .append_chained(batch)
            .await?
            .into_iter()
            .map(|(outcome, _)| outcome)
            .collect())
    }

    /// The chain entries of those of `jtis` that are stored (any order).
    async fn chain_entries(&self, jtis: &[String]) -> Result<Vec<ChainEntry>, StoreError>;

    /// Chain entries with `seq > after`, in chain order, at most `limit` (clamped to
    /// `1..=`[`MAX_LIMIT`]), each with its token (to recompute the entry; `None` if the
    /// token's row is missing).
    async fn chain_range(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(ChainEntry, Option<String>)>, StoreError>;

    /// The newest chain entry ([`ChainHead::genesis`] for an empty ledger).
    async fn chain_head(&self) -> Result<ChainHead, StoreError>;

    async fn get_ect(&self, jti: &str) -> Result<Option<EctRecord>, StoreError>;

    /// Tokens in ledger order (oldest first), filtered. `limit` is clamped to
    /// `1..=`[`MAX_LIMIT`]; `cursor` is a `next_cursor` of an earlier page
    /// ([`StoreError::BadCursor`] otherwise).
    async fn list_ects(
        &self,
        filter: &EctFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<EctRecord>, StoreError>;

    /// Workflows in order of first appearance.
    async fn list_workflows(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<WorkflowSummary>, StoreError>;

    async fn get_workflow(&self, wid: &str) -> Result<Option<WorkflowSummary>, StoreError>;

    /// Every node of a workflow (for the DAG, blast radius and rollback plans), in ledger order.
    /// Only rows with a chain entry count, and each node (issuer, parents, checkpoint fields) is
    /// read from the row's signed token, never from the columns beside it; a row that does not
    /// match its token is left out.
    async fn workflow_nodes(&self, wid: &str) -> Result<Vec<DagNode>, StoreError>;

    /// Every node that belongs to no workflow (no `wid`), in ledger order.
    async fn unscoped_nodes(&self) -> Result<Vec<DagNode>, StoreError>;

    /// Every ledger table as stored (for an audit; loads them whole).
    async fn ledger_tables(&self) -> Result<LedgerTables, StoreError>;

    /// Number of stored tokens.
    async fn count_ects(&self) -> Result<i64, StoreError>;

    // ---- Rollbacks (design.md §6, §7) ----

    /// Decides and records a rollback request atomically, under a per-workflow lock (PostgreSQL:
    /// a transaction-scoped advisory lock on the `wid`, which needs no row to exist; SQLite: the
    /// single writer): reads the rollback stored under the same id and the workflow's
    /// non-terminal rollbacks with their steps, calls `decide`, and applies the decision in the
    /// same transaction. `Insert` stores the record and its steps and sets `superseded_by` on
    /// each rollback named in `supersede` (their status changes later, when their worker reaches
    /// a step boundary); ids that are not active rollbacks of the workflow are ignored.
    /// Concurrent calls on several processes therefore give the same answers as serial ones.
    ///
    /// `decide` runs once per attempt (a transaction retried after a deadlock or a concurrent
    /// insert of the same id calls it again, on fresh context). The store owns the inserted
    /// record's `status` (`accepted`), `created_at`, `updated_at` (the store's clock) and
    /// `version` (1), and the steps' `rollback_id` and `updated_at`; every other field is stored
    /// as given. A decision that contradicts its context (replay without a stored rollback,
    /// insert over an existing id) is [`StoreError::Invalid`].
    ///
    /// (`for<'c>` is spelled out because `async_trait` would otherwise name the elided lifetime
    /// and `decide` could only be called with a context living as long as the call.)
    async fn create_rollback(
        &self,
        new: &NewRollback,
        decide: &(dyn for<'c> Fn(&'c CreateContext) -> CreateDecision + Send + Sync),
    ) -> Result<CreateOutcome, StoreError>;

    /// A rollback and its steps (steps ordered by rank, then checkpoint id).
    async fn get_rollback(
        &self,
        rollback_id: &str,
    ) -> Result<Option<(RollbackRecord, Vec<StepRecord>)>, StoreError>;

    /// Those of `wids` that a completed `full_workflow` rollback ended: the ledger refuses new
    /// tokens into them (`workflow_terminated`).
    async fn terminated_workflows(&self, wids: &[String]) -> Result<Vec<String>, StoreError>;

    /// Rollbacks oldest first.
    async fn list_rollbacks(
        &self,
        filter: &RollbackFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<RollbackRecord>, StoreError>;

    /// Claims one rollback that needs a worker: status `accepted`, `preparing` or `executing`,
    /// and no lease or an expired one (PostgreSQL: `FOR UPDATE SKIP LOCKED`). The claim sets the
    /// owner and expiry and increments the fence. Oldest first.
    ///
    /// Lease times come from the store's clock: PostgreSQL's `now()`, shared by every replica
    /// (so replicas' clock skew cannot end a lease early); on SQLite the process clock, which is
    /// the database's machine clock too. Like every write, a claim bumps `version`.
    async fn claim_next_rollback(
        &self,
        owner: &str,
        lease_for: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError>;

    /// Claims this rollback if it needs a worker (same rule as [`Store::claim_next_rollback`]).
    async fn claim_rollback(
        &self,
        rollback_id: &str,
        owner: &str,
        lease_for: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError>;

    /// Extends a lease still held ([`StoreError::LeaseLost`] otherwise).
    async fn renew_lease(
        &self,
        lease: &Lease,
        lease_for: std::time::Duration,
    ) -> Result<Lease, StoreError>;

    /// Gives a lease up (no error if it was already lost).
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Writes the rollback's changing fields (status, failed_agents, superseded_by, evidence,
    /// result) under a held lease; bumps `version` and `updated_at`; returns the stored record.
    /// A stale fence is [`StoreError::LeaseLost`] and writes nothing.
    ///
    /// `superseded_by` is never cleared: it is set by [`Store::create_rollback`] while a worker
    /// may hold the lease, so a `None` from the worker's older copy keeps the stored value (and
    /// the returned record tells the worker it has been superseded). The lease's expiry is not
    /// checked: the fence alone says whether another worker has taken over.
    async fn update_rollback(
        &self,
        lease: &Lease,
        record: &RollbackRecord,
    ) -> Result<RollbackRecord, StoreError>;

    /// Writes steps' changing fields (statuses, attempts, next_attempt_at, error, response,
    /// reused_from) under a held lease, all in one transaction; bumps the rollback's `version`
    /// once. Fenced like [`Store::update_rollback`]; a checkpoint without a step is
    /// [`StoreError::NoSuchStep`] and writes none of them. Every step must belong to the
    /// leased rollback. An empty slice writes nothing (and checks nothing).
    ///
    /// One transaction for the results that arrived together is what keeps the coordinator's
    /// cost per step low: a wide rank finishes with a handful of commits, not one per step.
    async fn update_steps(&self, lease: &Lease, steps: &[StepRecord]) -> Result<(), StoreError>;

    /// [`Store::update_steps`] for one step.
    async fn update_step(&self, lease: &Lease, step: &StepRecord) -> Result<(), StoreError> {
        self.update_steps(lease, std::slice::from_ref(step)).await
    }

    /// A change made without a lease (an operator's decision): only if the rollback's status is
    /// still `expected`; sets `status` and merges `result` members; bumps `version`. `None` when
    /// the status was not `expected` (nothing written); [`StoreError::NoSuchRollback`] when there
    /// is no such rollback.
    ///
    /// It also ends any lease: a worker still holding one acted on the state before the
    /// decision, so its next write is [`StoreError::LeaseLost`], and the rollback can be claimed
    /// at once when the new status needs a worker.
    async fn transition_rollback(
        &self,
        rollback_id: &str,
        expected: RollbackStatus,
        to: RollbackStatus,
        result: serde_json::Map<String, Value>,
    ) -> Result<Option<RollbackRecord>, StoreError>;
}
