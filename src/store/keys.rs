//! The coordinator's signing keys (table `coordinator_keys`), shared by every replica of one
//! database. At most one key is active (a partial unique index): replicas starting together each
//! offer a key with an insert that does nothing on conflict, and all of them then read the one
//! that won. Keys not yet retired stay trusted and published, so older evidence still verifies.
//!
//! Both back ends run the same statements (SQLite accepts PostgreSQL's `$N` placeholders).

use super::StoreError;

/// One stored key, private part included.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// JOSE algorithm name.
    pub alg: String,
    /// The private JWK as written by `SigningKey::to_private_jwk_json`.
    pub private_jwk: String,
    /// The key Unwind signs with.
    pub active: bool,
    /// Set by the store.
    pub created_at_ms: i64,
    pub retired_at_ms: Option<i64>,
}

/// A key offered to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub kid: String,
    pub alg: String,
    pub private_jwk: String,
}

/// The coordinator's keys. Implemented by every [`super::Store`].
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync {
    /// The active key, if any.
    async fn active_key(&self) -> Result<Option<StoredKey>, StoreError>;

    /// Makes `key` the active key unless one exists, and returns the active key: `key` itself,
    /// or the one another writer stored first. Concurrent callers all get the same key.
    async fn ensure_active_key(&self, key: &NewKey) -> Result<StoredKey, StoreError>;

    /// Stores `key` as trusted but not active (nothing happens when its kid is stored): a key
    /// that signed earlier evidence and must keep verifying it.
    async fn add_key(&self, key: &NewKey) -> Result<(), StoreError>;

    /// Every key not retired, oldest first.
    async fn unretired_keys(&self) -> Result<Vec<StoredKey>, StoreError>;
}

pub(crate) const COLUMNS: &str = "kid, alg, private_jwk, active, created_at_ms, retired_at_ms";

pub(crate) fn select_active() -> String {
    format!("SELECT {COLUMNS} FROM coordinator_keys WHERE active")
}

pub(crate) fn select_unretired() -> String {
    format!(
        "SELECT {COLUMNS} FROM coordinator_keys WHERE retired_at_ms IS NULL \
         ORDER BY created_at_ms, kid"
    )
}

/// `$4`: active. A conflict on the kid or on the one active slot writes nothing.
pub(crate) const INSERT: &str = "INSERT INTO coordinator_keys \
     (kid, alg, private_jwk, active, created_at_ms) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT DO NOTHING";

pub(crate) fn check(key: &NewKey) -> Result<(), StoreError> {
    if key.kid.is_empty() || key.alg.is_empty() || key.private_jwk.is_empty() {
        return Err(StoreError::Invalid(
            "a coordinator key needs a kid, an algorithm and a private JWK".into(),
        ));
    }
    Ok(())
}

/// Implements [`KeyStore`] for a store type given its read and write pools.
macro_rules! key_store_for {
    ($store:ty, reader: $reader:ident, writer: $writer:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::keys::KeyStore for $store {
            async fn active_key(
                &self,
            ) -> Result<Option<$crate::store::keys::StoredKey>, $crate::store::StoreError> {
                Ok(
                    sqlx::query_as(sqlx::AssertSqlSafe($crate::store::keys::select_active()))
                        .fetch_optional(&self.$reader)
                        .await?,
                )
            }

            async fn ensure_active_key(
                &self,
                key: &$crate::store::keys::NewKey,
            ) -> Result<$crate::store::keys::StoredKey, $crate::store::StoreError> {
                $crate::store::keys::check(key)?;
                sqlx::query($crate::store::keys::INSERT)
                    .bind(&key.kid)
                    .bind(&key.alg)
                    .bind(&key.private_jwk)
                    .bind(true)
                    .bind($crate::store::circuits::now_ms())
                    .execute(&self.$writer)
                    .await?;
                // Read on the writer: the row just written (or the winner's) is visible there.
                let active: Option<$crate::store::keys::StoredKey> =
                    sqlx::query_as(sqlx::AssertSqlSafe($crate::store::keys::select_active()))
                        .fetch_optional(&self.$writer)
                        .await?;
                active.ok_or_else(|| {
                    // The kid was stored already, retired or inactive: it cannot become active.
                    $crate::store::StoreError::Invalid(format!(
                        "key {} is stored but not active, and no key is active",
                        key.kid
                    ))
                })
            }

            async fn add_key(
                &self,
                key: &$crate::store::keys::NewKey,
            ) -> Result<(), $crate::store::StoreError> {
                $crate::store::keys::check(key)?;
                sqlx::query($crate::store::keys::INSERT)
                    .bind(&key.kid)
                    .bind(&key.alg)
                    .bind(&key.private_jwk)
                    .bind(false)
                    .bind($crate::store::circuits::now_ms())
                    .execute(&self.$writer)
                    .await?;
                Ok(())
            }

            async fn unretired_keys(
                &self,
            ) -> Result<Vec<$crate::store::keys::StoredKey>, $crate::store::StoreError> {
                Ok(
                    sqlx::query_as(sqlx::AssertSqlSafe($crate::store::keys::select_unretired()))
                        .fetch_all(&self.$reader)
                        .await?,
                )
            }
        }
    };
}

pub(crate) use key_store_for;
