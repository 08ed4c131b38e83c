//! Signing keys: generation (aws-lc-rs), the private JWK file format, RFC 7638 key ids, and
//! signing of ECTs with either draft's names.

/// Algorithms Unwind can generate keys for and sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyAlg {
    ES256,
    ES384,
    EdDSA,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A private signing key with its public JWK.
pub struct SigningKey {}
