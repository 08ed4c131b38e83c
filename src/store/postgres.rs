//! PostgreSQL implementation of [`Store`]: the production back end, shared by several replicas.
//!
//! A batch is appended with a handful of array-bound statements (`UNNEST`), whatever its size.
//! Concurrent appends that share jtis or workflows take their row locks in one global order
//! (jtis sorted, then workflows sorted, then agents sorted), so they wait for each other but
//! never deadlock.
//!
//! Rollbacks: decisions on new requests are serialised per workflow by an advisory lock, leases
//! are claimed with `FOR UPDATE SKIP LOCKED`, and every time comes from the database clock (see
//! the rollback section below).

mod cascade;
mod circuits;
mod keys;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::TryStreamExt as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, QueryBuilder};

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

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

const MAX_CONNECTIONS: u32 = 16;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one transaction when PostgreSQL reports a deadlock or serialization failure.
const TX_ATTEMPTS: u32 = 3;

const ECT_COLUMNS: &str = "seq, jti, wid, iss, sub, exec_act, parents::text AS parents, iat, \
     exp, out_hash, ext::text AS ext, token, kid, content_hash, \
     received_at";

const WORKFLOW_COLUMNS: &str = "w.seq, w.wid, w.nodes, w.checkpoints, w.first_seen, \
     w.last_seen, (SELECT count(*) FROM workflow_agents a WHERE a.wid = w.wid) AS agents";

