//! Durable checkpoint storage and the per-`rollback_id` answer table, in one SQLite database.
//!
//! Tables (created at open, no migration history needed for two tables):
//! - `checkpoints`: one row per checkpoint; the snapshot is kept only as AES-256-GCM
//!   `ciphertext` with its `nonce`, next to `out_hash` (base64url SHA-256 of the plaintext), so
//!   a restore can prove it got back exactly what was recorded.
//! - `rollback_answers`: the idempotency table, keyed by (`rollback_id`, `checkpoint_id`,
//!   `phase`). A request first *claims* its key with one atomic `INSERT ... ON CONFLICT DO
//!   NOTHING` (a `pending` row naming this store instance); only the claimant runs the hook,
//!   then stores the answer. A duplicate finds the row and returns the stored answer, or waits
//!   while it is pending. A `pending` row left by another instance means a process stopped in
//!   the middle of a hook; the caller decides what that means for its phase.
//!
//! One `serve` process per database: two would each take the other's pending rows for
//! interrupted ones (the reference binary holds a lock file for that reason). Other processes
//! may record checkpoints into the same file at any time (WAL mode, busy timeout).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::crypto::{self, SnapshotKey};

/// How long a connection waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval of a duplicate request waiting for the claimant's answer.
const CLAIM_POLL: Duration = Duration::from_millis(20);
/// Default storage quota: 64 MiB of encrypted snapshots.
pub const DEFAULT_QUOTA_BYTES: u64 = 64 * 1024 * 1024;
/// Default time stored answers are kept (the coordinator's evidence lifetime, 7 days).
pub const DEFAULT_ANSWER_RETENTION_S: i64 = 7 * 24 * 3600;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS checkpoints (
        jti         TEXT PRIMARY KEY,
        agent       TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        ttl_s       INTEGER NOT NULL,
        target      TEXT,
        reversible  INTEGER NOT NULL,
        out_hash    TEXT NOT NULL,
        nonce       BLOB NOT NULL,
        ciphertext  BLOB NOT NULL,
        size        INTEGER NOT NULL,
        wid         TEXT,
        token       TEXT
    )",
    "CREATE INDEX IF NOT EXISTS checkpoints_expiry ON checkpoints (expires_at)",
    "CREATE INDEX IF NOT EXISTS checkpoints_agent ON checkpoints (agent)",
    "CREATE TABLE IF NOT EXISTS rollback_answers (
        rollback_id   TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL,
        phase         TEXT NOT NULL,
        state         TEXT NOT NULL,
        owner         TEXT NOT NULL,
        answer        TEXT,
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (rollback_id, checkpoint_id, phase)
    )",
];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("storage quota exceeded: {used} + {requested} bytes > {quota} bytes")]
    QuotaExceeded {
        used: u64,
        requested: u64,
        quota: u64,
    },
    #[error("checkpoint not found")]
    NotFound,
    #[error("checkpoint integrity check failed: {0}")]
    Integrity(IntegrityFailure),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("encryption failed")]
    Crypto,
    #[error("another request for the same rollback is still running")]
    Busy,
    #[error("configuration: {0}")]
    Config(String),
}

/// How a stored snapshot failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityFailure {
    /// Decryption failed: ciphertext, nonce or tag altered (or another key).
    Decrypt,
    /// The decrypted snapshot's SHA-256 is not the recorded `out_hash`.
    HashMismatch,
}

impl std::fmt::Display for IntegrityFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Decrypt => "snapshot does not decrypt",
            Self::HashMismatch => "snapshot does not match out_hash",
        })
    }
}

/// How to open a [`CheckpointStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://path/to/file.db` (created when missing) or `sqlite::memory:`.
    pub url: String,
    /// The agent whose checkpoints this store holds; rows of other agents are invisible.
    pub agent_id: String,
    /// Key that encrypts snapshots at rest.
    pub key: SnapshotKey,
    /// Most bytes of encrypted snapshots this agent may hold.
    pub quota_bytes: u64,
    /// How long answers to rollback requests are kept, in seconds.
    pub answer_retention_s: i64,
}

impl StoreOptions {
    /// Options with the default quota and retention.
    pub fn new(url: impl Into<String>, agent_id: impl Into<String>, key: SnapshotKey) -> Self {
        Self {
            url: url.into(),
            agent_id: agent_id.into(),
            key,
            quota_bytes: DEFAULT_QUOTA_BYTES,
            answer_retention_s: DEFAULT_ANSWER_RETENTION_S,
        }
    }

