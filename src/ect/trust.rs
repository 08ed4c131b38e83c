//! Trust configuration: which issuers are trusted, with which keys (JWKS file or URL, cached,
//! refreshed on an unknown `kid` with a rate limit), and which rollback hosts each may name.
pub struct TrustStore {}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrustError(pub String);
impl TrustStore {
    pub fn from_config(_cfg: &crate::config::TrustConfig) -> Result<TrustStore, TrustError> {
        todo!()
    }
    pub fn add_static_issuer(&mut self, _id: &str, _jwks: jsonwebtoken::jwk::JwkSet) {
        todo!()
    }
}