/// The ledger in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to a `postgres://` / `postgresql://` URL.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _meta| Box::pin(super::tcp_nodelay::apply(conn)))
            .connect(url)
            .await?;
        Ok(PgStore { pool })
    }

    /// The pool, for modules that keep their own tables in the same database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts the batch, returning the jtis actually written.
    ///
    /// Ledger order must follow the batch order (the caller puts parents first), while lock
    /// order must be the same in every transaction (sorted jtis). So sequence numbers are drawn
    /// first, in batch order, and the rows are then inserted sorted by jti with those numbers.
    async fn insert_ects(
        tx: &mut PgConnection,
        encoded: &[common::EncodedEct<'_>],
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<HashSet<String>, StoreError> {
        let n = i32::try_from(encoded.len())
            .map_err(|_| StoreError::Config("batch too large".into()))?;
        let mut seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('ects', 'seq')) FROM generate_series(1, $1)",
        )
        .bind(n)
        .fetch_all(&mut *tx)
        .await?;
        seqs.sort_unstable();

        let created: Vec<String> = sqlx::query_scalar(
            "INSERT INTO ects (seq, jti, wid, iss, sub, exec_act, parents, iat, exp, out_hash, \
             ext, token, kid, content_hash, received_at) OVERRIDING SYSTEM VALUE \
             SELECT seq, jti, wid, iss, sub, exec_act, parents::jsonb, iat, exp, out_hash, \
             ext::jsonb, token, kid, content_hash, $15 \
             FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::int8[], $9::int8[], $10::text[], $11::text[], \
             $12::text[], $13::text[], $14::text[]) \
             AS u(seq, jti, wid, iss, sub, exec_act, parents, iat, exp, out_hash, ext, token, \
             kid, content_hash) \
             ORDER BY jti \
             ON CONFLICT (jti) DO NOTHING RETURNING jti",
        )
        .bind(&seqs)
        .bind(column(encoded, |e| e.ect.jti.as_str()))
        .bind(column(encoded, |e| e.ect.wid.as_deref()))
        .bind(column(encoded, |e| e.ect.iss.as_str()))
        .bind(column(encoded, |e| e.ect.sub.as_deref()))
        .bind(column(encoded, |e| e.ect.exec_act.as_str()))
        .bind(column(encoded, |e| e.parents.as_str()))
        .bind(column(encoded, |e| e.ect.iat))
        .bind(column(encoded, |e| e.ect.exp))
        .bind(column(encoded, |e| e.ect.out_hash.as_deref()))
        .bind(column(encoded, |e| e.ext.as_str()))
        .bind(column(encoded, |e| e.ect.token.as_str()))
        .bind(column(encoded, |e| e.ect.kid.as_str()))
        .bind(column(encoded, |e| e.ect.content_hash.as_str()))
        .bind(received_at)
        .fetch_all(&mut *tx)
        .await?;
        Ok(created.into_iter().collect())
    }

    /// One attempt of [`Store::append`] in one transaction.
    async fn append_once(
        pool: &PgPool,
        batch: &[NewEct],
    ) -> Result<Vec<(InsertOutcome, ChainEntry)>, StoreError> {
        let encoded = common::encode_batch(batch)?;
        let now = common::now();
        // Explicit, whatever the server's default: the duplicate check below relies on each
        // statement seeing what concurrent appends committed.
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;

        let created = Self::insert_ects(&mut tx, &encoded, now).await?;
        let others: Vec<&str> = batch
            .iter()
            .map(|e| e.jti.as_str())
            .filter(|j| !created.contains(*j))
            .collect();
        // READ COMMITTED: the insert above waited for any concurrent writer of these jtis to
        // finish, and this statement's snapshot sees what it committed.
        let stored: HashMap<String, String> = if others.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (String, String)>(
                "SELECT jti, content_hash FROM ects WHERE jti = ANY($1)",
            )
            .persistent(false) // planned per call, see `find_meta`
            .bind(&others)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };
        let outcomes = match common::outcomes(batch, &created, &stored) {
            Ok(o) => o,
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        };
        let derived = common::derive(batch, &created);
        Self::record_derived(&mut tx, &derived, now).await?;
        // Last, so that the one lock every append shares is held only for the chain rows and
        // the commit (and is always taken after the row locks above: no deadlock).
        let mut entries =
            Self::chain_created(&mut tx, &common::chain_items(batch, &created)).await?;
        if !others.is_empty() {
            entries.extend(Self::chain_entries_in(&mut tx, &others).await?);
        }
        tx.commit().await?;
        common::with_entries(batch, outcomes, entries)
    }

    /// Locks the chain's head and appends `items` after it.
    async fn chain_created(
        tx: &mut PgConnection,
        items: &[(&str, &str)],
    ) -> Result<Vec<ChainEntry>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let head: HeadRow = sqlx::query_as(
            "SELECT seq, chain_hash, backfill FROM ledger_head WHERE id = 1 FOR UPDATE",
        )
        .fetch_one(&mut *tx)
        .await?;
        let mut head = head.head();
        let entries = common::extend_chain(&mut head, items)?;
        Self::write_chain(tx, &entries, &head, false).await?;
        Ok(entries)
    }

    /// Inserts chain entries and moves the head (whose row lock the caller holds).
    async fn write_chain(
        tx: &mut PgConnection,
        entries: &[ChainEntry],
        head: &ChainHead,
        backfill: bool,
    ) -> Result<(), StoreError> {
        let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
        let jtis: Vec<&str> = entries.iter().map(|e| e.jti.as_str()).collect();
        let hashes: Vec<&str> = entries.iter().map(|e| e.chain_hash.as_str()).collect();
        sqlx::query(
            "WITH entries AS (INSERT INTO ledger_chain (seq, jti, chain_hash) \
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[])) \
             UPDATE ledger_head SET seq = $4, chain_hash = $5, backfill = $6 WHERE id = 1",
        )
        .bind(seqs)
        .bind(jtis)
        .bind(hashes)
        .bind(head.seq)
        .bind(&head.chain_hash)
        .bind(backfill)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn chain_entries_in(
        conn: &mut PgConnection,
        jtis: &[&str],
    ) -> Result<Vec<ChainEntry>, StoreError> {
        let rows: Vec<ChainRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {} WHERE c.jti = ANY($1)",
            common::CHAIN_COLUMNS
        )))
        .persistent(false) // planned per call, see `find_meta`
        .bind(jtis)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter().map(ChainRow::into_entry).collect()
    }

    /// Chains the rows stored before the chain existed, in `ects.seq` order, once: the first
    /// replica to get the head's lock does it while the others (and every append) wait.
    async fn backfill_chain(pool: &PgPool) -> Result<(), StoreError> {
        let mut tx = pool.begin().await?;
        let row: HeadRow = sqlx::query_as(
            "SELECT seq, chain_hash, backfill FROM ledger_head WHERE id = 1 FOR UPDATE",
        )
        .fetch_one(&mut *tx)
        .await?;
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
                "SELECT e.seq, e.jti, e.content_hash FROM ects e WHERE e.seq > $1 \
                 AND NOT EXISTS (SELECT 1 FROM ledger_chain c WHERE c.jti = e.jti) \
                 ORDER BY e.seq LIMIT $2",
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
        sqlx::query("UPDATE ledger_head SET backfill = false WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_derived(
        tx: &mut PgConnection,
        derived: &common::Derived,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        if !derived.edges.is_empty() {
            let (parents, rest): (Vec<_>, Vec<_>) = derived
                .edges
                .iter()
                .map(|(p, c, w)| (p.as_str(), (c.as_str(), w.as_deref())))
                .unzip();
            let (children, wids): (Vec<_>, Vec<_>) = rest.into_iter().unzip();
            sqlx::query(
                "INSERT INTO ect_edges (parent, child, wid) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(parents)
            .bind(children)
            .bind(wids)
            .execute(&mut *tx)
            .await?;
        }
        if !derived.workflows.is_empty() {
            let wids: Vec<&str> = derived.workflows.keys().map(String::as_str).collect();
            let nodes: Vec<i64> = derived.workflows.values().map(|v| v.0).collect();
            let checkpoints: Vec<i64> = derived.workflows.values().map(|v| v.1).collect();
            // ORDER BY ord keeps the sorted order of the arrays: the lock order.
            sqlx::query(
                "INSERT INTO workflows (wid, first_seen, last_seen, nodes, checkpoints) \
                 SELECT wid, $4, $4, nodes, checkpoints \
                 FROM UNNEST($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY \
                 AS u(wid, nodes, checkpoints, ord) ORDER BY ord \
                 ON CONFLICT (wid) DO UPDATE SET \
                 last_seen = GREATEST(workflows.last_seen, EXCLUDED.last_seen), \
                 nodes = workflows.nodes + EXCLUDED.nodes, \
                 checkpoints = workflows.checkpoints + EXCLUDED.checkpoints",
            )
            .bind(wids)
            .bind(nodes)
            .bind(checkpoints)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if !derived.agents.is_empty() {
            let (wids, isss): (Vec<&str>, Vec<&str>) = derived
                .agents
                .iter()
                .map(|(w, i)| (w.as_str(), i.as_str()))
                .unzip();
            sqlx::query(
                "INSERT INTO workflow_agents (wid, iss) \
                 SELECT wid, iss FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY \
                 AS u(wid, iss, ord) ORDER BY ord \
                 ON CONFLICT DO NOTHING",
            )
            .bind(wids)
            .bind(isss)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

/// PostgreSQL errors after which the whole transaction may simply run again: the lock order
/// makes deadlocks between appends impossible, but a retry keeps any other writer's lock order
/// from surfacing as an ingest error.
fn is_transient(e: &sqlx::Error) -> bool {
    let code = e.as_database_error().and_then(|d| d.code());
    matches!(code.as_deref(), Some("40P01" | "40001"))
}

/// One column of the batch, as an array to bind.
fn column<'a, T>(
    encoded: &'a [common::EncodedEct<'a>],
    field: impl Fn(&'a common::EncodedEct<'a>) -> T,
) -> Vec<T> {
    encoded.iter().map(field).collect()
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx takes an advisory lock, so replicas starting together migrate once.
        MIGRATOR.run(&self.pool).await?;
        Self::backfill_chain(&self.pool).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        let has_table: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        if !has_table {
            return Err(StoreError::NotMigrated("no migration applied".into()));
        }
        let applied: Vec<AppliedRow> =
            sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
                .fetch_all(&self.pool)
                .await?;
        common::check_applied(&MIGRATOR, &applied)
    }

    async fn find_meta(&self, jtis: &[String]) -> Result<Vec<EctMeta>, StoreError> {
        if jtis.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<MetaRow> =
            sqlx::query_as("SELECT jti, wid, iss, iat, content_hash FROM ects WHERE jti = ANY($1)")
                // Planned for each call: a cached generic plan made while the table was small
                // keeps scanning it whole once it has grown (ingest slowed down tenfold).
                .persistent(false)
                .bind(jtis)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(EctMeta::from).collect())
    }

    async fn append_chained(
        &self,
        batch: &[NewEct],
    ) -> Result<Vec<(InsertOutcome, ChainEntry)>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 1;
        loop {
            match Self::append_once(&self.pool, batch).await {
                Err(StoreError::Database(e)) if attempt < TX_ATTEMPTS && is_transient(&e) => {
                    tracing::debug!(error = %e, attempt, "append retried");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
    async fn chain_entries(&self, jtis: &[String]) -> Result<Vec<ChainEntry>, StoreError> {
        if jtis.is_empty() {
            return Ok(Vec::new());
        }
        let jtis: Vec<&str> = jtis.iter().map(String::as_str).collect();
        let mut conn = self.pool.acquire().await?;
        Self::chain_entries_in(&mut conn, &jtis).await
    }

    async fn chain_range(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(ChainEntry, Option<String>)>, StoreError> {
        let rows: Vec<ChainRowWithToken> =
            sqlx::query_as(sqlx::AssertSqlSafe(common::chain_range_sql("$1", "$2")))
                .bind(after)
                .bind(common::page_size(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(ChainRowWithToken::into_pair).collect()
    }

    async fn chain_head(&self) -> Result<ChainHead, StoreError> {
        let row: HeadRow =
            sqlx::query_as("SELECT seq, chain_hash, backfill FROM ledger_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(row.head())
    }

    async fn get_ect(&self, jti: &str) -> Result<Option<EctRecord>, StoreError> {
        let row: Option<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ECT_COLUMNS} FROM ects WHERE jti = $1"
        )))
        .bind(jti)
        .fetch_optional(&self.pool)
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
            QueryBuilder::<Postgres>::new(format!("SELECT {ECT_COLUMNS} FROM ects WHERE TRUE"));
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
        let rows: Vec<EctRow> = qb.build_query_as().fetch_all(&self.pool).await?;
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
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.seq > $1 ORDER BY w.seq LIMIT $2"
        )))
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        common::into_page(rows, limit, |r| r.seq, |r| Ok(r.into()))
    }

    async fn get_workflow(&self, wid: &str) -> Result<Option<WorkflowSummary>, StoreError> {
        let row: Option<WorkflowRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.wid = $1"
        )))
        .bind(wid)
        .fetch_optional(&self.pool)
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
        let mut conn = self.pool.acquire().await?;
        common::ledger_tables_on!(conn)
    }

    async fn count_ects(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM ects")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn create_rollback(
        &self,
        new: &NewRollback,
        decide: &(dyn for<'c> Fn(&'c CreateContext) -> CreateDecision + Send + Sync),
    ) -> Result<CreateOutcome, StoreError> {
        let encoded = common::encode_new(new)?;
        let mut attempt = 1;
        loop {
            match Self::create_once(&self.pool, new, &encoded, decide).await {
                Ok(Some(outcome)) => return Ok(outcome),
                // The concurrent insert of the same id committed before ours gave up, so the
                // next attempt reads it as `existing`.
                Ok(None) if attempt < TX_ATTEMPTS => {}
                Ok(None) => {
                    return Err(StoreError::Invalid(format!(
                        "rollback {} keeps being inserted concurrently",
                        new.record.rollback_id
                    )));
                }
                Err(StoreError::Database(e)) if attempt < TX_ATTEMPTS && is_transient(&e) => {
                    tracing::debug!(error = %e, attempt, "create_rollback retried");
                }
                Err(e) => return Err(e),
            }
            attempt += 1;
        }
    }

    async fn get_rollback(
        &self,
        rollback_id: &str,
    ) -> Result<Option<(RollbackRecord, Vec<StepRecord>)>, StoreError> {
        // One snapshot: the record's version and its steps agree.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let row: Option<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE rollback_id = $1"
        )))
        .bind(rollback_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let steps: Vec<StepRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLUMNS} FROM rollback_steps WHERE rollback_id = $1"
        )))
        .bind(rollback_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((row.into_record()?, common::into_steps(steps)?)))
    }

    async fn terminated_workflows(&self, wids: &[String]) -> Result<Vec<String>, StoreError> {
        if wids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT wid FROM rollbacks WHERE wid = ANY($1) \
             AND status = 'completed' AND scope = 'full_workflow'",
        )
        .bind(wids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn list_rollbacks(
        &self,
        filter: &RollbackFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<RollbackRecord>, StoreError> {
        let after = cursor.map(common::decode_cursor).transpose()?;
        let limit = common::page_size(limit);
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE TRUE"
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
        let rows: Vec<RollbackRow> = qb.build_query_as().fetch_all(&self.pool).await?;
        common::into_page(rows, limit, |r| r.seq, RollbackRow::into_record)
    }

    async fn claim_next_rollback(
        &self,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        // SKIP LOCKED: concurrent claimers each take another row instead of queueing on one.
        // Locking re-checks the conditions on the newest row version, so a row claimed and
        // committed meanwhile is passed over.
        let row: Option<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE rollbacks SET {CLAIM_SET} WHERE rollback_id = (\
             SELECT rollback_id FROM rollbacks WHERE status IN ({}) \
             AND (lease_until IS NULL OR lease_until <= now()) \
             ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING rollback_id, lease_owner, fence, lease_until",
            *common::WORKABLE_SQL
        )))
        .bind(owner)
        .bind(common::lease_micros(lease_for)?)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Lease::from))
    }

    async fn claim_rollback(
        &self,
        rollback_id: &str,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        // A concurrent claim of the same row makes this one wait, then re-check the WHERE
        // clause on the row it committed (READ COMMITTED): at most one claim wins.
        let row: Option<LeaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE rollbacks SET {CLAIM_SET} WHERE rollback_id = $3 AND status IN ({}) \
             AND (lease_until IS NULL OR lease_until <= now()) \
             RETURNING rollback_id, lease_owner, fence, lease_until",
            *common::WORKABLE_SQL
        )))
        .bind(owner)
        .bind(common::lease_micros(lease_for)?)
        .bind(rollback_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Lease::from))
    }

    async fn renew_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, StoreError> {
        let row: Option<LeaseRow> = sqlx::query_as(
            "UPDATE rollbacks SET lease_until = now() + $4::int8 * interval '1 microsecond', \
             version = version + 1, updated_at = now() \
             WHERE rollback_id = $1 AND lease_owner = $2 AND fence = $3 \
             RETURNING rollback_id, lease_owner, fence, lease_until",
        )
        .bind(&lease.rollback_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .bind(common::lease_micros(lease_for)?)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Lease::from)
            .ok_or_else(|| StoreError::LeaseLost(lease.rollback_id.clone()))
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rollbacks SET lease_owner = NULL, lease_until = NULL, \
             version = version + 1, updated_at = now() \
             WHERE rollback_id = $1 AND lease_owner = $2 AND fence = $3",
        )
        .bind(&lease.rollback_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .execute(&self.pool)
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
            "UPDATE rollbacks SET status = $4, failed_agents = $5::jsonb, \
             superseded_by = COALESCE(superseded_by, $6), evidence_start = $7, \
             evidence_complete = $8, result = $9::jsonb, version = version + 1, \
             updated_at = now() \
             WHERE rollback_id = $1 AND lease_owner = $2 AND fence = $3 \
             RETURNING {ROLLBACK_COLUMNS}"
        )))
        .bind(&lease.rollback_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .bind(record.status.as_str())
        .bind(&e.failed_agents)
        .bind(&record.superseded_by)
        .bind(&record.evidence_start)
        .bind(&record.evidence_complete)
        .bind(&e.result)
        .fetch_optional(&self.pool)
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
        retrying("update_steps", || {
            Self::update_steps_once(&self.pool, lease, &encoded)
        })
        .await
    }

    async fn transition_rollback(
        &self,
        rollback_id: &str,
        expected: RollbackStatus,
        to: RollbackStatus,
        result: Map<String, Value>,
    ) -> Result<Option<RollbackRecord>, StoreError> {
        retrying("transition_rollback", || {
            Self::transition_once(&self.pool, rollback_id, expected, to, &result)
        })
        .await
    }
}

