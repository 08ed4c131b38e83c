//! The agent's HTTP endpoints (api.md, "Agent protocol"):
//! - `POST /.well-known/cascade/rollback/prepare`
//! - `POST /.well-known/cascade/rollback`
//! - `GET /.well-known/cascade/checkpoints/{jti}`
//!
//! Errors are `application/problem+json` with a `code` member and never a signed token: the
//! agent signs only for a caller whose `Execution-Context` verified (its answers, and the error
//! ECTs of `cannot_prepare` / `failed`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::agent::{Agent, Phase, Refusal, RollbackRequest, truncate_id};

/// Execute path.
pub const ROLLBACK_PATH: &str = "/.well-known/cascade/rollback";
/// Prepare path.
pub const PREPARE_PATH: &str = "/.well-known/cascade/rollback/prepare";
/// Checkpoint probe path (with `{jti}`).
pub const CHECKPOINT_PATH: &str = "/.well-known/cascade/checkpoints/{jti}";
/// Largest `Execution-Context` accepted (all field lines together).
pub const MAX_EXECUTION_CONTEXT_BYTES: usize = 16 * 1024;
/// Largest request body: the protocol's bodies are a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

impl Agent {
    /// The protocol endpoints, and nothing else.
    pub fn router(&self) -> Router {
        Router::new()
            .route(PREPARE_PATH, post(prepare))
            .route(ROLLBACK_PATH, post(execute))
            .route(CHECKPOINT_PATH, get(probe))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }
}

#[derive(Deserialize)]
struct PrepareBody {
    rollback_id: String,
    checkpoint_id: String,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ExecuteBody {
    rollback_id: String,
    checkpoint_id: String,
    phase: String,
}

async fn prepare(State(agent): State<Agent>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<PrepareBody>(&body)
        .map_err(|e| format!("body: {e}"))
        .and_then(|b| {
            check_ids(RollbackRequest {
                rollback_id: b.rollback_id,
                checkpoint_id: b.checkpoint_id,
                scope: b.scope,
            })
        });
    handle(agent, headers, parsed, Phase::Prepare).await
}

async fn execute(State(agent): State<Agent>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<ExecuteBody>(&body)
        .map_err(|e| format!("body: {e}"))
        .and_then(|b| {
            if b.phase != "execute" {
                return Err(format!(
                    "phase must be \"execute\", not {:?}",
                    truncate_id(&b.phase)
                ));
            }
            check_ids(RollbackRequest {
                rollback_id: b.rollback_id,
                checkpoint_id: b.checkpoint_id,
                scope: None,
            })
        });
    handle(agent, headers, parsed, Phase::Execute).await
}

/// Authenticates, then runs the phase in its own task so that a caller hanging up cannot stop a
/// restore halfway and leave its claim pending.
async fn handle(
    agent: Agent,
    headers: HeaderMap,
    parsed: Result<RollbackRequest, String>,
    phase: Phase,
) -> Response {
    let tokens = match execution_context(&headers) {
        Ok(tokens) => tokens,
        Err(refusal) => return refusal_response(refusal),
    };
    let request = parsed.as_ref().ok();
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let rollback_start = match agent
        .authenticate(&token_refs, request.map(|r| r.rollback_id.as_str()), true)
        .await
    {
        Ok(ect) => ect,
        Err(detail) => {
            tracing::info!(phase = ?phase, %detail, "rollback request refused");
            return refusal_response(Refusal::Unauthenticated(detail));
        }
    };
    let request = match parsed {
        Ok(request) => request,
        Err(detail) => return refusal_response(Refusal::BadRequest(detail)),
    };
    let task = tokio::spawn(async move { agent.run_phase(phase, request, rollback_start).await });
    match task.await {
        Ok(Ok(answer)) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Ok(Err(refusal)) => refusal_response(refusal),
        Err(e) => refusal_response(Refusal::Internal(format!("rollback task: {e}"))),
    }
}

async fn probe(
    State(agent): State<Agent>,
    headers: HeaderMap,
    Path(jti): Path<String>,
) -> Response {
    let tokens = match execution_context(&headers) {
        Ok(tokens) => tokens,
        Err(refusal) => return refusal_response(refusal),
    };
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    if let Err(detail) = agent.authenticate(&token_refs, None, false).await {
        return refusal_response(Refusal::Unauthenticated(detail));
    }
    let store = agent.store();
    let checkpoint = match store.get(&jti).await {
        Ok(Some(cp)) => cp,
        Ok(None) => return refusal_response(Refusal::NotFound("unknown checkpoint".into())),
        Err(e) => return refusal_response(e.into()),
    };
    let Some(token) = checkpoint.token else {
        return refusal_response(Refusal::NotFound(
            "no checkpoint ECT was issued for this checkpoint".into(),
        ));
    };
    match store.verify(&jti).await {
        Ok(verified) => (
            StatusCode::OK,
            axum::Json(json!({"checkpoint": token, "verified": verified})),
        )
            .into_response(),
        Err(e) => refusal_response(e.into()),
    }
}

/// The tokens of the `Execution-Context` field lines (several lines, or comma-separated).
fn execution_context(headers: &HeaderMap) -> Result<Vec<String>, Refusal> {
    let mut total = 0usize;
    let mut tokens = Vec::new();
    for value in headers.get_all("execution-context") {
        total += value.len();
        if total > MAX_EXECUTION_CONTEXT_BYTES {
            return Err(Refusal::HeaderTooLarge);
        }
        let Ok(text) = value.to_str() else {
            return Err(Refusal::Unauthenticated(
                "Execution-Context is not ASCII".into(),
            ));
        };
        tokens.extend(
            text.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(tokens)
}

/// Ids are echoed into signed error ECTs and logs: 1..=128 printable ASCII characters.
fn check_ids(request: RollbackRequest) -> Result<RollbackRequest, String> {
    for (name, id) in [
        ("rollback_id", &request.rollback_id),
        ("checkpoint_id", &request.checkpoint_id),
    ] {
        if !unwind_ect::claims::is_valid_id(id) {
            return Err(format!("{name} must be 1..=128 printable ASCII characters"));
        }
    }
    if let Some(scope) = &request.scope
        && !matches!(scope.as_str(), "single" | "sub_dag" | "full_workflow")
    {
        return Err("scope must be single, sub_dag or full_workflow".into());
    }
    Ok(request)
}

fn refusal_response(refusal: Refusal) -> Response {
    let (status, code, detail) = match refusal {
        Refusal::Unauthenticated(detail) => (StatusCode::UNAUTHORIZED, "unauthenticated", detail),
        Refusal::HeaderTooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_large",
            format!("Execution-Context over {MAX_EXECUTION_CONTEXT_BYTES} bytes"),
        ),
        Refusal::BadRequest(detail) => (StatusCode::BAD_REQUEST, "malformed", detail),
        Refusal::NotFound(detail) => (StatusCode::NOT_FOUND, "not_found", detail),
        Refusal::Forbidden(detail) => (StatusCode::FORBIDDEN, "forbidden", detail),
        Refusal::Unavailable(detail) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail),
        Refusal::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".to_owned(),
            )
        }
    };
    problem(status, code, &detail)
}

/// An `application/problem+json` body with `code`. It has no room for a token on purpose:
/// refusals are not signed.
pub(crate) fn problem(status: StatusCode, code: &str, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    });
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    response
}
