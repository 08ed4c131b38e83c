//! `POST /v1/ects` (ingest, single or batch), `GET /v1/ects`, `GET /v1/ects/{jti}`.

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ledger::{Receipt, ReceiptSigner};
use super::problem::Problem;
use super::{ApiError, ApiPath, ApiQuery, AppState, Caller};
use crate::config::Role;
use crate::ect::Rejection;
use crate::ledger::{Atomicity, IngestResult, IngestStatus};
use crate::store::{EctFilter, EctRecord};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest, list_ects))
        .routes(routes!(get_ect))
}

/// Answer to a single-token ingest.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestAnswer {
    pub jti: String,
    pub status: IngestStatus,
    /// The token's entry in the ledger's hash chain, signed by Unwind (the original entry for
    /// a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// Body of a batch ingest.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Compact ECTs; parents may come after their children.
    pub tokens: Vec<String>,
}

/// Answer to a batch ingest: one result per token, in input order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    pub results: Vec<BatchItem>,
    /// Compact JWS (coordinator key, `typ` `unwind-batch-receipt+jwt`) over
    /// `{"iss","iat","entries":[{"jti","seq","chain_hash"}]}`: every created or duplicate item's
    /// chain entry, in input order. Absent when every token was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_receipt: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    pub index: usize,
    pub jti: Option<String>,
    /// `created`, `duplicate` or `rejected`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
    /// The item's chain entry (`seq`, `chain_hash`; signed by `batch_receipt`); absent for a
    /// rejected token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemError {
    pub code: String,
    pub detail: String,
}

/// One stored token.
#[derive(Debug, Serialize, ToSchema)]
pub struct EctView {
    pub jti: String,
    pub wid: Option<String>,
    pub iss: String,
    pub exec_act: String,
    /// Parent `jti`s (`par` in draft -00, `pred` in -01).
    pub par: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    /// The extension object, normalised (`ext` or `ect_ext`).
    #[schema(value_type = Object)]
    pub ext: Map<String, Value>,
    /// The claims as signed.
    #[schema(value_type = Object)]
    pub claims: Map<String, Value>,
    /// The compact JWS as received.
    pub token: String,
    /// When Unwind recorded it (RFC 3339).
    pub received_at: String,
}

impl From<EctRecord> for EctView {
    fn from(r: EctRecord) -> Self {
        Self {
            jti: r.jti,
            wid: r.wid,
            iss: r.iss,
            exec_act: r.exec_act,
            par: r.parents,
            iat: r.iat,
            exp: r.exp,
            ext: r.ext,
            claims: r.claims,
            token: r.token,
            received_at: super::rfc3339(r.received_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EctPage {
    pub items: Vec<EctView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListEctsQuery {
    pub wid: Option<String>,
    pub exec_act: Option<String>,
    pub iss: Option<String>,
    pub cursor: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<u32>,
}

/// Ingest one token (`application/jwt`) or a batch (`application/json`).
///
/// Operators need the `operator` role; agents may instead authenticate with a verifying
/// `Execution-Context` header, whose tokens are recorded too (before the body's).
#[utoipa::path(
    post, path = "/v1/ects", tag = "ledger",
    request_body(content(
        (String = "application/jwt"),
        (BatchRequest = "application/json"),
    )),
    responses(
        (status = 201, description = "Token recorded", body = IngestAnswer),
        (status = 200, description = "Already recorded (single) or batch results", body = BatchAnswer),
        (status = 400, description = "malformed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "unauthenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "jti_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "too_large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "unsupported_media_type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The token was refused; `code` says why", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("execution_context" = []))
)]
async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let context_tokens: Vec<String> = match &caller {
        Caller::Operator { .. } => {
            caller.require(Role::Operator)?;
            Vec::new()
        }
        Caller::Agent { tokens, .. } => tokens.iter().map(|t| t.token.clone()).collect(),
    };
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let single = match media.as_str() {
        "application/jwt" => true,
        "application/json" => false,
        _ => {
            return Err(ApiError::unsupported_media_type(
                "send one token as application/jwt or a batch as application/json {\"tokens\": [..]}",
            ));
        }
    };
    let limit = state.config.limits.max_body_bytes;
    let bytes = to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("the request body is over {limit} bytes")))?;

    let body_tokens: Vec<String> = if single {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("malformed", "the token is not UTF-8 text"))?;
        vec![text.trim().to_string()]
    } else {
        parse_batch(&bytes, state.config.limits.max_batch_tokens)?
    };

