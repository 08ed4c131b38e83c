//! PostgreSQL implementation of [`Store`]: the production back end, shared by several replicas.
//!
//! A batch is appended with a handful of array-bound statements (`UNNEST`), whatever its size.
//! Concurrent appends that share jtis or workflows take their row locks in one global order
//! (jtis sorted, then workflows sorted, then agents sorted), so they wait for each other but
//! never deadlock.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::TryStreamExt as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::common::{self, AppliedRow, DagNodeRow, EctRow, MetaRow, WorkflowRow};
use super::{
    Backend, EctFilter, EctMeta, EctRecord, InsertOutcome, NewEct, Page, Store, StoreError,
    WorkflowSummary,
};
use crate::dag::DagNode;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

const MAX_CONNECTIONS: u32 = 16;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one append when PostgreSQL reports a deadlock or serialization failure.
const APPEND_ATTEMPTS: u32 = 3;

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
    ) -> Result<Vec<InsertOutcome>, StoreError> {
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
        tx.commit().await?;
        Ok(outcomes)
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
        Ok(())
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
            sqlx::query_as("SELECT jti, wid, iat, content_hash FROM ects WHERE jti = ANY($1)")
                // Planned for each call: a cached generic plan made while the table was small
                // keeps scanning it whole once it has grown (ingest slowed down tenfold).
                .persistent(false)
                .bind(jtis)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(EctMeta::from).collect())
    }

    async fn append(&self, batch: &[NewEct]) -> Result<Vec<InsertOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 1;
        loop {
            match Self::append_once(&self.pool, batch).await {
                Err(StoreError::Database(e)) if attempt < APPEND_ATTEMPTS && is_transient(&e) => {
                    tracing::debug!(error = %e, attempt, "append retried");
                    attempt += 1;
                }
                other => return other,
            }
        }
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

    async fn count_ects(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM ects")
            .fetch_one(&self.pool)
            .await?)
    }
}

impl PgStore {
    /// The DAG nodes of one workflow, or of the tokens without one (`wid` = `None`), streamed in
    /// ledger order; `ext` only for checkpoints, the only nodes whose `ext` the graph reads.
    async fn nodes_of(&self, wid: Option<&str>) -> Result<Vec<DagNode>, StoreError> {
        let filter = if wid.is_some() {
            "wid = $1"
        } else {
            "wid IS NULL"
        };
        let sql = format!(
            "SELECT jti, iss, exec_act, iat, parents::text AS parents, \
             CASE WHEN exec_act = 'checkpoint' THEN ext::text END AS ext \
             FROM ects WHERE {filter} ORDER BY seq"
        );
        let mut query = sqlx::query_as::<_, DagNodeRow>(sqlx::AssertSqlSafe(sql));
        if let Some(wid) = wid {
            query = query.bind(wid.to_string());
        }
        let mut rows = query.fetch(&self.pool);
        let mut nodes = Vec::new();
        while let Some(row) = rows.try_next().await? {
            nodes.push(row.into_node()?);
        }
        Ok(nodes)
    }
}
