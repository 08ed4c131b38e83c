//! [`CascadeStore`] on SQLite: reads on the reader pool, writes on the single writer.

use super::{ECT_COLUMNS, SqliteStore};
use crate::store::cascade::{
    CascadeAlert, CascadeAlertRow, CascadeStore, MAX_ANCESTOR_ROWS, NewCascadeAlert, list_column,
    widened,
};
use crate::store::common::{self, EctRow};
use crate::store::{EctRecord, Page, StoreError};

const ALERT_COLUMNS: &str = "seq, id, wid, pattern, root_cause_ect, \
     affected_agents AS affected_agents, blast_radius AS blast_radius, ect, token, \
     recorded, detected_at";

fn records(rows: Vec<EctRow>) -> Result<Vec<EctRecord>, StoreError> {
    rows.into_iter().map(EctRow::into_record).collect()
}

#[async_trait::async_trait]
impl CascadeStore for SqliteStore {
    async fn ects_issued_between(
        &self,
        exec_act: &str,
        since_iat: i64,
        until_iat: i64,
        limit: u32,
    ) -> Result<Vec<EctRecord>, StoreError> {
        let rows: Vec<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ECT_COLUMNS} FROM ects WHERE exec_act = ? AND iat BETWEEN ? AND ? \
             ORDER BY iat, jti LIMIT ?"
        )))
        .bind(exec_act)
        .bind(since_iat)
        .bind(until_iat)
        .bind(common::page_size(limit))
        .fetch_all(&self.reader)
        .await?;
        records(rows)
    }

    async fn newest_ects(&self, limit: u32) -> Result<Vec<EctRecord>, StoreError> {
        // One descent of the `seq` index for the newest position, then a range scan.
        let rows: Vec<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ECT_COLUMNS} FROM ects \
             WHERE seq > (SELECT coalesce(max(seq), 0) FROM ects) - ? ORDER BY seq"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        records(rows)
    }

    async fn ancestors_of(&self, jti: &str, max_depth: u32) -> Result<Vec<EctRecord>, StoreError> {
        let rows: Vec<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH RECURSIVE up(jti, depth) AS ( \
               SELECT parent, 1 FROM ect_edges WHERE child = ? \
               UNION \
               SELECT e.parent, up.depth + 1 FROM ect_edges e JOIN up ON e.child = up.jti \
               WHERE up.depth < ?) \
             SELECT {ECT_COLUMNS} FROM ects WHERE jti IN (SELECT jti FROM up LIMIT ?)"
        )))
        .bind(jti)
        .bind(i64::from(max_depth))
        .bind(MAX_ANCESTOR_ROWS)
        .fetch_all(&self.reader)
        .await?;
        records(rows)
    }

    async fn children_of(&self, jti: &str, limit: u32) -> Result<Vec<EctRecord>, StoreError> {
        let rows: Vec<EctRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ECT_COLUMNS} FROM ects WHERE jti IN \
             (SELECT child FROM ect_edges WHERE parent = ?) ORDER BY seq LIMIT ?"
        )))
        .bind(jti)
        .bind(common::page_size(limit))
        .fetch_all(&self.reader)
        .await?;
        records(rows)
    }

    async fn cascade_alert_exists(
        &self,
        pattern: &str,
        root_cause_ect: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM cascade_alerts WHERE pattern = ? AND root_cause_ect = ?",
        )
        .bind(pattern)
        .bind(root_cause_ect)
        .fetch_optional(&self.reader)
        .await?;
        Ok(found.is_some())
    }

    async fn widen_cascade_alert(
        &self,
        pattern: &str,
        root_cause_ect: &str,
        agents: &[String],
    ) -> Result<Option<CascadeAlert>, StoreError> {
        // The single writer: nothing changes the row between the read and the write.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let row: Option<CascadeAlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM cascade_alerts WHERE pattern = ? AND root_cause_ect = ?"
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
        sqlx::query("UPDATE cascade_alerts SET affected_agents = ? WHERE id = ?")
            .bind(list_column(&all)?)
            .bind(&alert.alert.id)
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
        .bind(common::now())
        .fetch_optional(&self.writer)
        .await?;
        row.map(CascadeAlertRow::into_alert).transpose()
    }

    async fn mark_cascade_alert_recorded(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE cascade_alerts SET recorded = 1 WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn unrecorded_cascade_alerts(&self) -> Result<Vec<CascadeAlert>, StoreError> {
        let rows: Vec<CascadeAlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM cascade_alerts WHERE recorded = 0 ORDER BY seq LIMIT 1000"
        )))
        .fetch_all(&self.reader)
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
             WHERE seq > ? AND (? IS NULL OR wid = ?) ORDER BY seq LIMIT ?"
        )))
        .bind(after)
        .bind(wid)
        .bind(wid)
        .bind(limit + 1)
        .fetch_all(&self.reader)
        .await?;
        common::into_page(rows, limit, |r| r.seq, CascadeAlertRow::into_alert)
    }
}