impl PgStore {
    /// The DAG nodes of one workflow, or of the tokens without one (`wid` = `None`), streamed in
    /// ledger order: chained rows only, each node read from its token (`ext` only for
    /// checkpoints, the only nodes whose `ext` the graph reads).
    async fn nodes_of(&self, wid: Option<&str>) -> Result<Vec<DagNode>, StoreError> {
        let filter = if wid.is_some() {
            "e.wid = $1"
        } else {
            "e.wid IS NULL"
        };
        let sql = format!("{} WHERE {filter} ORDER BY e.seq", common::NODE_SOURCE);
        let mut query = sqlx::query_as::<_, DagNodeRow>(sqlx::AssertSqlSafe(sql));
        if let Some(wid) = wid {
            query = query.bind(wid.to_string());
        }
        let mut rows = query.fetch(&self.pool);
        let mut nodes = Vec::new();
        while let Some(row) = rows.try_next().await? {
            nodes.extend(row.into_node(wid));
        }
        Ok(nodes)
    }
}

// ---- Rollbacks ----
//
// Clock: every rollback time (created_at, updated_at, lease expiry) is the database's `now()`,
// so that replicas with skewed clocks agree on when a lease ends.
//
// Per-workflow lock: `pg_advisory_xact_lock(WORKFLOW_LOCK_CLASS, hashtext(wid))`, held until the
// transaction ends. Unlike `SELECT ... FROM workflows FOR UPDATE` it needs no row (nothing to
// insert first, no placeholder workflow in listings) and it does not conflict with ingest, which
// updates the `workflows` row of the same workflow. A hash collision between two workflows only
// makes their decisions wait for each other. The two-key form keeps these locks apart from
// single-key advisory locks (sqlx's migration lock).
//
// Lock order, so that the transactions below cannot deadlock each other: workflow lock, then
// `rollbacks` rows (sorted by id when several), then `rollback_steps` rows.

