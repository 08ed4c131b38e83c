//! Trust configuration: which issuers are trusted, with which keys (JWKS file or URL, cached,
//! refreshed on an unknown `kid` with a rate limit), and which rollback hosts each may name.
pub struct TrustStore {}
