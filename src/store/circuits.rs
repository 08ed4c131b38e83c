//! Shared circuit breaker state (table `circuits`): what replicas must agree on about each
//! downstream agent's breaker. Every write is a compare-and-set on the row's `version`, so of
//! two replicas opening the same breaker, or claiming its one probe, exactly one wins.
//!
//! Both back ends run the same statements (SQLite accepts PostgreSQL's `$N` placeholders) and
//! decode the same row type: times are Unix milliseconds, the error rate a double.

use super::StoreError;
use crate::agents::circuit::CircuitState;

/// One agent's breaker as the replicas share it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CircuitRow {
    pub agent: String,
    /// `closed`, `open` or `half_open` (see [`CircuitRow::state`]).
    pub state: String,
    /// When the current cooldown started.
    pub opened_at_ms: Option<i64>,
    pub cooldown_s: i64,
    /// Every cooldown since the breaker first opened.
    pub total_cooldown_s: i64,
    pub error_rate: f64,
    /// The `rollback_start` of the last failed call.
    pub last_failure_ect: Option<String>,
    /// The last `circuit_breaker_open` ECT and its `wid`.
    pub open_ect: Option<String>,
    pub open_wid: Option<String>,
    /// Set by the store on every write.
    pub updated_at_ms: i64,
    /// Set by the store: 1 for a new row, then one more per write.
    pub version: i64,
}

impl CircuitRow {
    /// The state; a value no build writes reads as closed.
    pub fn state(&self) -> CircuitState {
        CircuitState::parse(&self.state).unwrap_or(CircuitState::Closed)
    }

    /// Refuses what no back end may store (both alike).
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if CircuitState::parse(&self.state).is_none() {
            return Err(StoreError::Invalid(format!(
                "circuit state `{}`",
                self.state
            )));
        }
        if self.agent.is_empty() || !self.error_rate.is_finite() {
            return Err(StoreError::Invalid(
                "a circuit needs an agent and a finite error rate".into(),
            ));
        }
        Ok(())
    }
}

/// The shared breaker state. Implemented by every [`super::Store`].
#[async_trait::async_trait]
pub trait CircuitStore: Send + Sync {
    async fn get_circuit(&self, agent: &str) -> Result<Option<CircuitRow>, StoreError>;

    /// Every agent's breaker, by agent id.
    async fn list_circuits(&self) -> Result<Vec<CircuitRow>, StoreError>;

    /// Compare-and-set: writes `row` if the stored version is `expected` (0: no row yet) and
    /// returns it as stored (`version` = `expected + 1`, `updated_at_ms` the store's time);
    /// `None`, writing nothing, when another writer changed the row first.
    async fn put_circuit(
        &self,
        row: &CircuitRow,
        expected: i64,
    ) -> Result<Option<CircuitRow>, StoreError>;
}

pub(crate) const COLUMNS: &str = "agent, state, opened_at_ms, cooldown_s, total_cooldown_s, \
     error_rate, last_failure_ect, open_ect, open_wid, updated_at_ms, version";

pub(crate) fn select_one() -> String {
    format!("SELECT {COLUMNS} FROM circuits WHERE agent = $1")
}

pub(crate) fn select_all() -> String {
    format!("SELECT {COLUMNS} FROM circuits ORDER BY agent")
}

pub(crate) fn insert() -> String {
    format!(
        "INSERT INTO circuits ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1) \
         ON CONFLICT (agent) DO NOTHING RETURNING {COLUMNS}"
    )
}

pub(crate) fn update() -> String {
    format!(
        "UPDATE circuits SET state = $2, opened_at_ms = $3, cooldown_s = $4, \
         total_cooldown_s = $5, error_rate = $6, last_failure_ect = $7, open_ect = $8, \
         open_wid = $9, updated_at_ms = $10, version = version + 1 \
         WHERE agent = $1 AND version = $11 RETURNING {COLUMNS}"
    )
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Implements [`CircuitStore`] for a store type given its read and write pools (the same
/// statements and row type serve both back ends).
macro_rules! circuit_store_for {
    ($store:ty, reader: $reader:ident, writer: $writer:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::circuits::CircuitStore for $store {
            async fn get_circuit(
                &self,
                agent: &str,
            ) -> Result<Option<$crate::store::circuits::CircuitRow>, $crate::store::StoreError>
            {
                Ok(
                    sqlx::query_as(sqlx::AssertSqlSafe($crate::store::circuits::select_one()))
                        .bind(agent)
                        .fetch_optional(&self.$reader)
                        .await?,
                )
            }

            async fn list_circuits(
                &self,
            ) -> Result<Vec<$crate::store::circuits::CircuitRow>, $crate::store::StoreError> {
                Ok(
                    sqlx::query_as(sqlx::AssertSqlSafe($crate::store::circuits::select_all()))
                        .fetch_all(&self.$reader)
                        .await?,
                )
            }

            async fn put_circuit(
                &self,
                row: &$crate::store::circuits::CircuitRow,
                expected: i64,
            ) -> Result<Option<$crate::store::circuits::CircuitRow>, $crate::store::StoreError>
            {
                row.check()?;
                let sql = if expected == 0 {
                    $crate::store::circuits::insert()
                } else {
                    $crate::store::circuits::update()
                };
                let query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(&row.agent)
                    .bind(&row.state)
                    .bind(row.opened_at_ms)
                    .bind(row.cooldown_s)
                    .bind(row.total_cooldown_s)
                    .bind(row.error_rate)
                    .bind(&row.last_failure_ect)
                    .bind(&row.open_ect)
                    .bind(&row.open_wid)
                    .bind($crate::store::circuits::now_ms());
                let query = if expected == 0 {
                    query
                } else {
                    query.bind(expected)
                };
                Ok(query.fetch_optional(&self.$writer).await?)
            }
        }
    };
}

pub(crate) use circuit_store_for;