    /// The database file `agent.db` in `dir`.
    pub fn in_dir(dir: &Path, agent_id: impl Into<String>, key: SnapshotKey) -> Self {
        Self::new(
            format!("sqlite://{}", dir.join("agent.db").display()),
            agent_id,
            key,
        )
    }
}

/// A recorded checkpoint's metadata (the snapshot itself stays encrypted in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Checkpoint id, also the `jti` of its ECT.
    pub jti: String,
    pub agent: String,
    /// Unix seconds; the checkpoint ECT's `iat`.
    pub created_at: i64,
    /// `created_at + ttl_s`.
    pub expires_at: i64,
    pub ttl_s: u64,
    pub target: Option<String>,
    pub reversible: bool,
    /// base64url SHA-256 of the plaintext snapshot.
    pub out_hash: String,
    /// Bytes counted against the quota (nonce + ciphertext + tag).
    pub size: u64,
    /// The workflow of the checkpoint ECT, once signed.
    pub wid: Option<String>,
    /// The signed checkpoint ECT, once signed.
    pub token: Option<String>,
}

impl StoredCheckpoint {
    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }
}

/// The key of one idempotent answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    pub rollback_id: String,
    pub checkpoint_id: String,
    /// `prepare` or `execute`.
    pub phase: String,
}

/// Result of [`CheckpointStore::claim`].
#[derive(Debug)]
pub enum Claim {
    /// This caller owns the key: run the hook, then [`CheckpointStore::complete`] (or
    /// [`CheckpointStore::release`] when nothing happened and a retry may run it).
    Owned,
    /// The stored answer of an earlier request with the same key.
    Answered(Value),
    /// A pending claim of another store instance: a process stopped during the hook.
    Interrupted { owner: String },
}

/// Durable, encrypted checkpoint storage with a quota, expiry, and the idempotency table.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    pool: SqlitePool,
    agent_id: String,
    key: SnapshotKey,
    quota_bytes: u64,
    answer_retention_s: i64,
    /// Identifies this open store in `rollback_answers.owner`.
    instance: String,
}

impl CheckpointStore {
    /// Opens (creating when missing) the database and its tables.
    pub async fn open(options: StoreOptions) -> Result<Self, StoreError> {
        if options.agent_id.is_empty() {
            return Err(StoreError::Config("agent id is empty".into()));
        }
        let connect = SqliteConnectOptions::from_str(&options.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            // Deleted snapshots are overwritten, not left in free pages.
            .pragma("secure_delete", "on");
        let file = connect.get_filename();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                StoreError::Config(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        // One connection: the agent's load is small, every write is serialised in the process,
        // and `sqlite::memory:` stays one database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect)
            .await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&pool).await?;
        }
        Ok(Self {
            pool,
            agent_id: options.agent_id,
            key: options.key,
            quota_bytes: options.quota_bytes,
            answer_retention_s: options.answer_retention_s,
            instance: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// The agent whose checkpoints this store holds.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// Records a snapshot now; see [`CheckpointStore::record_at`].
    pub async fn record(
        &self,
        snapshot: &[u8],
        ttl_s: u64,
        target: Option<&str>,
        reversible: bool,
    ) -> Result<StoredCheckpoint, StoreError> {
        self.record_at(snapshot, ttl_s, target, reversible, now_unix())
            .await
    }

    /// Records a snapshot taken at `now` (Unix seconds): encrypts it under a fresh nonce,
    /// computes `out_hash`, and stores it unless the quota would be exceeded. Expired
    /// checkpoints are purged first so they never count against the quota.
    pub async fn record_at(
        &self,
        snapshot: &[u8],
        ttl_s: u64,
        target: Option<&str>,
        reversible: bool,
        now: i64,
    ) -> Result<StoredCheckpoint, StoreError> {
        if ttl_s == 0 {
            return Err(StoreError::Invalid("ttl must be positive".into()));
        }
        let ttl = i64::try_from(ttl_s).map_err(|_| StoreError::Invalid("ttl too large".into()))?;
        let expires_at = now
            .checked_add(ttl)
            .ok_or_else(|| StoreError::Invalid("ttl too large".into()))?;
        self.purge_expired(now).await?;

        let jti = uuid::Uuid::new_v4().to_string();
        let out_hash = crypto::out_hash(snapshot);
        let (nonce, ciphertext) = self
            .key
            .seal(jti.as_bytes(), snapshot)
            .map_err(|_| StoreError::Crypto)?;
        let size = (nonce.len() + ciphertext.len()) as u64;
        let quota = i64::try_from(self.quota_bytes).unwrap_or(i64::MAX);
        // One statement: the quota check and the insert cannot be split by another writer.
        let inserted = sqlx::query(
            "INSERT INTO checkpoints (jti, agent, created_at, expires_at, ttl_s, target, \
             reversible, out_hash, nonce, ciphertext, size) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? \
             WHERE (SELECT COALESCE(SUM(size), 0) FROM checkpoints WHERE agent = ?) + ? <= ?",
        )
        .bind(&jti)
        .bind(&self.agent_id)
        .bind(now)
        .bind(expires_at)
        .bind(ttl)
        .bind(target)
        .bind(reversible)
        .bind(&out_hash)
        .bind(&nonce[..])
        .bind(&ciphertext)
        .bind(size as i64)
        .bind(&self.agent_id)
        .bind(size as i64)
        .bind(quota)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::QuotaExceeded {
                used: self.usage_bytes().await?,
                requested: size,
                quota: self.quota_bytes,
            });
        }
        Ok(StoredCheckpoint {
            jti,
            agent: self.agent_id.clone(),
            created_at: now,
            expires_at,
            ttl_s,
            target: target.map(str::to_owned),
            reversible,
            out_hash,
            size,
            wid: None,
            token: None,
        })
    }

    /// Bytes of encrypted snapshots this agent holds.
    pub async fn usage_bytes(&self) -> Result<u64, StoreError> {
        let used: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(size), 0) FROM checkpoints WHERE agent = ?")
                .bind(&self.agent_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(used).unwrap_or(0))
    }

