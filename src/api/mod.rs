//! The HTTP API (axum): routes, authentication, problem+json errors and the OpenAPI document
//! generated from the handlers (utoipa).

pub mod auth;
pub mod cascades;
pub mod circuits;
pub mod ects;
pub mod escalations;
pub mod ledger;
pub mod ops;
pub mod problem;
pub mod rollbacks;
pub mod workflows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::ect::SigningKey;
use crate::ledger::Ledger;
use crate::store::Store;

pub use auth::{Authenticator, Caller};
pub use problem::{ApiError, ApiJson, ApiPath, ApiQuery};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub ledger: Arc<Ledger>,
    pub auth: Arc<Authenticator>,
    pub signing_key: Arc<SigningKey>,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Drives rollbacks; woken when a request or a decision arrives.
    pub coordinator: Option<Arc<crate::rollback::driver::Coordinator>>,
    pub rollback_limiter: Arc<rollbacks::RequestLimiter>,
    /// Escalations and operator decisions.
    pub hitl: Arc<crate::hitl::Hitl>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Unwind",
        description = "Rollback coordinator for multi-agent workflows: an ECT ledger, DAG queries and blast radius.",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecurityAddon),
    tags(
        (name = "ledger", description = "Ingest and read Execution Context Tokens"),
        (name = "workflows", description = "Workflow DAGs and blast radius"),
        (name = "rollbacks", description = "Two-phase rollbacks, their progress and decisions"),
        (name = "cascades", description = "Cascades detected over the ledger"),
        (name = "escalations", description = "Escalations to people and webhook deliveries"),
        (name = "operations", description = "Health, readiness, metrics, keys and circuit breakers"),
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "execution_context",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("Execution-Context"))),
        );
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ects::router())
        .merge(ledger::router())
        .merge(workflows::router())
        .merge(rollbacks::router())
        .merge(cascades::router())
        .merge(escalations::router())
        .merge(ops::router())
        .merge(circuits::router())
}

/// The OpenAPI document of this build (what `/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let timeout = Duration::from_secs(state.config.limits.request_timeout_s.max(1));
    let body_limit = state.config.limits.max_body_bytes;
    let (routes, openapi) = api_router().split_for_parts();
    routes
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .merge(crate::ui::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(refuse_nul_in_url))
        .layer(middleware::from_fn(record_metrics))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        // Outside the timeout and the panic catcher, so their bare answers become problems too.
        .layer(middleware::map_response(problem::problem_for_bare_errors))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(move |req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Ids and filters arrive percent-decoded, and U+0000 (`%00`) is text no store keeps
/// (PostgreSQL refuses it): such a URL names nothing and is refused before any handler.
async fn refuse_nul_in_url(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let has_nul = |part: &str| {
        part.as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
    };
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return ApiError::invalid_request("the URL holds U+0000 (%00), which no id or filter may")
            .into_response();
    }
    next.run(request).await
}

/// Request counts and latency by route template (never by raw path: ids would explode the
/// label space) and status.
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("unwind_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("unwind_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed());
    response
}

/// RFC 3339 with seconds precision and `Z`, the format of every time the API answers.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An operator's comment as kept: at most 1000 characters; U+0000, which PostgreSQL cannot
/// store, is `invalid_request` rather than a store failure.
pub fn comment_text(comment: Option<String>) -> Result<Option<String>, ApiError> {
    match comment {
        Some(c) if c.contains('\0') => {
            Err(ApiError::invalid_request("comment must not contain U+0000"))
        }
        other => Ok(other.map(|c| c.chars().take(1000).collect())),
    }
}

/// `limit` of list endpoints: default 100, 1..=1000.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n),
        Some(n) => Err(ApiError::invalid_request(format!(
            "limit must be 1..=1000, not {n}"
        ))),
    }
}
