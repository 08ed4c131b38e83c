//! `GET /v1/cascades`: the cascade alerts detected over the ledger.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiQuery, AppState, Caller};
use crate::config::Role;
use crate::store::cascade::CascadeAlert;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_cascades))
}

/// One cascade alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct CascadeView {
    pub id: String,
    /// The root cause's workflow.
    pub wid: Option<String>,
    /// `error_clustering`, `depth_first` or `breadth_first`.
    pub pattern: String,
    pub root_cause_ect: String,
    /// Agent ids involved in the pattern.
    pub affected_agents: Vec<String>,
    /// jtis of the root cause's blast radius (the root cause and every descendant).
    pub blast_radius: Vec<String>,
    /// jti of the signed `cascade_detected` ECT.
    pub ect: String,
    /// RFC 3339.
    pub detected_at: String,
}

impl From<CascadeAlert> for CascadeView {
    fn from(stored: CascadeAlert) -> Self {
        let a = stored.alert;
        Self {
            id: a.id,
            wid: a.wid,
            pattern: a.pattern,
            root_cause_ect: a.root_cause_ect,
            affected_agents: a.affected_agents,
            blast_radius: a.blast_radius,
            ect: a.ect,
            detected_at: super::rfc3339(stored.detected_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CascadePage {
    pub items: Vec<CascadeView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListCascadesQuery {
    pub wid: Option<String>,
    pub cursor: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<u32>,
}

/// Cascade alerts, oldest first.
#[utoipa::path(
    get, path = "/v1/cascades", tag = "cascades",
    params(ListCascadesQuery),
    responses((status = 200, body = CascadePage)),
    security(("bearer" = []))
)]
async fn list_cascades(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListCascadesQuery>,
) -> Result<axum::Json<CascadePage>, ApiError> {
    caller.require(Role::Reader)?;
    let limit = super::page_limit(q.limit)?;
    let page = state
        .store
        .list_cascade_alerts(q.wid.as_deref(), q.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(CascadePage {
        items: page.items.into_iter().map(CascadeView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}
