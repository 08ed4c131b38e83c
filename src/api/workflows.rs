//! `GET /v1/workflows`, `GET /v1/workflows/{wid}/dag`, `GET /v1/workflows/{wid}/export`,
//! `GET /v1/ects/{jti}/blast-radius`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::rollbacks::RollbackView;
use super::{ApiError, ApiPath, ApiQuery, AppState, Caller};
use crate::config::Role;
use crate::dag::{BlastRadius, DagJson, WorkflowGraph};
use crate::rollback::model::RollbackFilter;
use crate::store::{ChainEntry, EctFilter, EctRecord, Store, StoreError, WorkflowSummary};
use std::collections::HashMap;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workflows))
        .routes(routes!(workflow_dag))
        .routes(routes!(export_workflow))
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
    Ok(WorkflowGraph::build(Some(wid.to_string()), nodes).await)
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
    // Building and walking a large workflow is CPU work: off the runtime's workers.
    let wid = record.wid.clone();
    let root = jti.clone();
    let radius = tokio::task::spawn_blocking(move || {
        let graph = WorkflowGraph::from_nodes(wid, nodes);
        graph.blast_radius(&root, q.max_depth, chrono::Utc::now().timestamp())
    })
    .await
    .map_err(|e| ApiError::internal(format!("blast radius: {e}")))?;
    radius.map(axum::Json).ok_or_else(|| {
        ApiError::internal(format!(
            "ECT {jti} is stored but missing from its workflow graph"
        ))
    })
}

/// `format` of the document `GET /v1/workflows/{wid}/export` answers and `unwind verify` reads.
pub const EXPORT_FORMAT: &str = "unwind-export/1";

/// Tokens (and rollbacks) read from the store per page while an export is written.
const EXPORT_PAGE: u32 = 1000;

/// Largest JWKS document fetched from a trusted issuer's `jwks_url` for an export.
const MAX_EXPORT_JWKS_BYTES: usize = 1024 * 1024;

/// A workflow's evidence in one document, for offline audit (`unwind verify`).
// The schema of the answer; the handler writes it as an `ExportHead` followed by the tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportDocument {
    /// Always `unwind-export/1`.
    pub format: String,
    pub wid: String,
    /// When the export was written (RFC 3339).
    pub exported_at: String,
    /// `iss` of the ECTs Unwind signs.
    pub coordinator_id: String,
    /// Public keys that verify the tokens: the trusted issuers' keys and Unwind's own (a JWKS).
    #[schema(value_type = Object)]
    pub keys: jsonwebtoken::jwk::JwkSet,
    /// Which `kid`s of `keys` each trusted issuer (id or `/*` pattern) and the coordinator own.
    pub issuers: Vec<ExportIssuer>,
    /// The workflow's rollbacks with their steps, oldest first.
    pub rollbacks: Vec<RollbackView>,
    /// Every token of the workflow in ledger order.
    pub tokens: Vec<ExportToken>,
}

/// One issuer entry of an export.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportIssuer {
    /// Issuer id, or a pattern ending in `/*`.
    pub id: String,
    pub kids: Vec<String>,
}

/// One token of an export.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportToken {
    pub jti: String,
    /// The compact JWS as received.
    pub token: String,
    /// When Unwind recorded it (RFC 3339).
    pub received_at: String,
    /// The token's entry in the ledger's hash chain (absent only if the store has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<ExportChainEntry>,
}

/// A token's hash-chain entry: `chain_hash = SHA-256(prev_hash || SHA-256(token))`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportChainEntry {
    pub seq: i64,
    pub prev_hash: String,
    pub chain_hash: String,
}

impl ExportToken {
    fn new(r: EctRecord, entry: Option<ChainEntry>) -> Self {
        Self {
            jti: r.jti,
            token: r.token,
            received_at: super::rfc3339(r.received_at),
            chain: entry.map(|e| ExportChainEntry {
                seq: e.seq,
                prev_hash: e.prev_hash,
                chain_hash: e.chain_hash,
            }),
        }
    }
}

/// Everything of an export but its tokens, which are streamed after it.
#[derive(Serialize)]
struct ExportHead<'a> {
    format: &'static str,
    wid: &'a str,
    exported_at: String,
    coordinator_id: &'a str,
    keys: jsonwebtoken::jwk::JwkSet,
    issuers: Vec<ExportIssuer>,
    rollbacks: Vec<RollbackView>,
}

/// A workflow's tokens, rollbacks and the public keys that verify them, as one JSON document
/// (`unwind-export/1`) for offline audit with `unwind verify`. The tokens are streamed page by
/// page, so a large workflow is never held in memory; the rollbacks are read first, so every
/// evidence token a listed rollback names is already in the ledger when the tokens are read.
#[utoipa::path(
    get, path = "/v1/workflows/{wid}/export", tag = "workflows",
    params(("wid" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, body = ExportDocument),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "a trusted issuer's JWKS could not be fetched", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn export_workflow(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(wid): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Reader)?;
    if state.store.get_workflow(&wid).await?.is_none() {
        return Err(ApiError::not_found(format!("no workflow {wid}")));
    }
    let rollbacks = workflow_rollbacks(state.store.as_ref(), &wid).await?;
    let (keys, issuers) = export_keys(&state).await?;
    let head = ExportHead {
        format: EXPORT_FORMAT,
        wid: &wid,
        exported_at: super::rfc3339(chrono::Utc::now()),
        coordinator_id: &state.config.coordinator_id,
        keys,
        issuers,
        rollbacks,
    };
    let mut head = serde_json::to_string(&head).map_err(ApiError::internal)?;
    // The head is an object: reopen it to append the token list.
    head.pop();
    head.push_str(",\"tokens\":[");
    let body = futures::stream::once(std::future::ready(Ok::<_, std::io::Error>(head)))
        .chain(token_pages(state.store.clone(), wid));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from_stream(body),
    )
        .into_response())
}

