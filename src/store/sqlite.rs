//! SQLite implementation of [`Store`]: the embedded default, one file, nothing to install.
//!
//! SQLite allows one writer at a time. Rather than let several pooled connections race for the
//! write lock (and fail with `SQLITE_BUSY` when a reader's transaction tries to upgrade), all
//! writes go through a pool of exactly one connection, which serialises them in the process;
//! reads use a separate pool and, thanks to WAL, never wait for the writer.

mod cascade;
mod circuits;
mod keys;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use futures::TryStreamExt as _;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use serde_json::{Map, Value};

use super::common::{
    self, AppliedRow, ChainRow, ChainRowWithToken, DagNodeRow, EctRow, HeadRow, LeaseRow, MetaRow,
    Resolution, RollbackRow, StepRow, WorkflowRow,
};
use super::{
    Backend, ChainEntry, ChainHead, EctFilter, EctMeta, EctRecord, InsertOutcome, LedgerTables,
    NewEct, Page, Store, StoreError, WorkflowSummary,
};
use crate::dag::DagNode;
use crate::rollback::model::{
    CreateContext, CreateDecision, CreateOutcome, Lease, NewRollback, RollbackFilter,
    RollbackRecord, RollbackStatus, StepRecord,
};

mod hitl;
mod retention;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row statement: 15 binds a row keeps a chunk far below SQLite's bind limit.
const CHUNK: usize = 500;
/// Steps per multi-row insert (18 binds a step).
const STEP_CHUNK: usize = 400;
/// Readers; WAL lets them run beside the single writer.
const READERS: u32 = 4;
/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const ECT_COLUMNS: &str = "seq, jti, wid, iss, sub, exec_act, parents, iat, exp, out_hash, ext, \
     token, kid, content_hash, received_at";

const WORKFLOW_COLUMNS: &str = "w.seq, w.wid, w.nodes, w.checkpoints, w.first_seen, \
     w.last_seen, (SELECT count(*) FROM workflow_agents a WHERE a.wid = w.wid) AS agents";

