//! The verifier: header, key, signature, then claims, in the order spec/ect.md gives.

/// Limits and tolerances of verification (from `[ect]` configuration).
#[derive(Debug, Clone)]
pub struct VerifyPolicy {}

pub struct Verifier {}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self {}
    }
}
impl VerifyPolicy {
    pub fn from_config(_c: &crate::config::EctConfig) -> Result<Self, String> {
        todo!()
    }
}
impl Verifier {
    pub fn new(_trust: std::sync::Arc<super::TrustStore>, _policy: VerifyPolicy) -> Self {
        todo!()
    }
    pub fn trust(&self) -> &std::sync::Arc<super::TrustStore> {
        todo!()
    }
    pub async fn verify(
        &self,
        _token: &str,
        _now: i64,
    ) -> Result<super::VerifiedEct, super::Rejection> {
        todo!()
    }
    pub async fn verify_batch(
        &self,
        _tokens: &[String],
        _now: i64,
    ) -> Vec<Result<super::VerifiedEct, super::Rejection>> {
        todo!()
    }
    pub fn require_audience(_ect: &super::VerifiedEct, _aud: &str) -> Result<(), super::Rejection> {
        todo!()
    }
}
