//! `GET /v1/escalations`, `POST /v1/escalations/{id}/resolve` and
//! `GET /v1/webhook-deliveries`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, Caller};
use crate::config::Role;
use crate::hitl::EscalationView;
use crate::rollback::model::RollbackStatus;
use crate::store::hitl::{AttemptRecord, EscalationStatus, Resolution, ResolveOutcome};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_escalations))
        .routes(routes!(resolve_escalation))
        .routes(routes!(list_deliveries))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EscalationPage {
    pub items: Vec<EscalationView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListEscalationsQuery {
    pub status: Option<EscalationStatus>,
    pub cursor: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub cursor: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub comment: Option<String>,
}

/// One attempt to deliver one event to one webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryAttemptView {
    /// The attempt's position in the list (its cursor).
    pub seq: i64,
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub url: String,
    /// 1 for the first attempt of this event to this webhook.
    pub attempt: i64,
    pub attempted_at: String,
    pub duration_ms: i64,
    /// The receiver's HTTP status; null when no answer came (see `error`).
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub delivered: bool,
    /// The exact body sent (the same on every attempt).
    pub body: String,
}

impl From<AttemptRecord> for DeliveryAttemptView {
    fn from(a: AttemptRecord) -> Self {
        Self {
            seq: a.seq,
            event_id: a.event_id,
            event_type: a.event_type,
            url: a.url,
            attempt: a.attempt,
            attempted_at: super::rfc3339(a.attempted_at),
            duration_ms: a.duration_ms,
            delivered: a.http_status.is_some_and(|s| (200..300).contains(&s)),
            http_status: a.http_status,
            error: a.error,
            body: a.body,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryAttemptView>,
    pub next_cursor: Option<String>,
}

/// Escalations, oldest first.
#[utoipa::path(
    get, path = "/v1/escalations", tag = "escalations", params(ListEscalationsQuery),
    responses((status = 200, body = EscalationPage)),
    security(("bearer" = []))
)]
async fn list_escalations(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListEscalationsQuery>,
) -> Result<axum::Json<EscalationPage>, ApiError> {
    caller.require(Role::Reader)?;
    let limit = super::page_limit(q.limit)?;
    let page = state
        .store
        .list_escalations(q.status, q.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(EscalationPage {
        items: page.items.iter().map(EscalationView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Closes an escalation that needs no rollback decision (those that do are resolved by
/// `POST /v1/rollbacks/{id}/decision`).
#[utoipa::path(
    post, path = "/v1/escalations/{id}/resolve", tag = "escalations", request_body = ResolveRequest,
    params(("id" = String, Path, description = "escalation id")),
    responses((status = 200, body = EscalationView),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "not_open (already resolved) or decision_required (its rollback awaits a decision)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
async fn resolve_escalation(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ResolveRequest>,
) -> Result<axum::Json<EscalationView>, ApiError> {
    Ok(axum::Json(
        resolve(&state, &caller, &id, body.comment).await?,
    ))
}

/// Closes an escalation without a rollback decision (the API and the console's button).
pub(crate) async fn resolve(
    state: &AppState,
    caller: &Caller,
    id: &str,
    comment: Option<String>,
) -> Result<EscalationView, ApiError> {
    caller.require(Role::Operator)?;
    if let Some(e) = state.store.get_escalation(id).await?
        && e.status == EscalationStatus::Open
        && awaits_decision(state, e.rollback_id.as_deref()).await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "decision_required",
            "the rollback awaits a decision: POST /v1/rollbacks/{id}/decision resolves this escalation",
        ));
    }
    let resolution = Resolution {
        decision: None,
        decided_by: caller.principal(),
        comment: super::comment_text(comment)?,
    };
    match state.hitl.escalations.resolve(id, &resolution).await {
        Ok(ResolveOutcome::Resolved(e)) => Ok(EscalationView::from(&e)),
        Ok(ResolveOutcome::NotOpen(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_open",
            format!("escalation {id} is already resolved"),
        )),
        Ok(ResolveOutcome::NotFound) => Err(ApiError::not_found(format!("no escalation {id}"))),
        Err(crate::hitl::HitlError::Store(e)) => Err(ApiError::from(e)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// True when `rollback_id` names a rollback awaiting a decision.
async fn awaits_decision(state: &AppState, rollback_id: Option<&str>) -> Result<bool, ApiError> {
    let Some(id) = rollback_id else {
        return Ok(false);
    };
    Ok(state
        .store
        .get_rollback(id)
        .await?
        .is_some_and(|(r, _)| r.status == RollbackStatus::AwaitingDecision))
}

/// Every webhook delivery attempt, oldest first.
#[utoipa::path(
    get, path = "/v1/webhook-deliveries", tag = "escalations", params(PageQuery),
    responses((status = 200, body = DeliveryPage)),
    security(("bearer" = []))
)]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    caller.require(Role::Reader)?;
    let limit = super::page_limit(q.limit)?;
    let page = state
        .store
        .list_attempts(q.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(DeliveryPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}
