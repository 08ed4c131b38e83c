//! [`CascadeStore`] on PostgreSQL.

use super::{ECT_COLUMNS, PgStore};
use crate::store::cascade::{
    CascadeAlert, CascadeAlertRow, CascadeStore, MAX_ANCESTOR_ROWS, NewCascadeAlert, list_column,
    widened,
};
use crate::store::common::{self, EctRow};
use crate::store::{EctRecord, Page, StoreError};

const ALERT_COLUMNS: &str = "seq, id, wid, pattern, root_cause_ect, \
     affected_agents::text AS affected_agents, blast_radius::text AS blast_radius, ect, token, \
     recorded, detected_at";

fn records(rows: Vec<EctRow>) -> Result<Vec<EctRecord>, StoreError> {
    rows.into_iter().map(EctRow::into_record).collect()
}

#[async_trait::async_trait]
impl CascadeStore for PgStore {
    async fn ects_issued_between(
        &self,
        exec_act: &str,
        since_iat: i64,
        until_iat: i64,
        limit: u32,
    ) -> Result<Vec<EctRecord>, StoreError> {
        let rows: Vec<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ECT_COLUMNS} FROM ects WHERE exec_act = $1 AND iat BETWEEN $2 AND $3 \
             ORDER BY iat, jti LIMIT $4"
        )))
        .bind(exec_act)
        .bind(since_iat)
        .bind(until_iat)
        .bind(common::page_size(limit))
        .fetch_all(&self.pool)
        .await?;
        records(rows)
    }

    async fn newest_ects(&self, limit: u32) -> Result<Vec<EctRecord>, StoreError> {
        // One descent of the `seq` index for the newest position, then a range scan.
        let rows: Vec<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ECT_COLUMNS} FROM ects \
             WHERE seq > (SELECT coalesce(max(seq), 0) FROM ects) - $1 ORDER BY seq"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        records(rows)
    }

    async fn ancestors_of(&self, jti: &str, max_depth: u32) -> Result<Vec<EctRecord>, StoreError> {
        let rows: Vec<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH RECURSIVE up(jti, depth) AS ( \
               SELECT parent, 1 FROM ect_edges WHERE child = $1 \
               UNION \
               SELECT e.parent, up.depth + 1 FROM ect_edges e JOIN up ON e.child = up.jti \
               WHERE up.depth < $2) \
             SELECT {ECT_COLUMNS} FROM ects WHERE jti IN (SELECT jti FROM up LIMIT $3)"
        )))
        .bind(jti)
        .bind(i64::from(max_depth))
        .bind(MAX_ANCESTOR_ROWS)
        .fetch_all(&self.pool)
        .await?;
        records(rows)
    }

    async fn children_of(&self, jti: &str, limit: u32) -> Result<Vec<EctRecord>, StoreError> {
        let rows: Vec<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ECT_COLUMNS} FROM ects WHERE jti IN \
             (SELECT child FROM ect_edges WHERE parent = $1) ORDER BY seq LIMIT $2"
        )))
        .bind(jti)
        .bind(common::page_size(limit))
        .fetch_all(&self.pool)
        .await?;
        records(rows)
    }

    async fn cascade_alert_exists(
        &self,
        pattern: &str,
        root_cause_ect: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM cascade_alerts WHERE pattern = $1 AND root_cause_ect = $2",
        )
        .bind(pattern)
        .bind(root_cause_ect)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn widen_cascade_alert(
        &self,
        pattern: &str,
        root_cause_ect: &str,
        agents: &[String],
    ) -> Result<Option<CascadeAlert>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<CascadeAlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM cascade_alerts \
             WHERE pattern = $1 AND root_cause_ect = $2 FOR UPDATE"
        )))
        .bind(pattern)
        .bind(root_cause_ect)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut alert) = row.map(CascadeAlertRow::into_alert).transpose()? else {
            return Ok(None);
        };
        let Some(all) = widened(&alert.alert.affected_agents, agents) else {
            return Ok(None);
        };
        sqlx::query("UPDATE cascade_alerts SET affected_agents = $2::jsonb WHERE id = $1")
            .bind(&alert.alert.id)
            .bind(list_column(&all)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        alert.alert.affected_agents = all;
        Ok(Some(alert))
    }

    async fn insert_cascade_alert(
        &self,
        alert: &NewCascadeAlert,
    ) -> Result<Option<CascadeAlert>, StoreError> {
        let row: Option<CascadeAlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO cascade_alerts (id, wid, pattern, root_cause_ect, affected_agents, \
             blast_radius, ect, token, detected_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, now()) \
             ON CONFLICT (pattern, root_cause_ect) DO NOTHING RETURNING {ALERT_COLUMNS}"
        )))
        .bind(&alert.id)
        .bind(&alert.wid)
        .bind(&alert.pattern)
        .bind(&alert.root_cause_ect)
        .bind(list_column(&alert.affected_agents)?)
        .bind(list_column(&alert.blast_radius)?)
        .bind(&alert.ect)
        .bind(&alert.token)
        .fetch_optional(&self.pool)
        .await?;
        row.map(CascadeAlertRow::into_alert).transpose()
    }

    async fn mark_cascade_alert_recorded(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE cascade_alerts SET recorded = TRUE WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn unrecorded_cascade_alerts(&self) -> Result<Vec<CascadeAlert>, StoreError> {
        let rows: Vec<CascadeAlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM cascade_alerts WHERE NOT recorded ORDER BY seq LIMIT 1000"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(CascadeAlertRow::into_alert).collect()
    }

    async fn list_cascade_alerts(
        &self,
        wid: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<CascadeAlert>, StoreError> {
        let after = cursor.map(common::decode_cursor).transpose()?.unwrap_or(0);
        let limit = common::page_size(limit);
        let rows: Vec<CascadeAlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM cascade_alerts \
             WHERE seq > $1 AND ($2::text IS NULL OR wid = $2) ORDER BY seq LIMIT $3"
        )))
        .bind(after)
        .bind(wid)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        common::into_page(rows, limit, |r| r.seq, CascadeAlertRow::into_alert)
    }
}