/// The ledger in a SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write transaction runs here, one after the other.
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating when missing) the database file of a `sqlite:` URL and its directory.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Durable at every checkpoint; a power loss may lose the last transactions but never
            // corrupts the file (the usual choice with WAL).
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);

        let file = options.get_filename();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Config(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }

        // The writer is opened first: it creates the file and switches it to WAL before any
        // reader connects. It never idles out, which also keeps `sqlite::memory:` alive.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options)
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    /// The single-connection pool all writes go through (for modules with their own tables).
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The pool for reads.
    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    async fn insert_ects(
        tx: &mut sqlx::SqliteConnection,
        encoded: &[common::EncodedEct<'_>],
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<HashSet<String>, StoreError> {
        let mut created = HashSet::with_capacity(encoded.len());
        for chunk in encoded.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO ects (jti, wid, iss, sub, exec_act, parents, iat, exp, out_hash, \
                 ext, token, kid, content_hash, received_at) ",
            );
            qb.push_values(chunk, |mut row, e| {
                row.push_bind(&e.ect.jti)
                    .push_bind(&e.ect.wid)
                    .push_bind(&e.ect.iss)
                    .push_bind(&e.ect.sub)
                    .push_bind(&e.ect.exec_act)
                    .push_bind(&e.parents)
                    .push_bind(e.ect.iat)
                    .push_bind(e.ect.exp)
                    .push_bind(&e.ect.out_hash)
                    .push_bind(&e.ext)
                    .push_bind(&e.ect.token)
                    .push_bind(&e.ect.kid)
                    .push_bind(&e.ect.content_hash)
                    .push_bind(received_at);
            });
            qb.push(" ON CONFLICT (jti) DO NOTHING RETURNING jti");
            let mut rows = qb.build_query_scalar::<String>().fetch(&mut *tx);
            while let Some(jti) = rows.try_next().await? {
                created.insert(jti);
            }
        }
        Ok(created)
    }

    async fn stored_hashes(
        tx: &mut sqlx::SqliteConnection,
        jtis: &[&str],
    ) -> Result<HashMap<String, String>, StoreError> {
        let mut stored = HashMap::with_capacity(jtis.len());
        for chunk in jtis.chunks(CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("SELECT jti, content_hash FROM ects WHERE jti IN (");
            let mut list = qb.separated(", ");
            for jti in chunk {
                list.push_bind(*jti);
            }
            qb.push(")");
            let rows: Vec<(String, String)> = qb.build_query_as().fetch_all(&mut *tx).await?;
            stored.extend(rows);
        }
        Ok(stored)
    }

    async fn head_in(conn: &mut sqlx::SqliteConnection) -> Result<HeadRow, StoreError> {
        Ok(
            sqlx::query_as("SELECT seq, chain_hash, backfill FROM ledger_head WHERE id = 1")
                .fetch_one(&mut *conn)
                .await?,
        )
    }

    /// Inserts chain entries and moves the head (inside the caller's write transaction).
    async fn write_chain(
        tx: &mut sqlx::SqliteConnection,
        entries: &[ChainEntry],
        head: &ChainHead,
        backfill: bool,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        for chunk in entries.chunks(CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO ledger_chain (seq, jti, chain_hash) ");
            qb.push_values(chunk, |mut row, e| {
                row.push_bind(e.seq)
                    .push_bind(&e.jti)
                    .push_bind(&e.chain_hash);
            });
            qb.build().execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE ledger_head SET seq = ?, chain_hash = ?, backfill = ? WHERE id = 1")
            .bind(head.seq)
            .bind(&head.chain_hash)
            .bind(backfill)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn chain_entries_in(
        conn: &mut sqlx::SqliteConnection,
        jtis: &[&str],
    ) -> Result<Vec<ChainEntry>, StoreError> {
        let mut out = Vec::with_capacity(jtis.len());
        for chunk in jtis.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {} WHERE c.jti IN (",
                common::CHAIN_COLUMNS
            ));
            let mut list = qb.separated(", ");
            for jti in chunk {
                list.push_bind(*jti);
            }
            qb.push(")");
            let rows: Vec<ChainRow> = qb.build_query_as().fetch_all(&mut *conn).await?;
            for row in rows {
                out.push(row.into_entry()?);
            }
        }
        Ok(out)
    }

    /// Chains the rows stored before the chain existed, in `ects.seq` order, once (under the
    /// write lock, so no append can come between).
    async fn backfill_chain(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let row = Self::head_in(&mut tx).await?;
        let chained: bool = sqlx::query_scalar(common::CHAIN_HAS_ENTRIES_SQL)
            .fetch_one(&mut *tx)
            .await?;
        if !common::backfill_allowed(&row, chained) {
            return Ok(());
        }
        let mut head = row.head();
        let mut after = i64::MIN;
        loop {
            let page: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT e.seq, e.jti, e.content_hash FROM ects e WHERE e.seq > ? \
                 AND NOT EXISTS (SELECT 1 FROM ledger_chain c WHERE c.jti = e.jti) \
                 ORDER BY e.seq LIMIT ?",
            )
            .bind(after)
            .bind(common::BACKFILL_PAGE)
            .fetch_all(&mut *tx)
            .await?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = *last;
            let items: Vec<(&str, &str)> = page
                .iter()
                .map(|(_, j, h)| (j.as_str(), h.as_str()))
                .collect();
            let entries = common::extend_chain(&mut head, &items)?;
            Self::write_chain(&mut tx, &entries, &head, true).await?;
        }
        sqlx::query("UPDATE ledger_head SET backfill = 0 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_derived(
        tx: &mut sqlx::SqliteConnection,
        derived: &common::Derived,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        for chunk in derived.edges.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO ect_edges (parent, child, wid) ");
            qb.push_values(chunk, |mut row, (parent, child, wid)| {
                row.push_bind(parent).push_bind(child).push_bind(wid);
            });
            qb.push(" ON CONFLICT DO NOTHING");
            qb.build().execute(&mut *tx).await?;
        }
        let workflows: Vec<_> = derived.workflows.iter().collect();
        for chunk in workflows.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO workflows (wid, first_seen, last_seen, nodes, checkpoints) ",
            );
            qb.push_values(chunk, |mut row, (wid, (nodes, checkpoints))| {
                row.push_bind(*wid)
                    .push_bind(now)
                    .push_bind(now)
                    .push_bind(*nodes)
                    .push_bind(*checkpoints);
            });
            qb.push(
                " ON CONFLICT (wid) DO UPDATE SET last_seen = excluded.last_seen, \
                 nodes = workflows.nodes + excluded.nodes, \
                 checkpoints = workflows.checkpoints + excluded.checkpoints",
            );
            qb.build().execute(&mut *tx).await?;
        }
        let agents: Vec<_> = derived.agents.iter().collect();
        for chunk in agents.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO workflow_agents (wid, iss) ");
            qb.push_values(chunk, |mut row, (wid, iss)| {
                row.push_bind(wid).push_bind(iss);
            });
            qb.push(" ON CONFLICT DO NOTHING");
            qb.build().execute(&mut *tx).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.writer).await?;
        self.backfill_chain().await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        let has_table: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.reader)
        .await?;
        if has_table == 0 {
            return Err(StoreError::NotMigrated("no migration applied".into()));
        }
        let applied: Vec<AppliedRow> =
            sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
                .fetch_all(&self.reader)
                .await?;
        common::check_applied(&MIGRATOR, &applied)
    }

    async fn find_meta(&self, jtis: &[String]) -> Result<Vec<EctMeta>, StoreError> {
        let mut found = Vec::new();
        for chunk in jtis.chunks(CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT jti, wid, iss, iat, content_hash FROM ects WHERE jti IN (",
            );
            let mut list = qb.separated(", ");
            for jti in chunk {
                list.push_bind(jti);
            }
            qb.push(")");
            let rows: Vec<MetaRow> = qb.build_query_as().fetch_all(&self.reader).await?;
            found.extend(rows.into_iter().map(EctMeta::from));
        }
        Ok(found)
    }

    async fn append_chained(
        &self,
        batch: &[NewEct],
    ) -> Result<Vec<(InsertOutcome, ChainEntry)>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = common::encode_batch(batch)?;
        let now = common::now();
        // IMMEDIATE takes the write lock up front, so another process writing the same file
        // makes us wait (busy timeout) instead of failing half-way through.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;

        let created = Self::insert_ects(&mut tx, &encoded, now).await?;
        let others: Vec<&str> = batch
            .iter()
            .map(|e| e.jti.as_str())
            .filter(|j| !created.contains(*j))
            .collect();
        let stored = Self::stored_hashes(&mut tx, &others).await?;
        let outcomes = match common::outcomes(batch, &created, &stored) {
            Ok(o) => o,
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        };
        let derived = common::derive(batch, &created);
        Self::record_derived(&mut tx, &derived, now).await?;
        // The write lock taken by BEGIN IMMEDIATE serialises the chain step.
        let mut head = Self::head_in(&mut tx).await?.head();
        let entries = common::extend_chain(&mut head, &common::chain_items(batch, &created))?;
        Self::write_chain(&mut tx, &entries, &head, false).await?;
        let mut entries = entries;
        if !others.is_empty() {
            entries.extend(Self::chain_entries_in(&mut tx, &others).await?);
        }
        tx.commit().await?;
        common::with_entries(batch, outcomes, entries)
    }

    async fn chain_entries(&self, jtis: &[String]) -> Result<Vec<ChainEntry>, StoreError> {
        let jtis: Vec<&str> = jtis.iter().map(String::as_str).collect();
        let mut conn = self.reader.acquire().await?;
        Self::chain_entries_in(&mut conn, &jtis).await
    }

    async fn chain_range(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(ChainEntry, Option<String>)>, StoreError> {
        let rows: Vec<ChainRowWithToken> =
            sqlx::query_as(sqlx::AssertSqlSafe(common::chain_range_sql("?", "?")))
                .bind(after)
                .bind(common::page_size(limit))
                .fetch_all(&self.reader)
                .await?;
        rows.into_iter().map(ChainRowWithToken::into_pair).collect()
    }

    async fn chain_head(&self) -> Result<ChainHead, StoreError> {
        let mut conn = self.reader.acquire().await?;
        Ok(Self::head_in(&mut conn).await?.head())
    }

    async fn get_ect(&self, jti: &str) -> Result<Option<EctRecord>, StoreError> {
        let row: Option<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ECT_COLUMNS} FROM ects WHERE jti = ?"
        )))
        .bind(jti)
        .fetch_optional(&self.reader)
        .await?;
        row.map(EctRow::into_record).transpose()
    }

    async fn list_ects(
        &self,
        filter: &EctFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<EctRecord>, StoreError> {
        let after = cursor.map(common::decode_cursor).transpose()?;
        let limit = common::page_size(limit);
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("SELECT {ECT_COLUMNS} FROM ects WHERE 1 = 1"));
        if let Some(wid) = &filter.wid {
            qb.push(" AND wid = ").push_bind(wid);
        }
        if let Some(exec_act) = &filter.exec_act {
            qb.push(" AND exec_act = ").push_bind(exec_act);
        }
        if let Some(iss) = &filter.iss {
            qb.push(" AND iss = ").push_bind(iss);
        }
        if let Some(after) = after {
            qb.push(" AND seq > ").push_bind(after);
        }
        qb.push(" ORDER BY seq LIMIT ").push_bind(limit + 1);
        let rows: Vec<EctRow> = qb.build_query_as().fetch_all(&self.reader).await?;
        common::into_page(rows, limit, |r| r.seq, EctRow::into_record)
    }

    async fn list_workflows(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<WorkflowSummary>, StoreError> {
        let after = cursor.map(common::decode_cursor).transpose()?.unwrap_or(0);
        let limit = common::page_size(limit);
        let rows: Vec<WorkflowRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.seq > ? ORDER BY w.seq LIMIT ?"
        )))
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.reader)
        .await?;
        common::into_page(rows, limit, |r| r.seq, |r| Ok(r.into()))
    }

    async fn get_workflow(&self, wid: &str) -> Result<Option<WorkflowSummary>, StoreError> {
        let row: Option<WorkflowRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.wid = ?"
        )))
        .bind(wid)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(Into::into))
    }

    /// Streams the rows (a workflow may have a million nodes): one query, no per-node lookups,
    /// and `ext` (the large column) only where the graph needs it. 'checkpoint' is
    /// `common::CHECKPOINT`.
    async fn workflow_nodes(&self, wid: &str) -> Result<Vec<DagNode>, StoreError> {
        self.nodes_of(Some(wid)).await
    }

    async fn unscoped_nodes(&self) -> Result<Vec<DagNode>, StoreError> {
        self.nodes_of(None).await
    }

    async fn ledger_tables(&self) -> Result<LedgerTables, StoreError> {
        let mut conn = self.reader.acquire().await?;
        common::ledger_tables_on!(conn)
    }

    async fn count_ects(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM ects")
            .fetch_one(&self.reader)
            .await?)
    }

    async fn create_rollback(
        &self,
        new: &NewRollback,
        decide: &(dyn for<'c> Fn(&'c CreateContext) -> CreateDecision + Send + Sync),
    ) -> Result<CreateOutcome, StoreError> {
        let encoded = common::encode_new(new)?;
        let mut tx = self.begin_write().await?;
        let result = Self::create_in(&mut tx, new, &encoded, decide).await;
        finish(tx, result).await
    }

    async fn get_rollback(
        &self,
        rollback_id: &str,
    ) -> Result<Option<(RollbackRecord, Vec<StepRecord>)>, StoreError> {
        // One read transaction: one WAL snapshot, so the record's version and its steps agree.
        let mut tx = self.reader.begin().await?;
        let row: Option<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE rollback_id = ?"
        )))
        .bind(rollback_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let steps: Vec<StepRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLUMNS} FROM rollback_steps WHERE rollback_id = ?"
        )))
        .bind(rollback_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(Some((row.into_record()?, common::into_steps(steps)?)))
    }

    async fn terminated_workflows(&self, wids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        for chunk in wids.chunks(CHUNK) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("SELECT DISTINCT wid FROM rollbacks WHERE wid IN (");
            let mut list = qb.separated(", ");
            for wid in chunk {
                list.push_bind(wid);
            }
            qb.push(") AND status = 'completed' AND scope = 'full_workflow'");
            found.extend(
                qb.build_query_scalar::<String>()
                    .fetch_all(&self.reader)
                    .await?,
            );
        }
        Ok(found)
    }

    async fn list_rollbacks(
        &self,
        filter: &RollbackFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<RollbackRecord>, StoreError> {
        let after = cursor.map(common::decode_cursor).transpose()?;
        let limit = common::page_size(limit);
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE 1 = 1"
        ));
        if let Some(wid) = &filter.wid {
            qb.push(" AND wid = ").push_bind(wid);
        }
        if let Some(status) = filter.status {
            qb.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(after) = after {
            qb.push(" AND seq > ").push_bind(after);
        }
        qb.push(" ORDER BY seq LIMIT ").push_bind(limit + 1);
        let rows: Vec<RollbackRow> = qb.build_query_as().fetch_all(&self.reader).await?;
        common::into_page(rows, limit, |r| r.seq, RollbackRow::into_record)
    }

    async fn claim_next_rollback(
        &self,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let now = common::now();
        let until = common::lease_end(now, lease_for)?;
        // One statement on the single writer: no other claim can interleave.
        let row: Option<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE rollbacks SET {CLAIM_SET} WHERE rollback_id = (\
             SELECT rollback_id FROM rollbacks WHERE status IN ({}) \
             AND (lease_until IS NULL OR lease_until <= ?) ORDER BY seq LIMIT 1) \
             RETURNING rollback_id, lease_owner, fence, lease_until",
            *common::WORKABLE_SQL
        )))
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(now)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(Lease::from))
    }

    async fn claim_rollback(
        &self,
        rollback_id: &str,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let now = common::now();
        let until = common::lease_end(now, lease_for)?;
        let row: Option<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE rollbacks SET {CLAIM_SET} WHERE rollback_id = ? AND status IN ({}) \
             AND (lease_until IS NULL OR lease_until <= ?) \
             RETURNING rollback_id, lease_owner, fence, lease_until",
            *common::WORKABLE_SQL
        )))
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(rollback_id)
        .bind(now)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(Lease::from))
    }

    async fn renew_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, StoreError> {
        let now = common::now();
        let row: Option<LeaseRow> = sqlx::query_as(
            "UPDATE rollbacks SET lease_until = ?, version = version + 1, updated_at = ? \
             WHERE rollback_id = ? AND lease_owner = ? AND fence = ? \
             RETURNING rollback_id, lease_owner, fence, lease_until",
        )
        .bind(common::lease_end(now, lease_for)?)
        .bind(now)
        .bind(&lease.rollback_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .fetch_optional(&self.writer)
        .await?;
        row.map(Lease::from)
            .ok_or_else(|| StoreError::LeaseLost(lease.rollback_id.clone()))
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rollbacks SET lease_owner = NULL, lease_until = NULL, \
             version = version + 1, updated_at = ? \
             WHERE rollback_id = ? AND lease_owner = ? AND fence = ?",
        )
        .bind(common::now())
        .bind(&lease.rollback_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn update_rollback(
        &self,
        lease: &Lease,
        record: &RollbackRecord,
    ) -> Result<RollbackRecord, StoreError> {
        common::check_lease_target(lease, &record.rollback_id)?;
        let e = common::encode_rollback(record)?;
        let row: Option<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE rollbacks SET status = ?, failed_agents = ?, \
             superseded_by = COALESCE(superseded_by, ?), evidence_start = ?, \
             evidence_complete = ?, result = ?, version = version + 1, updated_at = ? \
             WHERE rollback_id = ? AND lease_owner = ? AND fence = ? \
             RETURNING {ROLLBACK_COLUMNS}"
        )))
        .bind(record.status.as_str())
        .bind(&e.failed_agents)
        .bind(&record.superseded_by)
        .bind(&record.evidence_start)
        .bind(&record.evidence_complete)
        .bind(&e.result)
        .bind(common::now())
        .bind(&lease.rollback_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .fetch_optional(&self.writer)
        .await?;
        match row {
            Some(row) => row.into_record(),
            None => Err(StoreError::LeaseLost(lease.rollback_id.clone())),
        }
    }

    async fn update_steps(&self, lease: &Lease, steps: &[StepRecord]) -> Result<(), StoreError> {
        let Some(encoded) = common::encode_steps(lease, steps)? else {
            return Ok(());
        };
        let mut tx = self.begin_write().await?;
        let result = Self::update_steps_in(&mut tx, lease, &encoded).await;
        finish(tx, result).await
    }

    async fn transition_rollback(
        &self,
        rollback_id: &str,
        expected: RollbackStatus,
        to: RollbackStatus,
        result: Map<String, Value>,
    ) -> Result<Option<RollbackRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcome = Self::transition_in(&mut tx, rollback_id, expected, to, result).await;
        finish(tx, outcome).await
    }
}

