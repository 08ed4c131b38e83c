//! The ledger store: one [`Store`] trait, one implementation per database
//! ([`postgres::PgStore`], [`sqlite::SqliteStore`]) with the same behaviour.
//!
//! The `ects` table is append-only: rows are inserted, never updated or deleted (PostgreSQL and
//! SQLite both refuse UPDATE/DELETE with a trigger).
//!
//! [`connect`] picks the implementation from the URL scheme; the service calls
//! [`Store::migrate`] at start and [`Store::ready`] for `/readyz`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::dag::DagNode;

mod common;
pub mod postgres;
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
}

/// The ledger's persistence. Implementations are cheap to clone behind an `Arc`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Ok when the database answers and every migration of this build is applied.
    async fn ready(&self) -> Result<(), StoreError>;

    /// The stored metadata of those of `jtis` that exist (any order).
    async fn find_meta(&self, jtis: &[String]) -> Result<Vec<EctMeta>, StoreError>;

    /// Appends a batch in one transaction. The caller orders parents before children and has
    /// checked the DAG rules. For each token, in input order: `Created`, or `Duplicate` when the
    /// same `jti` with the same `content_hash` is stored. A stored `jti` with another
    /// `content_hash` rolls the whole transaction back with [`StoreError::JtiConflict`].
    /// Also records edges (parent -> child) and workflow summaries.
    async fn append(&self, batch: &[NewEct]) -> Result<Vec<InsertOutcome>, StoreError>;

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

    /// Every node of a workflow (for the DAG and blast radius), in ledger order.
    async fn workflow_nodes(&self, wid: &str) -> Result<Vec<DagNode>, StoreError>;

    /// Every node that belongs to no workflow (no `wid`), in ledger order.
    async fn unscoped_nodes(&self) -> Result<Vec<DagNode>, StoreError>;

    /// Number of stored tokens.
    async fn count_ects(&self) -> Result<i64, StoreError>;
}
