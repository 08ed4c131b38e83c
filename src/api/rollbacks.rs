//! `POST /v1/rollbacks`, `GET /v1/rollbacks[/{id}]`, `GET /v1/rollbacks/{id}/events` (SSE) and
//! `POST /v1/rollbacks/{id}/decision`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, Caller};
use crate::config::Role;
use crate::rollback::model::{
    CreateOutcome, ExecuteStatus, PrepareStatus, RollbackFilter, RollbackRecord, RollbackStatus,
    StepError, StepRecord,
};
use crate::rollback::planner::Scope;
use crate::rollback::request::{RequestError, Requester, RollbackRequest, SubmitError, submit};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_rollback, list_rollbacks))
        .routes(routes!(get_rollback))
        .routes(routes!(rollback_events))
        .routes(routes!(decide))
}

/// Limits on rollback requests (429 with `Retry-After` beyond them): per requester, and for
/// agents also per trust entry, so a wildcard entry cannot mint fresh ids to evade its limit.
pub struct RequestLimiter {
    per_requester: DefaultKeyedRateLimiter<String>,
    /// The default quota of a trust entry without `requests_per_s`.
    default_quota: Quota,
    per_entry: std::sync::Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
}

impl RequestLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let quota = quota(per_second, burst);
        Self {
            per_requester: RateLimiter::keyed(quota),
            default_quota: quota,
            per_entry: Default::default(),
        }
    }

    /// One request of `who`; for an agent also one of its trust entry (`entry` id and the
    /// entry's own rate, if it sets one).
    fn check(&self, who: &str, entry: Option<(&str, Option<u32>)>) -> Result<(), ApiError> {
        self.per_requester
            .check_key(&who.to_string())
            .map_err(|not_until| rate_limited(not_until.wait_time_from(now())))?;
        if let Some((entry, rate)) = entry {
            let limiter = {
                let mut map = self
                    .per_entry
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                map.entry(entry.to_owned())
                    .or_insert_with(|| {
                        let quota =
                            rate.map_or(self.default_quota, |r| quota(r, r.saturating_mul(2)));
                        Arc::new(RateLimiter::direct(quota))
                    })
                    .clone()
            };
            limiter
                .check()
                .map_err(|not_until| rate_limited(not_until.wait_time_from(now())))?;
        }
        Ok(())
    }
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

fn now() -> governor::clock::QuantaInstant {
    governor::clock::Clock::now(&governor::clock::DefaultClock::default())
}

fn rate_limited(wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many rollback requests; slow down",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)))
}

/// A step of the rollback resource.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    pub checkpoint_id: String,
    pub agent: String,
    pub rank: u32,
    pub prepare_status: PrepareStatus,
    pub execute_status: ExecuteStatus,
    pub attempts: u32,
    pub error: Option<StepError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EvidenceView {
    pub rollback_start: Option<String>,
    pub rollback_complete: Option<String>,
}

/// The rollback resource (api.md).
#[derive(Debug, Serialize, ToSchema)]
pub struct RollbackView {
    pub rollback_id: String,
    pub wid: String,
    pub checkpoint_id: String,
    pub trigger_ect: Option<String>,
    pub scope: Scope,
    pub status: RollbackStatus,
    pub reason: Option<String>,
    pub requested_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub steps: Vec<StepView>,
    pub failed_agents: Vec<String>,
    pub superseded_by: Option<String>,
    pub evidence: EvidenceView,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub decision: Option<Value>,
}

