//! The coordinator's signing keys (table `coordinator_keys`), shared by every replica of one
//! database. At most one key is active (a partial unique index): replicas starting together each
//! offer a key with an insert that does nothing on conflict, and all of them then read the one
//! that won. Keys not yet retired stay trusted and published, so older evidence still verifies.
//!
//! Both back ends run the same statements (SQLite accepts PostgreSQL's `$N` placeholders).
//!
//! With a passphrase configured, `private_jwk` holds a [`sealed`] envelope instead of the JWK.

use super::StoreError;

/// One stored key, private part included.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// JOSE algorithm name.
    pub alg: String,
    /// The private JWK as written by `SigningKey::to_private_jwk_json`, or its [`sealed`]
    /// envelope.
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

    /// Every key, retired ones included, oldest first.
    async fn all_keys(&self) -> Result<Vec<StoredKey>, StoreError>;

    /// Replaces the stored private part of `kid` with `new` if it is still `expected` (a
    /// plaintext key being sealed); `false` when another writer changed it first.
    async fn replace_private_jwk(
        &self,
        kid: &str,
        expected: &str,
        new: &str,
    ) -> Result<bool, StoreError>;

    /// Retires `kid`: no longer active, trusted or published. `false` when it was not stored
    /// or already retired.
    async fn retire_key(&self, kid: &str) -> Result<bool, StoreError>;
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

pub(crate) fn select_all() -> String {
    format!("SELECT {COLUMNS} FROM coordinator_keys ORDER BY created_at_ms, kid")
}

pub(crate) const REPLACE_PRIVATE: &str =
    "UPDATE coordinator_keys SET private_jwk = $3 WHERE kid = $1 AND private_jwk = $2";

pub(crate) const RETIRE: &str = "UPDATE coordinator_keys SET active = FALSE, retired_at_ms = $2 \
     WHERE kid = $1 AND retired_at_ms IS NULL";

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

            async fn all_keys(
                &self,
            ) -> Result<Vec<$crate::store::keys::StoredKey>, $crate::store::StoreError> {
                Ok(
                    sqlx::query_as(sqlx::AssertSqlSafe($crate::store::keys::select_all()))
                        .fetch_all(&self.$reader)
                        .await?,
                )
            }

            async fn replace_private_jwk(
                &self,
                kid: &str,
                expected: &str,
                new: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::keys::REPLACE_PRIVATE)
                    .bind(kid)
                    .bind(expected)
                    .bind(new)
                    .execute(&self.$writer)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn retire_key(&self, kid: &str) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::keys::RETIRE)
                    .bind(kid)
                    .bind($crate::store::circuits::now_ms())
                    .execute(&self.$writer)
                    .await?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

pub(crate) use key_store_for;

/// Private keys at rest under a passphrase: AES-256-GCM with a key derived by
/// PBKDF2-HMAC-SHA256 from the passphrase and a random salt, a random nonce per key, and the
/// key's kid as associated data (a sealed key copied onto another row does not open). The
/// envelope is JSON and also carries the public JWK, so the published key set needs no
/// passphrase.
pub mod sealed {
    use std::num::NonZeroU32;

    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
    use aws_lc_rs::rand::SecureRandom;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde::{Deserialize, Serialize};

    /// Marks an envelope; its value is the format version.
    const MARK: &str = "unwind_sealed_key";
    const KDF: &str = "PBKDF2-HMAC-SHA256";
    const ENC: &str = "A256GCM";
    /// OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
    pub const ITERATIONS: u32 = 600_000;
    /// Envelopes naming more are refused (a forged row must not stall the start).
    const MAX_ITERATIONS: u32 = 10_000_000;

    #[derive(Debug, thiserror::Error)]
    pub enum SealError {
        #[error("the passphrase does not open it (wrong passphrase, or the row was altered)")]
        WrongPassphrase,
        #[error("not a sealed key: {0}")]
        Malformed(String),
        #[error("the passphrase is empty")]
        EmptyPassphrase,
        #[error("crypto failure")]
        Crypto,
    }

    /// A passphrase; never printed.
    #[derive(Clone)]
    pub struct Passphrase(String);

    impl Passphrase {
        pub fn new(text: String) -> Result<Self, SealError> {
            if text.is_empty() {
                return Err(SealError::EmptyPassphrase);
            }
            Ok(Self(text))
        }
    }

    impl std::fmt::Debug for Passphrase {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Passphrase(..)")
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Envelope {
        unwind_sealed_key: u32,
        kdf: String,
        iterations: u32,
        salt: String,
        enc: String,
        nonce: String,
        ciphertext: String,
        public_jwk: serde_json::Value,
    }

    /// Whether `stored` is an envelope (else a plaintext private JWK).
    pub fn is_sealed(stored: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(stored)
            .ok()
            .is_some_and(|v| v.get(MARK).is_some())
    }

