//! SQLite implementation of [`RetentionStore`]: the same selections as PostgreSQL's, on the
//! single writer (so two pruners run one after the other), with the process clock, which is
//! the database machine's clock.

use std::time::Duration;

use super::SqliteStore;
use crate::store::StoreError;
use crate::store::common;
use crate::store::retention::{FINISHED, PrunedDeliveries, RetentionStore};

/// `now - older_than` on the store's clock.
fn cutoff(older_than: Duration) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    common::now()
        .checked_sub_signed(chrono::Duration::microseconds(common::lease_micros(
            older_than,
        )?))
        .ok_or_else(|| StoreError::Invalid(format!("retention {older_than:?} is too long")))
}

/// The outbox rows one batch deletes; binds: cutoff, limit.
const DOOMED_EVENTS: &str = "SELECT seq FROM webhook_outbox WHERE state = 'delivered' \
     AND delivered_at < ?1 ORDER BY delivered_at, seq LIMIT ?2";

#[async_trait::async_trait]
impl RetentionStore for SqliteStore {
    async fn prune_rollback_steps(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM rollback_steps WHERE (rollback_id, checkpoint_id) IN ( \
             SELECT s.rollback_id, s.checkpoint_id FROM rollback_steps s \
             JOIN rollbacks r ON r.rollback_id = s.rollback_id \
             WHERE s.updated_at < ?1 AND r.updated_at < ?1 AND r.status IN ({FINISHED}) \
             AND NOT EXISTS (SELECT 1 FROM rollbacks n WHERE n.rollback_id = r.superseded_by \
             AND n.status NOT IN ({FINISHED})) \
             ORDER BY s.updated_at LIMIT ?2)"
        )))
        .bind(cutoff(older_than)?)
        .bind(i64::from(limit.max(1)))
        .execute(self.writer())
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_webhook_deliveries(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<PrunedDeliveries, StoreError> {
        let cutoff = cutoff(older_than)?;
        let limit = i64::from(limit.max(1));
        // One write transaction: both statements see the same rows.
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let attempts = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM webhook_attempts WHERE delivery IN ({DOOMED_EVENTS})"
        )))
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let events = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM webhook_outbox WHERE seq IN ({DOOMED_EVENTS})"
        )))
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(PrunedDeliveries { events, attempts })
    }
}
