//! `GET /v1/workflows`, `GET /v1/workflows/{wid}/dag`, `GET /v1/ects/{jti}/blast-radius`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::{ApiError, ApiPath, ApiQuery, AppState, Caller};
use crate::config::Role;
use crate::dag::{BlastRadius, DagJson, WorkflowGraph};
use crate::store::WorkflowSummary;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workflows))
        .routes(routes!(workflow_dag))
        .routes(routes!(blast_radius))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowView {
    pub wid: String,
    pub nodes: i64,
    pub agents: i64,
    pub checkpoints: i64,
    pub first_seen: String,
    pub last_seen: String,
}

impl From<WorkflowSummary> for WorkflowView {
    fn from(w: WorkflowSummary) -> Self {
        Self {
            wid: w.wid,
            nodes: w.nodes,
            agents: w.agents,
            checkpoints: w.checkpoints,
            first_seen: super::rfc3339(w.first_seen),
            last_seen: super::rfc3339(w.last_seen),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowPage {
    pub items: Vec<WorkflowView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub cursor: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DagFormat {
    Json,
    Dot,
    Mermaid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DagQuery {
    /// `json` (default), `dot` (Graphviz) or `mermaid`; `Accept: text/vnd.graphviz` also selects DOT.
    pub format: Option<DagFormat>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BlastRadiusQuery {
    /// Stop this many hops below the node (unbounded when absent).
    pub max_depth: Option<u32>,
}

/// Workflows in order of first appearance.
#[utoipa::path(
    get, path = "/v1/workflows", tag = "workflows", params(PageQuery),
    responses((status = 200, body = WorkflowPage), (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
async fn list_workflows(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<axum::Json<WorkflowPage>, ApiError> {
    caller.require(Role::Reader)?;
    let limit = super::page_limit(q.limit)?;
    let page = state
        .store
        .list_workflows(q.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(WorkflowPage {
        items: page.items.into_iter().map(WorkflowView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// A workflow's DAG as JSON, Graphviz DOT or Mermaid.
#[utoipa::path(
    get, path = "/v1/workflows/{wid}/dag", tag = "workflows",
    params(("wid" = String, Path, description = "Workflow id"), DagQuery),
    responses(
        (status = 200, body = DagJson, content_type = "application/json"),
        (status = 200, body = String, content_type = "text/vnd.graphviz"),
        (status = 200, body = String, content_type = "text/vnd.mermaid"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn workflow_dag(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(wid): ApiPath<String>,
    ApiQuery(q): ApiQuery<DagQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Reader)?;
    let wants_dot = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/vnd.graphviz"));
    let format = q.format.unwrap_or(if wants_dot {
        DagFormat::Dot
    } else {
        DagFormat::Json
    });
    let graph = load_graph(&state, &wid).await?;
    Ok(match format {
        DagFormat::Json => axum::Json(graph.to_json()).into_response(),
        DagFormat::Dot => text(graph.to_dot(), "text/vnd.graphviz; charset=utf-8"),
        DagFormat::Mermaid => text(graph.to_mermaid(), "text/vnd.mermaid; charset=utf-8"),
    })
}

fn text(body: String, content_type: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

async fn load_graph(state: &AppState, wid: &str) -> Result<WorkflowGraph, ApiError> {
    if state.store.get_workflow(wid).await?.is_none() {
        return Err(ApiError::not_found(format!("no workflow {wid}")));
    }
    let nodes = state.store.workflow_nodes(wid).await?;
    Ok(WorkflowGraph::from_nodes(Some(wid.to_string()), nodes))
}

/// Everything downstream of a token: nodes, agents, checkpoints (with reversibility and
/// expiry), irreversible checkpoints and depth.
#[utoipa::path(
    get, path = "/v1/ects/{jti}/blast-radius", tag = "workflows",
    params(("jti" = String, Path, description = "Token id"), BlastRadiusQuery),
    responses((status = 200, body = BlastRadius), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
async fn blast_radius(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(jti): ApiPath<String>,
    ApiQuery(q): ApiQuery<BlastRadiusQuery>,
) -> Result<axum::Json<BlastRadius>, ApiError> {
    caller.require(Role::Reader)?;
    let Some(record) = state.store.get_ect(&jti).await? else {
        return Err(ApiError::not_found(format!("no ECT with jti {jti}")));
    };
    let nodes = match &record.wid {
        Some(wid) => state.store.workflow_nodes(wid).await?,
        None => state.store.unscoped_nodes().await?,
    };
    let graph = WorkflowGraph::from_nodes(record.wid.clone(), nodes);
    let now = chrono::Utc::now().timestamp();
    graph
        .blast_radius(&jti, q.max_depth, now)
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::internal(format!(
                "ECT {jti} is stored but missing from its workflow graph"
            ))
        })
}
