//! Placeholder until the store test support lands.
pub mod server;
pub mod tokens;
