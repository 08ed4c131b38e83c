//! `GET /.well-known/cascade/circuits`: the coordinator's circuit breakers toward its agents in
//! the cascade draft's format. Authenticated (the draft: the endpoint reveals system health
//! topology); open breakers are the ones every replica agreed on through the store.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::{ApiError, AppState, Caller};
use crate::agents::breakers::CircuitStatus;
use crate::config::Role;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_circuits))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitList {
    pub circuits: Vec<CircuitStatus>,
}

/// Every breaker toward an agent this coordinator has called (or that a replica opened).
#[utoipa::path(
    get, path = "/.well-known/cascade/circuits", tag = "operations",
    responses(
        (status = 200, body = CircuitList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
async fn list_circuits(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<CircuitList>, ApiError> {
    caller.require(Role::Reader)?;
    let circuits = match state
        .coordinator
        .as_ref()
        .and_then(|c| c.agents().circuits().cloned())
    {
        Some(circuits) => circuits.statuses().await,
        None => Vec::new(),
    };
    Ok(axum::Json(CircuitList { circuits }))
}
