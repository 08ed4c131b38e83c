//! Who is calling: operators with bearer tokens (roles reader < operator < admin, tokens kept
//! only as SHA-256), or agents with a signed `Execution-Context` ECT addressed to Unwind.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, header, request::Parts};

use super::AppState;
use super::problem::ApiError;
use crate::config::{AuthTokenConfig, Role};
use crate::ect::VerifiedEct;
use crate::ect::header::{HeaderError, split_execution_context};

/// The header agents authenticate with.
pub const EXECUTION_CONTEXT: &str = "execution-context";

/// Operator tokens by the SHA-256 of the token.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: HashMap<String, (String, Role)>,
}

impl Authenticator {
    pub fn new(configured: &[AuthTokenConfig]) -> Self {
        let tokens = configured
            .iter()
            .map(|t| (t.sha256.to_ascii_lowercase(), (t.name.clone(), t.role)))
            .collect();
        Self { tokens }
    }

    /// Adds a token known in clear (the generated admin token).
    pub fn add_token(&mut self, name: &str, role: Role, token: &str) {
        self.tokens.insert(
            crate::ect::sha256_hex(token.as_bytes()),
            (name.to_string(), role),
        );
    }

    /// The operator a bearer token belongs to. Comparing hashes (not tokens) keeps lookups
    /// free of timing differences that would leak a token's prefix.
    pub fn operator(&self, token: &str) -> Option<(String, Role)> {
        self.tokens
            .get(&crate::ect::sha256_hex(token.as_bytes()))
            .cloned()
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    Operator {
        name: String,
        role: Role,
    },
    /// An agent; `tokens` are its verified `Execution-Context` tokens (at least one).
    Agent {
        iss: String,
        tokens: Vec<VerifiedEct>,
    },
}

impl Caller {
    /// Refuses callers weaker than `role`; agents are never operators.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        match self {
            Caller::Operator { role: have, .. } if *have >= role => Ok(()),
            Caller::Operator { role: have, .. } => Err(ApiError::forbidden(format!(
                "this needs the {} role; the token has {}",
                role_name(role),
                role_name(*have)
            ))),
            Caller::Agent { .. } => Err(ApiError::forbidden(format!(
                "this needs an operator token with the {} role",
                role_name(role)
            ))),
        }
    }

    /// How the caller is recorded (`operator:<name>` or the agent's id).
    pub fn principal(&self) -> String {
        match self {
            Caller::Operator { name, .. } => format!("operator:{name}"),
            Caller::Agent { iss, .. } => iss.clone(),
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Reader => "reader",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(&parts.headers, state).await
    }
}

/// Bearer token first; else the `Execution-Context` header; else 401.
pub async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Caller, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthenticated("expected `Authorization: Bearer <token>`"))?;
        return match state.auth.operator(token) {
            Some((name, role)) => Ok(Caller::Operator { name, role }),
            None => Err(ApiError::unauthenticated("unknown bearer token")),
        };
    }
    if headers.contains_key(EXECUTION_CONTEXT) {
        let tokens =
            execution_context_tokens(headers, state.config.limits.max_execution_context_bytes)?;
        let now = chrono::Utc::now().timestamp();
        let mut verified = Vec::with_capacity(tokens.len());
        for token in &tokens {
            let ect = state
                .ledger
                .verifier()
                .verify(token, now)
                .await
                .map_err(|r| {
                    ApiError::unauthenticated(format!("Execution-Context does not verify: {r}"))
                })?;
            crate::ect::verify::require_audience(&ect, &state.config.coordinator_id).map_err(
                |r| ApiError::unauthenticated(format!("Execution-Context: {}", r.detail)),
            )?;
            verified.push(ect);
        }
        let iss = verified[0].iss.clone();
        // Unwind's own tokens (a `rollback_start` names the coordinator in `aud` and is sent to
        // every agent of a rollback) are evidence, never credentials.
        if iss == state.config.coordinator_id {
            return Err(ApiError::unauthenticated(
                "Execution-Context: tokens issued by this coordinator do not authenticate a caller",
            ));
        }
        if verified.iter().any(|e| e.iss != iss) {
            return Err(ApiError::unauthenticated(
                "Execution-Context tokens name more than one issuer",
            ));
        }
        return Ok(Caller::Agent {
            iss,
            tokens: verified,
        });
    }
    Err(ApiError::unauthenticated(
        "send `Authorization: Bearer <token>` (operators) or `Execution-Context: <ECT>` (agents)",
    ))
}

/// The compact tokens of the `Execution-Context` header (431 `too_large` over the limit).
fn execution_context_tokens(
    headers: &HeaderMap,
    max_bytes: usize,
) -> Result<Vec<String>, ApiError> {
    let mut values = Vec::new();
    for value in headers.get_all(EXECUTION_CONTEXT) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::unauthenticated("Execution-Context is not ASCII"))?;
        values.push(text);
    }
    split_execution_context(values.into_iter(), max_bytes).map_err(|e| match e {
        HeaderError::TooLarge { .. } => ApiError::new(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_large",
            format!("Execution-Context is over {max_bytes} bytes"),
        ),
        HeaderError::Empty => ApiError::unauthenticated("Execution-Context is empty"),
    })
}