impl SqliteStore {
    /// The DAG nodes of one workflow, or of the tokens without one (`wid` = `None`), streamed in
    /// ledger order: chained rows only, each node read from its token (`ext` only for
    /// checkpoints, the only nodes whose `ext` the graph reads).
    async fn nodes_of(&self, wid: Option<&str>) -> Result<Vec<DagNode>, StoreError> {
        let filter = if wid.is_some() {
            "e.wid = ?"
        } else {
            "e.wid IS NULL"
        };
        let sql = format!("{} WHERE {filter} ORDER BY e.seq", common::NODE_SOURCE);
        let mut query = sqlx::query_as::<_, DagNodeRow>(sqlx::AssertSqlSafe(sql));
        if let Some(wid) = wid {
            query = query.bind(wid.to_string());
        }
        let mut rows = query.fetch(&self.reader);
        let mut nodes = Vec::new();
        while let Some(row) = rows.try_next().await? {
            nodes.extend(row.into_node(wid));
        }
        Ok(nodes)
    }
}

// ---- Rollbacks ----
//
// Clock: the process clock (`common::now()`), bound into every statement. A SQLite file is
// shared only by processes of one machine, so this is the database's clock as well.
//
// Per-workflow lock: the write transaction itself (`BEGIN IMMEDIATE` on the single writer
// connection), which serialises every write to the file, not only one workflow's.
// Single-statement writes (claims, lease changes) run without an explicit transaction: one
// statement is atomic.

