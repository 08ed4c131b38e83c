//! The verifier: header, key, signature, then claims, in the order spec/ect.md gives.

/// Limits and tolerances of verification (from `[ect]` configuration).
#[derive(Debug, Clone)]
pub struct VerifyPolicy {}

pub struct Verifier {}
