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
impl SigningKey {
    pub fn generate(_alg: KeyAlg) -> Result<Self, KeyError> {
        todo!()
    }
    pub fn from_private_jwk_json(_s: &str) -> Result<Self, KeyError> {
        todo!()
    }
    pub fn to_private_jwk_json(&self) -> String {
        todo!()
    }
    pub fn public_jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        todo!()
    }
    pub fn kid(&self) -> &str {
        todo!()
    }
    pub fn sign_ect(
        &self,
        _claims: &serde_json::Map<String, serde_json::Value>,
        _profile: super::Profile,
    ) -> Result<String, KeyError> {
        todo!()
    }
}
