//! Health, readiness, metrics and the coordinator's public keys.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::{ApiError, AppState};
use crate::config::Role;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(jwks))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub status: String,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Status)))]
async fn healthz() -> axum::Json<Status> {
    axum::Json(Status {
        status: "ok".into(),
    })
}

/// 200 only when the store answers and every migration of this build is applied.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Status), (status = 503, body = Problem, content_type = "application/problem+json"))
)]
async fn readyz(State(state): State<AppState>) -> Result<axum::Json<Status>, ApiError> {
    match state.store.ready().await {
        Ok(()) => Ok(axum::Json(Status {
            status: "ready".into(),
        })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                e.to_string(),
            ))
        }
    }
}

/// Prometheus text format. Open unless `metrics.require_auth` is set.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if state.config.metrics.require_auth {
        super::auth::authenticate(&headers, &state)
            .await?
            .require(Role::Reader)?;
    }
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

/// The public keys of the ECTs Unwind signs (JWKS).
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "operations",
    responses((status = 200, description = "JWK set", content_type = "application/json"))
)]
async fn jwks(State(state): State<AppState>) -> Response {
    axum::Json(state.signing_key.public_jwks()).into_response()
}
