//! PostgreSQL implementation of [`RetentionStore`]: one statement per batch, ages from the
//! database clock, rows chosen with `FOR UPDATE SKIP LOCKED` so that replicas pruning at the
//! same time take different rows instead of waiting on each other.

use std::time::Duration;

use super::PgStore;
use crate::store::StoreError;
use crate::store::common;
use crate::store::retention::{FINISHED, PrunedDeliveries, RetentionStore};

#[async_trait::async_trait]
impl RetentionStore for PgStore {
    async fn prune_rollback_steps(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<u64, StoreError> {
        // Driven by the steps' `updated_at` index: steps already pruned are not visited again.
        // The chosen rows are deleted by their (locked, so unchanging) `ctid`: a TID scan,
        // whatever the planner estimates for the batch.
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM rollback_steps WHERE ctid = ANY(ARRAY( \
             SELECT s.ctid FROM rollback_steps s \
             JOIN rollbacks r ON r.rollback_id = s.rollback_id \
             WHERE s.updated_at < now() - $1::int8 * interval '1 microsecond' \
             AND r.updated_at < now() - $1::int8 * interval '1 microsecond' \
             AND r.status IN ({FINISHED}) \
             AND NOT EXISTS (SELECT 1 FROM rollbacks n WHERE n.rollback_id = r.superseded_by \
             AND n.status NOT IN ({FINISHED})) \
             ORDER BY s.updated_at LIMIT $2 FOR UPDATE OF s SKIP LOCKED))"
        )))
        .bind(common::lease_micros(older_than)?)
        .bind(i64::from(limit.max(1)))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_webhook_deliveries(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<PrunedDeliveries, StoreError> {
        // Delivered rows never change again (an attempt is recorded only on a pending row), so
        // the attempts deleted here are all the event has. `= ANY(ARRAY(..))` makes both
        // deletes index lookups by key rather than a hash join over the whole table.
        let (events, attempts): (i64, i64) = sqlx::query_as(
            "WITH doomed AS (SELECT seq FROM webhook_outbox WHERE state = 'delivered' \
             AND delivered_at < now() - $1::int8 * interval '1 microsecond' \
             ORDER BY delivered_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             gone_attempts AS (DELETE FROM webhook_attempts \
             WHERE delivery = ANY(ARRAY(SELECT seq FROM doomed)) RETURNING 1), \
             gone_events AS (DELETE FROM webhook_outbox \
             WHERE seq = ANY(ARRAY(SELECT seq FROM doomed)) RETURNING 1) \
             SELECT (SELECT count(*) FROM gone_events), (SELECT count(*) FROM gone_attempts)",
        )
        .bind(common::lease_micros(older_than)?)
        .bind(i64::from(limit.max(1)))
        .fetch_one(self.pool())
        .await?;
        Ok(PrunedDeliveries {
            events: u64::try_from(events).unwrap_or(0),
            attempts: u64::try_from(attempts).unwrap_or(0),
        })
    }
}