impl RollbackView {
    pub fn new(r: RollbackRecord, steps: Vec<StepRecord>) -> Self {
        let decision = r.result.get("decision").map(|d| {
            json!({
                "decision": d,
                "decided_by": r.result.get("decided_by"),
                "comment": r.result.get("comment"),
            })
        });
        Self {
            rollback_id: r.rollback_id,
            wid: r.wid,
            checkpoint_id: r.checkpoint_id,
            trigger_ect: r.trigger_ect,
            scope: r.scope,
            status: r.status,
            reason: r.reason,
            requested_by: r.requested_by,
            created_at: super::rfc3339(r.created_at),
            updated_at: super::rfc3339(r.updated_at),
            steps: steps
                .into_iter()
                .map(|s| StepView {
                    checkpoint_id: s.checkpoint_id,
                    agent: s.agent,
                    rank: s.rank,
                    prepare_status: s.prepare_status,
                    execute_status: s.execute_status,
                    attempts: s.attempts,
                    error: s.error,
                    reused_from: s.reused_from,
                })
                .collect(),
            failed_agents: r.failed_agents,
            superseded_by: r.superseded_by,
            evidence: EvidenceView {
                rollback_start: r.evidence_start,
                rollback_complete: r.evidence_complete,
            },
            decision,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RollbackPage {
    pub items: Vec<RollbackView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListRollbacksQuery {
    pub wid: Option<String>,
    pub status: Option<RollbackStatus>,
    pub cursor: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    ProceedPartial,
    Abort,
    Retry,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    pub decision: Decision,
    pub comment: Option<String>,
}

fn request_error(e: RequestError) -> ApiError {
    let status = match e {
        RequestError::NotFound(_) => StatusCode::NOT_FOUND,
        RequestError::Forbidden(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, e.code(), e.to_string())
}

async fn resource(state: &AppState, id: &str) -> Result<RollbackView, ApiError> {
    match state.store.get_rollback(id).await? {
        Some((r, steps)) => Ok(RollbackView::new(r, steps)),
        None => Err(ApiError::not_found(format!("no rollback {id}"))),
    }
}

/// Request a rollback (operators: any scope; agents with `Execution-Context`: `single` and
/// `sub_dag` of checkpoints they are part of).
#[utoipa::path(
    post, path = "/v1/rollbacks", tag = "rollbacks", request_body = RollbackRequest,
    responses(
        (status = 202, description = "Accepted; `Location` names the new rollback", body = RollbackView),
        (status = 200, description = "The same request again (same rollback_id)", body = RollbackView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "rollback_conflict (with conflicting_rollback_id) or idempotency_mismatch", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request, not_a_checkpoint, no_checkpoint_found", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited (see Retry-After)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("execution_context" = []))
)]
async fn create_rollback(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<RollbackRequest>,
) -> Result<Response, ApiError> {
    let (status, view) = request_rollback(&state, &caller, &request).await?;
    let location = format!("/v1/rollbacks/{}", view.rollback_id);
    let mut response = (status, axum::Json(view)).into_response();
    if status == StatusCode::ACCEPTED
        && let Ok(v) = HeaderValue::from_str(&location)
    {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// What a rollback request does for `caller` (the API and the console's form): 202 and the new
/// rollback, or 200 and the existing one for a repeated request.
pub(crate) async fn request_rollback(
    state: &AppState,
    caller: &Caller,
    request: &RollbackRequest,
) -> Result<(StatusCode, RollbackView), ApiError> {
    let requester = match caller {
        Caller::Operator { .. } => {
            caller.require(Role::Operator)?;
            Requester::Operator {
                principal: caller.principal(),
            }
        }
        Caller::Agent { iss, tokens } => Requester::Agent {
            iss: iss.clone(),
            context_wids: tokens.iter().map(|t| t.wid.clone()).collect(),
        },
    };
    let trust = state.ledger.verifier().trust();
    let entry = match &requester {
        Requester::Agent { iss, .. } => trust
            .entry_id(iss)
            .map(|id| (id, trust.entry_requests_per_s(iss))),
        Requester::Operator { .. } => None,
    };
    state.rollback_limiter.check(requester.principal(), entry)?;
    let outcome = submit(state.store.as_ref(), request, &requester)
        .await
        .map_err(|e| match e {
            SubmitError::Request(r) => request_error(r),
            SubmitError::Store(s) => ApiError::from(s),
        })?;
    match outcome {
        CreateOutcome::Created(r) => {
            if let Some(c) = &state.coordinator {
                c.wake();
            }
            metrics::counter!("unwind_rollback_requests_total", "result" => "created").increment(1);
            Ok((StatusCode::ACCEPTED, resource(state, &r.rollback_id).await?))
        }
        CreateOutcome::Replayed(r) => Ok((StatusCode::OK, resource(state, &r.rollback_id).await?)),
        CreateOutcome::IdempotencyMismatch(r) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_mismatch",
            format!("rollback {} exists with another request", r.rollback_id),
        )),
        CreateOutcome::Conflict {
            conflicting_rollback_id,
        } => {
            metrics::counter!("unwind_rollback_requests_total", "result" => "conflict")
                .increment(1);
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "rollback_conflict",
                format!(
                    "an active rollback with precedence holds these checkpoints: {conflicting_rollback_id}"
                ),
            );
            e.extra.insert(
                "conflicting_rollback_id".into(),
                Value::String(conflicting_rollback_id),
            );
            Err(e)
        }
    }
}

/// One rollback with its steps.
#[utoipa::path(
    get, path = "/v1/rollbacks/{id}", tag = "rollbacks",
    params(("id" = String, Path, description = "rollback_id")),
    responses((status = 200, body = RollbackView), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
async fn get_rollback(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<RollbackView>, ApiError> {
    caller.require(Role::Reader)?;
    Ok(axum::Json(resource(&state, &id).await?))
}

/// Rollbacks, oldest first.
#[utoipa::path(
    get, path = "/v1/rollbacks", tag = "rollbacks", params(ListRollbacksQuery),
    responses((status = 200, body = RollbackPage)),
    security(("bearer" = []))
)]
async fn list_rollbacks(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListRollbacksQuery>,
) -> Result<axum::Json<RollbackPage>, ApiError> {
    caller.require(Role::Reader)?;
    let limit = super::page_limit(q.limit)?;
    let filter = RollbackFilter {
        wid: q.wid,
        status: q.status,
    };
    let page = state
        .store
        .list_rollbacks(&filter, q.cursor.as_deref(), limit)
        .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for r in page.items {
        items.push(resource(&state, &r.rollback_id).await?);
    }
    Ok(axum::Json(RollbackPage {
        items,
        next_cursor: page.next_cursor,
    }))
}

/// Server-sent events: the whole rollback first (`event: rollback`), then one
/// `event: rollback.delta` per change carrying only what changed, and the whole rollback again
/// once it is terminal, after which the stream ends. When the store fails, a last
/// `event: error` carries a problem (`code`, `detail`) and the stream ends.
#[utoipa::path(
    get, path = "/v1/rollbacks/{id}/events", tag = "rollbacks",
    params(("id" = String, Path, description = "rollback_id")),
    responses((status = 200, description = "First and last (terminal) event: `event: rollback`, `id: <version>`, `data: <rollback resource>`; in between `event: rollback.delta`, `id: <version>`, `data: {\"version\",\"status\",\"updated_at\",\"steps\": [the steps that changed since the previous event]}`; a store failure ends the stream with `event: error`, `data: <problem>`", content_type = "text/event-stream"),
               (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
async fn rollback_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Reader)?;
    events(state, id).await
}

/// What a stream has sent so far: the version and each step as sent, so that a delta carries
/// only the steps that changed (a rollback of thousands of steps changes a few at a time).
#[derive(Default)]
struct Sent {
    version: Option<i64>,
    steps: HashMap<String, Value>,
}

impl Sent {
    /// The event for `view` (a new version): the whole resource when nothing was sent yet or
    /// the rollback is terminal, else a delta with the steps that differ from what was sent.
    fn event(&mut self, version: i64, view: &RollbackView) -> Event {
        let first = self.version.is_none();
        self.version = Some(version);
        let mut changed = Vec::new();
        for step in &view.steps {
            let value = serde_json::to_value(step).unwrap_or(Value::Null);
            if self.steps.get(&step.checkpoint_id) != Some(&value) {
                self.steps.insert(step.checkpoint_id.clone(), value.clone());
                changed.push(value);
            }
        }
        let (name, data) = if first || view.status.is_terminal() {
            ("rollback", serde_json::to_string(view).unwrap_or_default())
        } else {
            let delta = json!({
                "version": version,
                "status": view.status,
                "updated_at": view.updated_at,
                "steps": changed,
            });
            ("rollback.delta", delta.to_string())
        };
        Event::default()
            .event(name)
            .id(version.to_string())
            .data(data)
    }
}

/// The rollback's event stream (the API's and the console's live page).
pub(crate) async fn events(state: AppState, id: String) -> Result<Response, ApiError> {
    if state.store.get_rollback(&id).await?.is_none() {
        return Err(ApiError::not_found(format!("no rollback {id}")));
    }
    // Polling the store (not an in-process channel) lets any replica serve the stream.
    let stream = futures::stream::unfold(
        (state, id, Sent::default(), false),
        |(state, id, mut sent, done)| async move {
            if done {
                return None;
            }
            loop {
                match state.store.get_rollback(&id).await {
                    Ok(Some((r, steps))) if Some(r.version) != sent.version => {
                        let version = r.version;
                        let terminal = r.status.is_terminal();
                        let event = sent.event(version, &RollbackView::new(r, steps));
                        return Some((Ok::<_, Infallible>(event), (state, id, sent, terminal)));
                    }
                    Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                    Ok(None) => return None,
                    Err(e) => {
                        let event = store_failure_event(&id, &e);
                        return Some((Ok(event), (state, id, sent, true)));
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The last event of a stream whose store failed: `event: error` with the problem a request
/// would have been answered with (`internal`, or `unavailable` when the database cannot be
/// reached). The failure itself goes to the log, not to the client.
fn store_failure_event(id: &str, e: &crate::store::StoreError) -> Event {
    let problem = ApiError::of_store(e);
    tracing::error!(
        rollback_id = %id, code = problem.code, error = %e,
        "the store failed under a rollback event stream; ending it with an error event"
    );
    Event::default()
        .event("error")
        .data(problem.body().to_string())
}

/// An operator's decision on a rollback awaiting one.
#[utoipa::path(
    post, path = "/v1/rollbacks/{id}/decision", tag = "rollbacks", request_body = DecisionRequest,
    params(("id" = String, Path, description = "rollback_id")),
    responses((status = 200, body = RollbackView),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "not_awaiting_decision", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<DecisionRequest>,
) -> Result<axum::Json<RollbackView>, ApiError> {
    Ok(axum::Json(
        apply_decision(&state, &caller, &id, body).await?,
    ))
}

/// An operator's decision (the API and the console's buttons).
pub(crate) async fn apply_decision(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: DecisionRequest,
) -> Result<RollbackView, ApiError> {
    caller.require(Role::Operator)?;
    if state.store.get_rollback(id).await?.is_none() {
        return Err(ApiError::not_found(format!("no rollback {id}")));
    }
    let (name, to) = match body.decision {
        Decision::ProceedPartial => ("proceed_partial", RollbackStatus::Executing),
        Decision::Abort => ("abort", RollbackStatus::Executing),
        Decision::Retry => ("retry", RollbackStatus::Preparing),
    };
    let resolution = crate::store::hitl::Resolution {
        decision: Some(name.to_string()),
        decided_by: caller.principal(),
        comment: super::comment_text(body.comment)?,
    };
    let mut result = Map::new();
    result.insert("pending_decision".into(), json!(name));
    result.insert("decision".into(), json!(name));
    result.insert("decided_by".into(), json!(resolution.decided_by));
    result.insert(
        "decided_at".into(),
        json!(super::rfc3339(chrono::Utc::now())),
    );
    if let Some(comment) = &resolution.comment {
        result.insert("comment".into(), json!(comment));
    }
    match state
        .store
        .transition_rollback(id, RollbackStatus::AwaitingDecision, to, result)
        .await?
    {
        Some(decided) => {
            // The decision stands once applied; its record failing is logged, not undone.
            if let Err(e) = state.hitl.decisions.record(&decided, &resolution).await {
                tracing::error!(rollback_id = %id, error = %e, "decision applied but not recorded");
            }
            if let Some(c) = &state.coordinator {
                c.wake();
            }
            resource(state, id).await
        }
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_awaiting_decision",
            format!("rollback {id} is not awaiting a decision"),
        )),
    }
}