/// First key of the per-workflow advisory lock ("unwd").
const WORKFLOW_LOCK_CLASS: i32 = 0x756e_7764;

const ROLLBACK_COLUMNS: &str = "seq, rollback_id, wid, checkpoint_id, trigger_ect, scope, \
     status, requested_by, reason, on_cannot_prepare, request_hash, plan::text AS plan, \
     failed_agents::text AS failed_agents, superseded_by, evidence_start, evidence_complete, \
     result::text AS result, created_at, updated_at, version";

const STEP_COLUMNS: &str = "rollback_id, checkpoint_id, agent, rollback_uri, rank, critical, \
     reversible, expired, waits_for::text AS waits_for, prepare_status, execute_status, \
     attempts, next_attempt_at, error_code, error_detail, response::text AS response, \
     reused_from, updated_at";

/// The claim's assignments; `$1` is the owner, `$2` the lease in microseconds.
const CLAIM_SET: &str = "lease_owner = $1, \
     lease_until = now() + $2::int8 * interval '1 microsecond', fence = fence + 1, \
     version = version + 1, updated_at = now()";

/// Runs one transaction attempt, again after a deadlock or serialization failure.
async fn retrying<T, F, Fut>(what: &str, mut attempt_once: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match attempt_once().await {
            Err(StoreError::Database(e)) if attempt < TX_ATTEMPTS && is_transient(&e) => {
                tracing::debug!(error = %e, attempt, what, "transaction retried");
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl PgStore {
    /// One attempt of [`Store::create_rollback`]; `None` when another transaction inserted the
    /// same `rollback_id` (under another workflow's lock) after we read: run again, the next
    /// attempt reads it as `existing`.
    async fn create_once(
        pool: &PgPool,
        new: &NewRollback,
        encoded: &common::EncodedNew<'_>,
        decide: &(dyn for<'c> Fn(&'c CreateContext) -> CreateDecision + Send + Sync),
    ) -> Result<Option<CreateOutcome>, StoreError> {
        let record = &new.record;
        // READ COMMITTED: each statement after the lock sees what the previous holder committed.
        // (REPEATABLE READ would take its snapshot before the lock is granted.)
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(WORKFLOW_LOCK_CLASS)
            .bind(&record.wid)
            .execute(&mut *tx)
            .await?;

        let existing: Option<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE rollback_id = $1"
        )))
        .bind(&record.rollback_id)
        .fetch_optional(&mut *tx)
        .await?;
        let active: Vec<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE wid = $1 AND status IN ({}) \
             ORDER BY seq",
            *common::ACTIVE_SQL
        )))
        .bind(&record.wid)
        .fetch_all(&mut *tx)
        .await?;
        // Steps by the ids just read, not by status again: a worker may finish a rollback
        // between the two statements, and its steps must still come with it.
        let ids: Vec<&str> = active.iter().map(|r| r.rollback_id.as_str()).collect();
        let steps: Vec<StepRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STEP_COLUMNS} FROM rollback_steps WHERE rollback_id = ANY($1)"
        )))
        .bind(&ids)
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
            Resolution::Answer(outcome) => {
                tx.rollback().await?;
                return Ok(Some(*outcome));
            }
            Resolution::Insert { supersede } => supersede,
        };

        let r = &encoded.rollback;
        let inserted: Option<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO rollbacks (rollback_id, wid, checkpoint_id, trigger_ect, scope, status, \
             requested_by, reason, on_cannot_prepare, request_hash, plan, failed_agents, \
             superseded_by, evidence_start, evidence_complete, result, created_at, updated_at, \
             version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb, $13, $14, \
             $15, $16::jsonb, now(), now(), 1) \
             ON CONFLICT (rollback_id) DO NOTHING RETURNING {ROLLBACK_COLUMNS}"
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
        .fetch_optional(&mut *tx)
        .await?;
        let Some(inserted) = inserted else {
            tx.rollback().await?;
            return Ok(None);
        };

        if !encoded.steps.is_empty() {
            let steps = &encoded.steps;
            sqlx::query(
                "INSERT INTO rollback_steps (rollback_id, checkpoint_id, agent, rollback_uri, \
                 rank, critical, reversible, expired, waits_for, prepare_status, \
                 execute_status, attempts, next_attempt_at, error_code, error_detail, response, \
                 reused_from, updated_at) \
                 SELECT $1, checkpoint_id, agent, rollback_uri, rank, critical, reversible, \
                 expired, waits_for::jsonb, prepare_status, execute_status, attempts, \
                 next_attempt_at, error_code, error_detail, response::jsonb, reused_from, $18 \
                 FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int8[], $6::bool[], \
                 $7::bool[], $8::bool[], $9::text[], $10::text[], $11::text[], $12::int8[], \
                 $13::timestamptz[], $14::text[], $15::text[], $16::text[], $17::text[]) \
                 AS u(checkpoint_id, agent, rollback_uri, rank, critical, reversible, expired, \
                 waits_for, prepare_status, execute_status, attempts, next_attempt_at, \
                 error_code, error_detail, response, reused_from)",
            )
            .bind(&record.rollback_id)
            .bind(steps_column(steps, |s| s.step.checkpoint_id.as_str()))
            .bind(steps_column(steps, |s| s.step.agent.as_str()))
            .bind(steps_column(steps, |s| s.step.rollback_uri.as_deref()))
            .bind(steps_column(steps, |s| s.rank))
            .bind(steps_column(steps, |s| s.step.critical))
            .bind(steps_column(steps, |s| s.step.reversible))
            .bind(steps_column(steps, |s| s.step.expired))
            .bind(steps_column(steps, |s| s.waits_for.as_str()))
            .bind(steps_column(steps, |s| s.prepare_status.as_str()))
            .bind(steps_column(steps, |s| s.execute_status.as_str()))
            .bind(steps_column(steps, |s| s.attempts))
            .bind(steps_column(steps, |s| s.step.next_attempt_at))
            .bind(steps_column(steps, |s| s.error_code))
            .bind(steps_column(steps, |s| s.error_detail))
            .bind(steps_column(steps, |s| s.response.as_deref()))
            .bind(steps_column(steps, |s| s.step.reused_from.as_deref()))
            .bind(inserted.created_at)
            .execute(&mut *tx)
            .await?;
        }

        // One statement per row, in sorted order: the lock order.
        for id in &supersede {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE rollbacks SET superseded_by = $1, version = version + 1, \
                 updated_at = now() WHERE rollback_id = $2 AND status IN ({})",
                *common::ACTIVE_SQL
            )))
            .bind(&record.rollback_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(CreateOutcome::Created(inserted.into_record()?)))
    }

    async fn update_steps_once(
        pool: &PgPool,
        lease: &Lease,
        steps: &[common::EncodedStep<'_>],
    ) -> Result<(), StoreError> {
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        // The rollback row first (the lock order), and it carries the fence.
        let fenced = sqlx::query(
            "UPDATE rollbacks SET version = version + 1, updated_at = now() \
             WHERE rollback_id = $1 AND lease_owner = $2 AND fence = $3",
        )
        .bind(&lease.rollback_id)
        .bind(&lease.owner)
        .bind(lease.fence)
        .execute(&mut *tx)
        .await?;
        if fenced.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(StoreError::LeaseLost(lease.rollback_id.clone()));
        }
        for step in steps {
            let updated = sqlx::query(
                "UPDATE rollback_steps SET prepare_status = $3, execute_status = $4, \
                 attempts = $5, next_attempt_at = $6, error_code = $7, error_detail = $8, \
                 response = $9::jsonb, reused_from = $10, updated_at = now() \
                 WHERE rollback_id = $1 AND checkpoint_id = $2",
            )
            .bind(&lease.rollback_id)
            .bind(&step.step.checkpoint_id)
            .bind(&step.prepare_status)
            .bind(&step.execute_status)
            .bind(step.attempts)
            .bind(step.step.next_attempt_at)
            .bind(step.error_code)
            .bind(step.error_detail)
            .bind(&step.response)
            .bind(&step.step.reused_from)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                tx.rollback().await?;
                return Err(common::no_such_step(lease, step));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn transition_once(
        pool: &PgPool,
        rollback_id: &str,
        expected: RollbackStatus,
        to: RollbackStatus,
        result: &Map<String, Value>,
    ) -> Result<Option<RollbackRecord>, StoreError> {
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        // FOR UPDATE waits for a concurrent decision and then reads what it committed: the
        // status check below is a compare-and-set.
        let row: Option<RollbackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLBACK_COLUMNS} FROM rollbacks WHERE rollback_id = $1 FOR UPDATE"
        )))
        .bind(rollback_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(StoreError::NoSuchRollback(rollback_id.to_string()));
        };
        let current = row.into_record()?;
        if current.status != expected {
            tx.rollback().await?;
            return Ok(None);
        }
        let merged = common::merge_result(rollback_id, current.result, result.clone())?;
        let merged = common::result_column(&merged)?;
        let row: RollbackRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE rollbacks SET status = $2, result = $3::jsonb, version = version + 1, \
             updated_at = now(), lease_owner = NULL, lease_until = NULL \
             WHERE rollback_id = $1 RETURNING {ROLLBACK_COLUMNS}"
        )))
        .bind(rollback_id)
        .bind(to.as_str())
        .bind(merged)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(row.into_record()?))
    }
}

/// One column of the steps, as an array to bind.
fn steps_column<'a, T>(
    steps: &'a [common::EncodedStep<'a>],
    field: impl Fn(&'a common::EncodedStep<'a>) -> T,
) -> Vec<T> {
    steps.iter().map(field).collect()
}
