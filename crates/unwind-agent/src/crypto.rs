//! Snapshot encryption at rest (AES-256-GCM) and the `out_hash` digest.
//!
//! Checkpoint snapshots hold sensitive system state (the cascade draft's "Checkpoint
//! Integrity"), so the store never writes them in the clear. Each record gets a fresh random
//! 96-bit nonce; the checkpoint's `jti` is bound in as associated data, so a ciphertext copied
//! onto another row does not decrypt.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Length of an AES-256 key in bytes.
pub const KEY_LEN: usize = 32;

/// A snapshot key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFormatError {
    #[error("snapshot key must be {KEY_LEN} bytes, base64url encoded (got {0} bytes)")]
    Length(usize),
    #[error("snapshot key is not base64url: {0}")]
    Encoding(String),
    #[error("random number generator failed")]
    Random,
}

/// The AES-256-GCM key that encrypts snapshots. `Debug` never shows the key.
#[derive(Clone)]
pub struct SnapshotKey {
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotKey(..)")
    }
}

impl SnapshotKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyFormatError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyFormatError::Random)?;
        Ok(Self { bytes })
    }

    /// A key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyFormatError> {
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyFormatError::Length(bytes.len()))?;
        Ok(Self { bytes })
    }

    /// A key from its base64url form (padding and surrounding white space tolerated), the
    /// format of key files and of `UNWIND_AGENT_SNAPSHOT_KEY`.
    pub fn from_base64url(text: &str) -> Result<Self, KeyFormatError> {
        let trimmed = text.trim().trim_end_matches('=');
        let bytes = URL_SAFE_NO_PAD
            .decode(trimmed)
            .map_err(|e| KeyFormatError::Encoding(e.to_string()))?;
        Self::from_bytes(&bytes)
    }

    /// The base64url form (for writing a key file).
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes)
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        UnboundKey::new(&AES_256_GCM, &self.bytes)
            .map(LessSafeKey::new)
            .map_err(|_| SealError::Crypto)
    }

    /// Encrypts `plaintext`, binding `aad`; returns (nonce, ciphertext with tag).
    pub(crate) fn seal(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Crypto)?;
        let mut data = plaintext.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut data,
            )
            .map_err(|_| SealError::Crypto)?;
        Ok((nonce, data))
    }

    /// Decrypts and authenticates; any change to nonce, ciphertext, tag or `aad` fails.
    pub(crate) fn open(
        &self,
        aad: &[u8],
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Crypto)?;
        let mut data = ciphertext.to_vec();
        let plain_len = self
            .aead()?
            .open_in_place(nonce, Aad::from(aad), &mut data)
            .map_err(|_| SealError::Crypto)?
            .len();
        data.truncate(plain_len);
        Ok(data)
    }
}

/// Encryption or decryption failed (for decryption: the data was altered or the key is wrong).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    #[error("authenticated encryption failed")]
    Crypto,
}

/// base64url (no padding) SHA-256 of `bytes`: the `out_hash` form of spec/ect.md.
pub fn out_hash(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// Compares two strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_hash_vectors() {
        assert_eq!(
            out_hash(b"test"),
            "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg"
        );
        assert_eq!(out_hash(b""), "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let key = SnapshotKey::generate().unwrap();
        let (nonce, mut ct) = key.seal(b"jti-1", b"state").unwrap();
        assert_eq!(key.open(b"jti-1", &nonce, &ct).unwrap(), b"state");
        assert!(key.open(b"jti-2", &nonce, &ct).is_err());
        ct[0] ^= 1;
        assert!(key.open(b"jti-1", &nonce, &ct).is_err());
        let again = SnapshotKey::from_base64url(&key.to_base64url()).unwrap();
        assert_eq!(again.bytes, key.bytes);
        assert!(SnapshotKey::from_base64url("AAAA").is_err());
    }
}