    /// Keeps the signed checkpoint ECT (served by the checkpoint probe) and its workflow.
    pub async fn attach_token(
        &self,
        jti: &str,
        token: &str,
        wid: Option<&str>,
    ) -> Result<(), StoreError> {
        let updated =
            sqlx::query("UPDATE checkpoints SET token = ?, wid = ? WHERE jti = ? AND agent = ?")
                .bind(token)
                .bind(wid)
                .bind(jti)
                .bind(&self.agent_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The checkpoint's metadata, without touching the snapshot; `None` when unknown or
    /// belonging to another agent.
    pub async fn get(&self, jti: &str) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT jti, agent, created_at, expires_at, ttl_s, target, reversible, out_hash, \
             size, wid, token FROM checkpoints WHERE jti = ? AND agent = ?",
        )
        .bind(jti)
        .bind(&self.agent_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| checkpoint_from_row(&r)).transpose()
    }

    /// Decrypts the snapshot and checks its SHA-256 against the recorded `out_hash`; only a
    /// snapshot that passes is returned, so a restore never sees tampered state.
    pub async fn load(&self, jti: &str) -> Result<Vec<u8>, StoreError> {
        let row = sqlx::query(
            "SELECT out_hash, nonce, ciphertext FROM checkpoints WHERE jti = ? AND agent = ?",
        )
        .bind(jti)
        .bind(&self.agent_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        let expected: String = row.try_get("out_hash")?;
        let nonce: Vec<u8> = row.try_get("nonce")?;
        let ciphertext: Vec<u8> = row.try_get("ciphertext")?;
        let snapshot = self
            .key
            .open(jti.as_bytes(), &nonce, &ciphertext)
            .map_err(|_| StoreError::Integrity(IntegrityFailure::Decrypt))?;
        if !crypto::constant_time_eq(&crypto::out_hash(&snapshot), &expected) {
            return Err(StoreError::Integrity(IntegrityFailure::HashMismatch));
        }
        Ok(snapshot)
    }

    /// True when the stored snapshot decrypts and matches `out_hash`.
    pub async fn verify(&self, jti: &str) -> Result<bool, StoreError> {
        match self.load(jti).await {
            Ok(_) => Ok(true),
            Err(StoreError::Integrity(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes checkpoints expired at `now` (and answers older than the retention); returns the
    /// number of checkpoints deleted.
    pub async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let purged = sqlx::query("DELETE FROM checkpoints WHERE agent = ? AND expires_at <= ?")
            .bind(&self.agent_id)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM rollback_answers WHERE state = 'done' AND created_at <= ?")
            .bind(now.saturating_sub(self.answer_retention_s))
            .execute(&self.pool)
            .await?;
        Ok(purged)
    }

    /// Claims `key` for this caller, or returns the stored answer. While another request of
    /// this instance holds the key, waits (up to `wait`) for its answer; past that,
    /// [`StoreError::Busy`].
    pub async fn claim(&self, key: &AnswerKey, wait: Duration) -> Result<Claim, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let inserted = sqlx::query(
                "INSERT INTO rollback_answers (rollback_id, checkpoint_id, phase, state, owner, \
                 answer, created_at) VALUES (?, ?, ?, 'pending', ?, NULL, ?) \
                 ON CONFLICT (rollback_id, checkpoint_id, phase) DO NOTHING",
            )
            .bind(&key.rollback_id)
            .bind(&key.checkpoint_id)
            .bind(&key.phase)
            .bind(&self.instance)
            .bind(now_unix())
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(Claim::Owned);
            }
            let row = sqlx::query(
                "SELECT state, owner, answer FROM rollback_answers \
                 WHERE rollback_id = ? AND checkpoint_id = ? AND phase = ?",
            )
            .bind(&key.rollback_id)
            .bind(&key.checkpoint_id)
            .bind(&key.phase)
            .fetch_optional(&self.pool)
            .await?;
            // A row deleted between the two statements (a released claim): try again.
            if let Some(row) = row {
                let state: String = row.try_get("state")?;
                let owner: String = row.try_get("owner")?;
                if state == "done" {
                    let answer: Option<String> = row.try_get("answer")?;
                    let answer = answer.unwrap_or_default();
                    let value = serde_json::from_str(&answer).map_err(|e| {
                        StoreError::Invalid(format!("stored answer is not JSON: {e}"))
                    })?;
                    return Ok(Claim::Answered(value));
                }
                if owner != self.instance {
                    return Ok(Claim::Interrupted { owner });
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(StoreError::Busy);
                }
                tokio::time::sleep(CLAIM_POLL).await;
            }
        }
    }

    /// Takes over a claim left pending by `previous_owner`; false when someone else got it
    /// first (claim again to see their answer).
    pub async fn take_over(
        &self,
        key: &AnswerKey,
        previous_owner: &str,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE rollback_answers SET owner = ? WHERE rollback_id = ? AND checkpoint_id = ? \
             AND phase = ? AND state = 'pending' AND owner = ?",
        )
        .bind(&self.instance)
        .bind(&key.rollback_id)
        .bind(&key.checkpoint_id)
        .bind(&key.phase)
        .bind(previous_owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Stores the answer of a claimed key; later requests with the key get exactly this.
    pub async fn complete(&self, key: &AnswerKey, answer: &Value) -> Result<(), StoreError> {
        let text = serde_json::to_string(answer)
            .map_err(|e| StoreError::Invalid(format!("answer: {e}")))?;
        sqlx::query(
            "UPDATE rollback_answers SET state = 'done', answer = ? \
             WHERE rollback_id = ? AND checkpoint_id = ? AND phase = ? AND owner = ?",
        )
        .bind(text)
        .bind(&key.rollback_id)
        .bind(&key.checkpoint_id)
        .bind(&key.phase)
        .bind(&self.instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives up a claim without an answer (nothing was done; a retry may run the hook).
    pub async fn release(&self, key: &AnswerKey) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM rollback_answers WHERE rollback_id = ? AND checkpoint_id = ? \
             AND phase = ? AND state = 'pending' AND owner = ?",
        )
        .bind(&key.rollback_id)
        .bind(&key.checkpoint_id)
        .bind(&key.phase)
        .bind(&self.instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The stored answer for `key`, if one was completed.
    pub async fn answer(&self, key: &AnswerKey) -> Result<Option<Value>, StoreError> {
        let answer: Option<Option<String>> = sqlx::query_scalar(
            "SELECT answer FROM rollback_answers WHERE rollback_id = ? AND checkpoint_id = ? \
             AND phase = ? AND state = 'done'",
        )
        .bind(&key.rollback_id)
        .bind(&key.checkpoint_id)
        .bind(&key.phase)
        .fetch_optional(&self.pool)
        .await?;
        match answer.flatten() {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StoreError::Invalid(format!("stored answer is not JSON: {e}"))),
            None => Ok(None),
        }
    }

    /// Closes the database (tests reopen the same file to simulate a restart).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn checkpoint_from_row(row: &SqliteRow) -> Result<StoredCheckpoint, StoreError> {
    let ttl: i64 = row.try_get("ttl_s")?;
    let size: i64 = row.try_get("size")?;
    Ok(StoredCheckpoint {
        jti: row.try_get("jti")?,
        agent: row.try_get("agent")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        ttl_s: u64::try_from(ttl).unwrap_or(0),
        target: row.try_get("target")?,
        reversible: row.try_get("reversible")?,
        out_hash: row.try_get("out_hash")?,
        size: u64::try_from(size).unwrap_or(0),
        wid: row.try_get("wid")?,
        token: row.try_get("token")?,
    })
}

/// Current Unix time in seconds.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}