    let n_context = context_tokens.len();
    let mut all = context_tokens;
    all.extend(body_tokens);
    // The context is stored only with the body it came with (see `Atomicity`).
    let atomicity = Atomicity::WithContext {
        context: n_context,
        single_body: single,
    };
    let mut results = state.ledger.ingest_request(&all, atomicity).await?;
    let mut body_results = results.split_off(n_context);
    if let Some(rejection) = results
        .iter()
        .filter(|r| !r.withheld)
        .find_map(|r| r.outcome.as_ref().err())
    {
        return Err(ApiError::from(Rejection::new(
            rejection.code,
            format!(
                "Execution-Context token cannot be recorded: {}",
                rejection.detail
            ),
        )));
    }

    let signer = ReceiptSigner::new(&state);
    if single {
        let Some(IngestResult {
            jti,
            outcome,
            entry,
            ..
        }) = body_results.into_iter().next()
        else {
            return Err(ApiError::internal("ingest returned no result"));
        };
        let status = outcome.map_err(ApiError::from)?;
        let receipt = entry.as_ref().map(|e| signer.sign_one(e)).transpose()?;
        let code = match status {
            IngestStatus::Created => StatusCode::CREATED,
            IngestStatus::Duplicate => StatusCode::OK,
        };
        let answer = IngestAnswer {
            jti: jti.unwrap_or_default(),
            status,
            receipt,
        };
        return Ok((code, axum::Json(answer)).into_response());
    }
    let entries: Vec<_> = body_results.iter_mut().map(|r| r.entry.take()).collect();
    let (receipts, batch_receipt) = signer.sign_batch(&entries)?;
    let results = body_results
        .into_iter()
        .zip(receipts)
        .enumerate()
        .map(|(index, (r, receipt))| match r.outcome {
            Ok(status) => BatchItem {
                index,
                jti: r.jti,
                status: status.as_str().into(),
                error: None,
                receipt,
            },
            Err(rejection) => BatchItem {
                index,
                jti: r.jti,
                status: "rejected".into(),
                error: Some(ItemError {
                    code: rejection.code.as_str().into(),
                    detail: rejection.detail,
                }),
                receipt: None,
            },
        })
        .collect();
    Ok(axum::Json(BatchAnswer {
        results,
        batch_receipt,
    })
    .into_response())
}

/// The tokens of a batch body (`{"tokens": [..]}`): `malformed` when it is not JSON,
/// `invalid_request` when it is JSON of another shape, `too_large` over `max_tokens`.
pub fn parse_batch(bytes: &[u8], max_tokens: usize) -> Result<Vec<String>, ApiError> {
    let request: BatchRequest = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid_request(format!("batch body: {e}")),
        _ => ApiError::bad_request("malformed", format!("batch body is not JSON: {e}")),
    })?;
    if request.tokens.len() > max_tokens {
        return Err(ApiError::too_large(format!(
            "a batch holds at most {max_tokens} tokens; this one has {}",
            request.tokens.len()
        )));
    }
    Ok(request.tokens)
}

/// List recorded tokens, oldest first.
#[utoipa::path(
    get, path = "/v1/ects", tag = "ledger", params(ListEctsQuery),
    responses(
        (status = 200, body = EctPage),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_ects(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListEctsQuery>,
) -> Result<axum::Json<EctPage>, ApiError> {
    caller.require(Role::Reader)?;
    let limit = super::page_limit(q.limit)?;
    let filter = EctFilter {
        wid: q.wid,
        exec_act: q.exec_act,
        iss: q.iss,
    };
    let page = state
        .store
        .list_ects(&filter, q.cursor.as_deref(), limit)
        .await?;
    Ok(axum::Json(EctPage {
        items: page.items.into_iter().map(EctView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One recorded token.
#[utoipa::path(
    get, path = "/v1/ects/{jti}", tag = "ledger",
    params(("jti" = String, Path, description = "Token id")),
    responses(
        (status = 200, body = EctView),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_ect(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(jti): ApiPath<String>,
) -> Result<axum::Json<EctView>, ApiError> {
    caller.require(Role::Reader)?;
    match state.store.get_ect(&jti).await? {
        Some(record) => Ok(axum::Json(record.into())),
        None => Err(ApiError::not_found(format!("no ECT with jti {jti}"))),
    }
}