    /// The public JWK an envelope carries.
    pub fn public_jwk(stored: &str) -> Result<serde_json::Value, SealError> {
        Ok(envelope(stored)?.public_jwk)
    }

    /// Seals keys under one passphrase with one salt: the costly derivation runs once however
    /// many keys are sealed. Call from a blocking thread.
    pub struct Sealer {
        salt: [u8; 16],
        key: LessSafeKey,
    }

    impl Sealer {
        pub fn new(passphrase: &Passphrase) -> Result<Self, SealError> {
            let mut salt = [0u8; 16];
            aws_lc_rs::rand::SystemRandom::new()
                .fill(&mut salt)
                .map_err(|_| SealError::Crypto)?;
            let key = derive(passphrase, &salt, ITERATIONS)?;
            Ok(Self { salt, key })
        }

        /// The envelope of `private_jwk`, bound to `kid`.
        pub fn seal(
            &self,
            kid: &str,
            private_jwk: &str,
            public_jwk: serde_json::Value,
        ) -> Result<String, SealError> {
            let mut nonce = [0u8; NONCE_LEN];
            aws_lc_rs::rand::SystemRandom::new()
                .fill(&mut nonce)
                .map_err(|_| SealError::Crypto)?;
            let mut data = private_jwk.as_bytes().to_vec();
            self.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(kid.as_bytes()),
                    &mut data,
                )
                .map_err(|_| SealError::Crypto)?;
            let envelope = Envelope {
                unwind_sealed_key: 1,
                kdf: KDF.into(),
                iterations: ITERATIONS,
                salt: B64.encode(self.salt),
                enc: ENC.into(),
                nonce: B64.encode(nonce),
                ciphertext: B64.encode(data),
                public_jwk,
            };
            serde_json::to_string(&envelope).map_err(|e| SealError::Malformed(e.to_string()))
        }
    }

    /// The private JWK sealed in `stored` for `kid`. Call from a blocking thread.
    pub fn open(stored: &str, kid: &str, passphrase: &Passphrase) -> Result<String, SealError> {
        let e = envelope(stored)?;
        let bytes = |name: &str, text: &str| {
            B64.decode(text)
                .map_err(|_| SealError::Malformed(format!("{name} is not base64url")))
        };
        let salt = bytes("salt", &e.salt)?;
        let nonce: [u8; NONCE_LEN] = bytes("nonce", &e.nonce)?
            .try_into()
            .map_err(|_| SealError::Malformed("nonce length".into()))?;
        let mut data = bytes("ciphertext", &e.ciphertext)?;
        let key = derive(passphrase, &salt, e.iterations)?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::WrongPassphrase)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::WrongPassphrase)
    }

    fn envelope(stored: &str) -> Result<Envelope, SealError> {
        let e: Envelope =
            serde_json::from_str(stored).map_err(|e| SealError::Malformed(e.to_string()))?;
        if e.unwind_sealed_key != 1 || e.kdf != KDF || e.enc != ENC {
            return Err(SealError::Malformed(format!(
                "unknown format {} ({}, {})",
                e.unwind_sealed_key, e.kdf, e.enc
            )));
        }
        if e.iterations == 0 || e.iterations > MAX_ITERATIONS {
            return Err(SealError::Malformed(format!(
                "{} iterations is out of range",
                e.iterations
            )));
        }
        Ok(e)
    }

    fn derive(
        passphrase: &Passphrase,
        salt: &[u8],
        iterations: u32,
    ) -> Result<LessSafeKey, SealError> {
        let iterations = NonZeroU32::new(iterations)
            .ok_or_else(|| SealError::Malformed("zero iterations".into()))?;
        let mut key = [0u8; 32];
        aws_lc_rs::pbkdf2::derive(
            aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            passphrase.0.as_bytes(),
            &mut key,
        );
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| SealError::Crypto)?;
        Ok(LessSafeKey::new(unbound))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn sealed_keys_open_only_with_their_passphrase_and_kid() {
            let pass = Passphrase::new("correct horse".into()).unwrap();
            let sealer = Sealer::new(&pass).unwrap();
            let private = r#"{"kty":"EC","d":"SECRET-D"}"#;
            let public = serde_json::json!({"kty": "EC", "kid": "k1"});
            let stored = sealer.seal("k1", private, public.clone()).unwrap();
            assert!(is_sealed(&stored) && !is_sealed(private));
            assert!(!stored.contains("SECRET-D"), "{stored}");
            assert_eq!(public_jwk(&stored).unwrap(), public);
            assert_eq!(open(&stored, "k1", &pass).unwrap(), private);
            let wrong = Passphrase::new("wrong".into()).unwrap();
            assert!(matches!(
                open(&stored, "k1", &wrong),
                Err(SealError::WrongPassphrase)
            ));
            assert!(matches!(
                open(&stored, "k2", &pass),
                Err(SealError::WrongPassphrase)
            ));
            assert!(Passphrase::new(String::new()).is_err());
            assert!(!format!("{pass:?}").contains("horse"));
        }
    }
}