/// The rollbacks of a workflow with their steps, oldest first.
async fn workflow_rollbacks(store: &dyn Store, wid: &str) -> Result<Vec<RollbackView>, ApiError> {
    let filter = RollbackFilter {
        wid: Some(wid.to_string()),
        status: None,
    };
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_rollbacks(&filter, cursor.as_deref(), EXPORT_PAGE)
            .await?;
        for r in page.items {
            if let Some((record, steps)) = store.get_rollback(&r.rollback_id).await? {
                out.push(RollbackView::new(record, steps));
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(out),
        }
    }
}

/// The tokens of `wid` as the comma-separated body of a JSON array, one page per chunk, then
/// the closing `]}`. A store failure mid-stream ends the body with an error, so the client sees
/// a truncated transfer rather than a document that looks complete.
fn token_pages(
    store: std::sync::Arc<dyn Store>,
    wid: String,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    let filter = EctFilter {
        wid: Some(wid),
        ..EctFilter::default()
    };
    futures::stream::unfold(Some((None::<String>, true)), move |state| {
        let store = store.clone();
        let filter = filter.clone();
        async move {
            let (cursor, mut first) = state?;
            let page = match store
                .list_ects(&filter, cursor.as_deref(), EXPORT_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => return Some((Err(export_stopped(e)), None)),
            };
            let jtis: Vec<String> = page.items.iter().map(|r| r.jti.clone()).collect();
            let mut entries: HashMap<String, ChainEntry> = match store.chain_entries(&jtis).await {
                Ok(entries) => entries.into_iter().map(|e| (e.jti.clone(), e)).collect(),
                Err(e) => return Some((Err(export_stopped(e)), None)),
            };
            let mut chunk = String::new();
            for record in page.items {
                let entry = entries.remove(&record.jti);
                let item = match serde_json::to_string(&ExportToken::new(record, entry)) {
                    Ok(item) => item,
                    Err(e) => return Some((Err(std::io::Error::other(e)), None)),
                };
                if !first {
                    chunk.push(',');
                }
                first = false;
                chunk.push('\n');
                chunk.push_str(&item);
            }
            match page.next_cursor {
                Some(next) => Some((Ok(chunk), Some((Some(next), first)))),
                None => {
                    chunk.push_str("\n]}\n");
                    Some((Ok(chunk), None))
                }
            }
        }
    })
}

fn export_stopped(e: StoreError) -> std::io::Error {
    tracing::error!(error = %e, "export stopped: the store failed");
    std::io::Error::other(e.to_string())
}

/// Unwind's own public keys (those `/.well-known/jwks.json` serves) and every trusted issuer's,
/// each `kid` once, with the issuers that own them.
async fn export_keys(
    state: &AppState,
) -> Result<(jsonwebtoken::jwk::JwkSet, Vec<ExportIssuer>), ApiError> {
    let mut keys = jsonwebtoken::jwk::JwkSet { keys: Vec::new() };
    let mut issuers = Vec::new();
    let mut add = |id: &str, set: jsonwebtoken::jwk::JwkSet| {
        let mut kids = Vec::new();
        for jwk in set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if keys.find(&kid).is_none() {
                keys.keys.push(jwk);
            }
            kids.push(kid);
        }
        issuers.push(ExportIssuer {
            id: id.to_string(),
            kids,
        });
    };
    let stored = state.store.unretired_keys().await?;
    add(
        &state.config.coordinator_id,
        crate::service::coordinator_jwks(&state.signing_key, &stored),
    );
    let mut client: Option<reqwest::Client> = None;
    for issuer in &state.config.trust.issuers {
        let set = match (&issuer.jwks_file, &issuer.jwks_url) {
            (Some(path), _) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    ApiError::internal(format!("JWKS file {}: {e}", path.display()))
                })?;
                serde_json::from_str(&text)
                    .map_err(|e| ApiError::internal(format!("JWKS file {}: {e}", path.display())))?
            }
            (None, Some(url)) => {
                let http = match &client {
                    Some(c) => c.clone(),
                    None => {
                        let c = reqwest::Client::builder()
                            .timeout(crate::ect::trust::JWKS_FETCH_TIMEOUT)
                            .redirect(reqwest::redirect::Policy::none())
                            .build()
                            .map_err(ApiError::internal)?;
                        client = Some(c.clone());
                        c
                    }
                };
                fetch_jwks(&http, url).await.map_err(|why| {
                    ApiError::unavailable(format!(
                        "the JWKS of trusted issuer {} at {url} could not be fetched: {why}",
                        issuer.id
                    ))
                })?
            }
            (None, None) => continue,
        };
        add(&issuer.id, set);
    }
    Ok((keys, issuers))
}

async fn fetch_jwks(
    http: &reqwest::Client,
    url: &str,
) -> Result<jsonwebtoken::jwk::JwkSet, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP status {}", response.status()));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_EXPORT_JWKS_BYTES {
        return Err("JWKS too large".into());
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))
}
