//! Health, readiness, metrics and the coordinator's public keys.

use std::time::{Duration, Instant};

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
use crate::rollback::model::{RollbackFilter, RollbackStatus};
use crate::store::MAX_LIMIT;
use crate::store::hitl::EscalationStatus;

/// The state gauges are read from the store at most this often, however often `/metrics` is
/// scraped (it may be open to anyone).
const STATE_GAUGES_EVERY: Duration = Duration::from_secs(5);
/// How long `/readyz` waits for the store before it answers 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pages read per gauge; a backlog beyond this many items is reported as this many.
const STATE_GAUGE_PAGES: usize = 10;

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
    // Bounded: with the database down, the pool keeps retrying a connection for its whole
    // acquire timeout, longer than a probe waits; a probe needs a prompt "no".
    let answer = match tokio::time::timeout(READY_TIMEOUT, state.store.ready()).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the store did not answer within {} ms",
            READY_TIMEOUT.as_millis()
        )),
    };
    match answer {
        Ok(()) => Ok(axum::Json(Status {
            status: "ready".into(),
        })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                e,
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
    if state.metrics.is_some() {
        refresh_state_gauges(&state).await;
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
async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Read at each request: every replica lists the same keys, whatever it started with.
    let stored = state.store.unretired_keys().await?;
    Ok(axum::Json(crate::service::coordinator_jwks(
        &state.signing_key,
        &stored,
    ))
    .into_response())
}

/// Gauges of what is waiting now, read from the store when `/metrics` is scraped: rollbacks
/// awaiting a decision (and how long the oldest has waited), open escalations, and breakers not
/// closed. The store is shared, so every replica reports the same numbers: alert on `max`.
async fn refresh_state_gauges(state: &AppState) {
    // One refresh at a time, and none more often than STATE_GAUGES_EVERY.
    static LAST: tokio::sync::Mutex<Option<Instant>> = tokio::sync::Mutex::const_new(None);
    let mut last = LAST.lock().await;
    if last.is_some_and(|t| t.elapsed() < STATE_GAUGES_EVERY) {
        return;
    }
    *last = Some(Instant::now());
    match awaiting_decision(state).await {
        Ok((count, oldest_s)) => {
            metrics::gauge!("unwind_rollbacks_awaiting_decision").set(count as f64);
            metrics::gauge!("unwind_rollback_decision_wait_seconds").set(oldest_s);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read rollbacks for the metrics"),
    }
    match open_escalations(state).await {
        Ok(count) => metrics::gauge!("unwind_escalations_open").set(count as f64),
        Err(e) => tracing::warn!(error = %e, "cannot read escalations for the metrics"),
    }
    if let Some(circuits) = state
        .coordinator
        .as_ref()
        .and_then(|c| c.agents().circuits().cloned())
    {
        let statuses = circuits.statuses().await;
        for kind in ["open", "half_open"] {
            let n = statuses.iter().filter(|c| c.state == kind).count();
            metrics::gauge!("unwind_circuits", "state" => kind).set(n as f64);
        }
    }
}

/// Rollbacks awaiting a decision, and the seconds since the oldest of them last changed.
async fn awaiting_decision(state: &AppState) -> Result<(usize, f64), crate::store::StoreError> {
    let filter = RollbackFilter {
        wid: None,
        status: Some(RollbackStatus::AwaitingDecision),
    };
    let now = chrono::Utc::now();
    let (mut count, mut oldest) = (0usize, 0f64);
    let mut cursor: Option<String> = None;
    for _ in 0..STATE_GAUGE_PAGES {
        let page = state
            .store
            .list_rollbacks(&filter, cursor.as_deref(), MAX_LIMIT)
            .await?;
        count += page.items.len();
        for r in &page.items {
            oldest = oldest.max((now - r.updated_at).num_milliseconds() as f64 / 1000.0);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok((count, oldest.max(0.0)))
}

async fn open_escalations(state: &AppState) -> Result<usize, crate::store::StoreError> {
    let mut count = 0usize;
    let mut cursor: Option<String> = None;
    for _ in 0..STATE_GAUGE_PAGES {
        let page = state
            .store
            .list_escalations(Some(EscalationStatus::Open), cursor.as_deref(), MAX_LIMIT)
            .await?;
        count += page.items.len();
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(count)
}
