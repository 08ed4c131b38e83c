//! SQLite implementation of [`HitlStore`]. Every write runs on the store's single writer
//! connection, so a claim (one `UPDATE ... RETURNING`) cannot interleave with another; leases
//! and retry times come from the process clock, as for rollbacks.

use std::time::Duration;

use sqlx::SqliteConnection;

use super::SqliteStore;
use crate::store::common;
use crate::store::hitl::{
    ATTEMPT_COLUMNS, Attempt, AttemptOutcome, AttemptRecord, AttemptRow, Delivery, Escalation,
    EscalationRow, EscalationStatus, HitlStore, OutboxEvent, Resolution, ResolveOutcome,
    detail_text,
};
use crate::store::{Page, StoreError};

const COLUMNS: &str = "seq, id, kind, status, wid, rollback_id, cascade_id, \
     detail, created_at, resolved_at, decision, decided_by, comment";

/// The assignments of a resolution; `?1` decision, `?2` decided_by, `?3` comment, `?5` now.
const RESOLVE_SET: &str = "status = 'resolved', resolved_at = ?5, decision = ?1, \
     decided_by = ?2, comment = ?3";

async fn insert_events(
    tx: &mut SqliteConnection,
    events: &[OutboxEvent],
) -> Result<(), StoreError> {
    let now = common::now();
    for e in events {
        sqlx::query(
            "INSERT INTO webhook_outbox (event_id, event_key, event_type, url, body, created_at, \
             state, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?6) \
             ON CONFLICT (event_key, url) DO NOTHING",
        )
        .bind(&e.event_id)
        .bind(&e.event_key)
        .bind(&e.event_type)
        .bind(&e.url)
        .bind(&e.body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl HitlStore for SqliteStore {
    async fn raise_escalation(
        &self,
        e: &Escalation,
        dedup_key: &str,
        events: &[OutboxEvent],
    ) -> Result<(Escalation, bool), StoreError> {
        let detail = detail_text(&e.detail)?;
        // A concurrent raise may resolve between our insert and our read: look once more.
        for _ in 0..3 {
            let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
            let inserted: Option<EscalationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO escalations (id, kind, status, wid, rollback_id, cascade_id, detail, \
                 dedup_key, created_at) VALUES (?1, ?2, 'open', ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
            )))
            .bind(&e.id)
            .bind(e.kind.as_str())
            .bind(&e.wid)
            .bind(&e.rollback_id)
            .bind(&e.cascade_id)
            .bind(&detail)
            .bind(dedup_key)
            .bind(e.created_at)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = inserted {
                insert_events(&mut tx, events).await?;
                tx.commit().await?;
                return Ok((row.into_escalation()?, true));
            }
            let open: Option<EscalationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM escalations WHERE dedup_key = ?1 AND status = 'open'"
            )))
            .bind(dedup_key)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            if let Some(row) = open {
                return Ok((row.into_escalation()?, false));
            }
        }
        Err(StoreError::Invalid(format!(
            "escalation {dedup_key} changed under three attempts to raise it"
        )))
    }

    async fn enqueue_events(&self, events: &[OutboxEvent]) -> Result<(), StoreError> {
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_escalation(&self, id: &str) -> Result<Option<Escalation>, StoreError> {
        let row: Option<EscalationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM escalations WHERE id = ?1"
        )))
        .bind(id)
        .fetch_optional(self.reader())
        .await?;
        row.map(EscalationRow::into_escalation).transpose()
    }

    async fn list_escalations(
        &self,
        status: Option<EscalationStatus>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Escalation>, StoreError> {
        let after = cursor.map(common::decode_cursor).transpose()?.unwrap_or(0);
        let limit = common::page_size(limit);
        let rows: Vec<EscalationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM escalations WHERE seq > ?1 \
             AND (?2 IS NULL OR status = ?2) ORDER BY seq LIMIT ?3"
        )))
        .bind(after)
        .bind(status.map(EscalationStatus::as_str))
        .bind(limit + 1)
        .fetch_all(self.reader())
        .await?;
        common::into_page(rows, limit, |r| r.seq, EscalationRow::into_escalation)
    }

    async fn resolve_escalation(
        &self,
        id: &str,
        r: &Resolution,
    ) -> Result<ResolveOutcome, StoreError> {
        let row: Option<EscalationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE escalations SET {RESOLVE_SET} WHERE id = ?4 AND status = 'open' \
             RETURNING {COLUMNS}"
        )))
        .bind(&r.decision)
        .bind(&r.decided_by)
        .bind(&r.comment)
        .bind(id)
        .bind(common::now())
        .fetch_optional(self.writer())
        .await?;
        match row {
            Some(row) => Ok(ResolveOutcome::Resolved(row.into_escalation()?)),
            None => Ok(match self.get_escalation(id).await? {
                Some(e) => ResolveOutcome::NotOpen(e),
                None => ResolveOutcome::NotFound,
            }),
        }
    }

    async fn resolve_rollback_escalations(
        &self,
        rollback_id: &str,
        r: &Resolution,
    ) -> Result<Vec<Escalation>, StoreError> {
        let rows: Vec<EscalationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE escalations SET {RESOLVE_SET} WHERE rollback_id = ?4 AND status = 'open' \
             RETURNING {COLUMNS}"
        )))
        .bind(&r.decision)
        .bind(&r.decided_by)
        .bind(&r.comment)
        .bind(rollback_id)
        .bind(common::now())
        .fetch_all(self.writer())
        .await?;
        let mut out = rows
            .into_iter()
            .map(EscalationRow::into_escalation)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let now = common::now();
        let until = common::lease_end(now, lease_for)?;
        // One statement on the single writer: no other claim can interleave.
        let rows: Vec<Delivery> = sqlx::query_as(
            "UPDATE webhook_outbox SET lease_owner = ?1, lease_until = ?2 \
             WHERE seq IN (SELECT seq FROM webhook_outbox WHERE state = 'pending' \
             AND next_attempt_at <= ?3 AND (lease_until IS NULL OR lease_until <= ?3) \
             ORDER BY seq LIMIT ?4) \
             RETURNING seq, event_id, event_type, url, body, attempts",
        )
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(i64::from(limit.max(1)))
        .fetch_all(self.writer())
        .await?;
        let mut rows = rows;
        rows.sort_by_key(|d| d.seq);
        Ok(rows)
    }

    async fn record_attempt(
        &self,
        d: &Delivery,
        owner: &str,
        a: &Attempt,
        outcome: AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let now = common::now();
        let (state, next) = match outcome {
            AttemptOutcome::Delivered => ("delivered", now),
            AttemptOutcome::RetryIn(d) => ("pending", common::lease_end(now, d)?),
        };
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query(
            "UPDATE webhook_outbox SET state = ?1, attempts = attempts + 1, \
             next_attempt_at = ?2, delivered_at = CASE WHEN ?1 = 'delivered' THEN ?5 END, \
             lease_owner = NULL, lease_until = NULL \
             WHERE seq = ?3 AND lease_owner = ?4 AND state = 'pending'",
        )
        .bind(state)
        .bind(next)
        .bind(d.seq)
        .bind(owner)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery, attempt, attempted_at, duration_ms, \
             http_status, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(d.seq)
        .bind(d.attempts + 1)
        .bind(a.attempted_at)
        .bind(a.duration_ms)
        .bind(a.http_status.map(i64::from))
        .bind(&a.error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_attempts(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AttemptRecord>, StoreError> {
        let after = cursor.map(common::decode_cursor).transpose()?.unwrap_or(0);
        let limit = common::page_size(limit);
        let rows: Vec<AttemptRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts a \
             JOIN webhook_outbox o ON o.seq = a.delivery WHERE a.seq > ?1 \
             ORDER BY a.seq LIMIT ?2"
        )))
        .bind(after)
        .bind(limit + 1)
        .fetch_all(self.reader())
        .await?;
        common::into_page(rows, limit, |r| r.seq, |r| Ok(AttemptRecord::from(r)))
    }
}