const ROLLBACK_COLUMNS: &str = "seq, rollback_id, wid, checkpoint_id, trigger_ect, scope, \
     status, requested_by, reason, on_cannot_prepare, request_hash, plan, failed_agents, \
     superseded_by, evidence_start, evidence_complete, result, created_at, updated_at, version";

const STEP_COLUMNS: &str = "rollback_id, checkpoint_id, agent, rollback_uri, rank, critical, \
     reversible, expired, waits_for, prepare_status, execute_status, attempts, next_attempt_at, \
     error_code, error_detail, response, reused_from, updated_at";

/// The claim's assignments; binds: owner, lease end, now.
const CLAIM_SET: &str = "lease_owner = ?, lease_until = ?, fence = fence + 1, \
     version = version + 1, updated_at = ?";

impl SqliteStore {
    async fn create_in(
        tx: &mut sqlx::SqliteConnection,
        new: &NewRollback,
        encoded: &common::EncodedNew<'_>,
        decide: &(dyn for<'c> Fn(&'c CreateContext) -> CreateDecision + Send + Sync),
    ) -> Result<CreateOutcome, StoreError> {
        let record = &new.record;
        let now = common::now();
        let existing: Option<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE rollback_id = ?"
        )))
        .bind(&record.rollback_id)
        .fetch_optional(&mut *tx)
        .await?;
        let active: Vec<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE wid = ? AND status IN ({}) \
             ORDER BY seq",
            *common::ACTIVE_SQL
        )))
        .bind(&record.wid)
        .fetch_all(&mut *tx)
        .await?;
        let steps: Vec<StepRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLUMNS} FROM rollback_steps WHERE rollback_id IN \
             (SELECT rollback_id FROM rollbacks WHERE wid = ? AND status IN ({}))",
            *common::ACTIVE_SQL
        )))
        .bind(&record.wid)
        .fetch_all(&mut *tx)
        .await?;
        let ctx = CreateContext {
            existing: existing.map(RollbackRow::into_record).transpose()?,
            active: common::active_rollbacks(
                active
                    .into_iter()
                    .map(RollbackRow::into_record)
                    .collect::<Result<_, _>>()?,
                steps,
            )?,
        };

        let supersede = match common::resolve(&ctx, &record.rollback_id, decide(&ctx))? {
            Resolution::Answer(outcome) => return Ok(*outcome),
            Resolution::Insert { supersede } => supersede,
        };

        let r = &encoded.rollback;
        let inserted: RollbackRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO rollbacks (rollback_id, wid, checkpoint_id, trigger_ect, scope, status, \
             requested_by, reason, on_cannot_prepare, request_hash, plan, failed_agents, \
             superseded_by, evidence_start, evidence_complete, result, created_at, updated_at, \
             version) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) \
             RETURNING {ROLLBACK_COLUMNS}"
        )))
        .bind(&record.rollback_id)
        .bind(&record.wid)
        .bind(&record.checkpoint_id)
        .bind(&record.trigger_ect)
        .bind(&r.scope)
        .bind(RollbackStatus::Accepted.as_str())
        .bind(&record.requested_by)
        .bind(&record.reason)
        .bind(&r.on_cannot_prepare)
        .bind(&record.request_hash)
        .bind(&r.plan)
        .bind(&r.failed_agents)
        .bind(&record.superseded_by)
        .bind(&record.evidence_start)
        .bind(&record.evidence_complete)
        .bind(&r.result)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;

        for chunk in encoded.steps.chunks(STEP_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO rollback_steps (rollback_id, checkpoint_id, agent, rollback_uri, \
                 rank, critical, reversible, expired, waits_for, prepare_status, \
                 execute_status, attempts, next_attempt_at, error_code, error_detail, response, \
                 reused_from, updated_at) ",
            );
            qb.push_values(chunk, |mut row, s| {
                row.push_bind(&record.rollback_id)
                    .push_bind(&s.step.checkpoint_id)
                    .push_bind(&s.step.agent)
                    .push_bind(&s.step.rollback_uri)
                    .push_bind(s.rank)
                    .push_bind(s.step.critical)
                    .push_bind(s.step.reversible)
                    .push_bind(s.step.expired)
                    .push_bind(&s.waits_for)
                    .push_bind(&s.prepare_status)
                    .push_bind(&s.execute_status)
                    .push_bind(s.attempts)
                    .push_bind(s.step.next_attempt_at)
                    .push_bind(s.error_code)
                    .push_bind(s.error_detail)
                    .push_bind(&s.response)
                    .push_bind(&s.step.reused_from)
                    .push_bind(now);
            });
            qb.build().execute(&mut *tx).await?;
        }

        for id in &supersede {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE rollbacks SET superseded_by = ?, version = version + 1, updated_at = ? \
                 WHERE rollback_id = ? AND status IN ({})",
                *common::ACTIVE_SQL
            )))
            .bind(&record.rollback_id)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        Ok(CreateOutcome::Created(inserted.into_record()?))
    }

    async fn update_steps_in(
        tx: &mut sqlx::SqliteConnection,
        lease: &Lease,
        steps: &[common::EncodedStep<'_>],
    ) -> Result<(), StoreError> {
        let now = common::now();
        let fenced = sqlx::query(
            "UPDATE rollbacks SET version = version + 1, updated_at = ? \
             WHERE rollback_id = ? AND lease_owner = ? AND fence = ?",
        )
        .bind(now)
        .bind(&lease.rollback_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .execute(&mut *tx)
        .await?;
        if fenced.rows_affected() == 0 {
            return Err(StoreError::LeaseLost(lease.rollback_id.clone()));
        }
        for step in steps {
            let updated = sqlx::query(
                "UPDATE rollback_steps SET prepare_status = ?, execute_status = ?, attempts = ?, \
                 next_attempt_at = ?, error_code = ?, error_detail = ?, response = ?, \
                 reused_from = ?, updated_at = ? \
                 WHERE rollback_id = ? AND checkpoint_id = ?",
            )
            .bind(&step.prepare_status)
            .bind(&step.execute_status)
            .bind(step.attempts)
            .bind(step.step.next_attempt_at)
            .bind(step.error_code)
            .bind(step.error_detail)
            .bind(&step.response)
            .bind(&step.step.reused_from)
            .bind(now)
            .bind(&lease.rollback_id)
            .bind(&step.step.checkpoint_id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                return Err(common::no_such_step(lease, step));
            }
        }
        Ok(())
    }

    async fn transition_in(
        tx: &mut sqlx::SqliteConnection,
        rollback_id: &str,
        expected: RollbackStatus,
        to: RollbackStatus,
        result: Map<String, Value>,
    ) -> Result<Option<RollbackRecord>, StoreError> {
        let row: Option<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE rollback_id = ?"
        )))
        .bind(rollback_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NoSuchRollback(rollback_id.to_string()));
        };
        let current = row.into_record()?;
        if current.status != expected {
            return Ok(None);
        }
        let merged = common::merge_result(rollback_id, current.result, result)?;
        let merged = common::result_column(&merged)?;
        let row: RollbackRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE rollbacks SET status = ?, result = ?, version = version + 1, \
             updated_at = ?, lease_owner = NULL, lease_until = NULL \
             WHERE rollback_id = ? RETURNING {ROLLBACK_COLUMNS}"
        )))
        .bind(to.as_str())
        .bind(merged)
        .bind(common::now())
        .bind(rollback_id)
        .fetch_one(&mut *tx)
        .await?;
        Ok(Some(row.into_record()?))
    }

    /// The write transaction of a multi-statement write. IMMEDIATE takes the write lock before
    /// the first read, so what is read is what the write applies to, even with another process
    /// on the same file.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Commits when the transaction's work succeeded, rolls back otherwise: a refused write
/// (stale lease, missing step, contradictory decision) leaves nothing behind.
async fn finish<T>(
    tx: sqlx::Transaction<'_, Sqlite>,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            tx.rollback().await?;
            Err(e)
        }
    }
}
