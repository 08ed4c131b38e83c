//! Tamper evidence (assurance level L3): `GET /v1/ledger/head`, `GET /v1/ledger/proof/{jti}`,
//! and the receipts ingest answers carry. The chain itself is [`crate::ledger::chain`].
//!
//! Receipts and heads are compact JWS signed with the coordinator's key (the one
//! `/.well-known/jwks.json` serves), so a client can keep them as Unwind's signed word that an
//! entry had this position and hash at that time.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::IntoParams;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::Problem;
use super::{ApiError, ApiPath, ApiQuery, AppState, Caller};
use crate::config::Role;
use crate::ect::SigningKey;
use crate::ledger::chain::{self, ChainEntry};

/// `typ` of a signed receipt.
pub const RECEIPT_TYP: &str = "unwind-receipt+jwt";
/// `typ` of a batch's one signed receipt.
pub const BATCH_RECEIPT_TYP: &str = "unwind-batch-receipt+jwt";
pub use crate::ledger::heads::HEAD_TYP;
/// How a client recomputes an entry, as the proof states it.
pub const CHAIN_RULE: &str = "chain_hash = SHA-256(prev_hash || token_hash), over the raw 32-byte digests; token_hash = SHA-256(token); prev_hash of entry 1 = 32 zero bytes; hex";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(head))
        .routes(routes!(proof))
        .routes(routes!(entries))
}

/// Unwind's signed statement that a token is entry `seq` of its ledger's chain.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Receipt {
    pub seq: i64,
    pub chain_hash: String,
    /// Compact JWS (coordinator key, `typ` `unwind-receipt+jwt`) over
    /// `{"iss","jti","seq","chain_hash","iat"}`. Absent in a batch answer's items: the batch's
    /// `batch_receipt` signs them all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// Signs receipts for ingest results.
pub(super) struct ReceiptSigner {
    key: std::sync::Arc<SigningKey>,
    iss: String,
}

impl ReceiptSigner {
    pub(super) fn new(state: &AppState) -> Self {
        Self {
            key: state.signing_key.clone(),
            iss: state.config.coordinator_id.clone(),
        }
    }

    fn sign(&self, entry: &ChainEntry, iat: i64) -> Result<Receipt, ApiError> {
        let claims = object(json!({
            "iss": self.iss,
            "jti": entry.jti,
            "seq": entry.seq,
            "chain_hash": entry.chain_hash,
            "iat": iat,
        }));
        let sig = self
            .key
            .sign(&claims, RECEIPT_TYP)
            .map_err(ApiError::internal)?;
        Ok(Receipt {
            sig: Some(sig),
            ..unsigned(entry)
        })
    }

    /// One receipt for a token's entry, signed alone.
    pub(super) fn sign_one(&self, entry: &ChainEntry) -> Result<Receipt, ApiError> {
        self.sign(entry, chrono::Utc::now().timestamp())
    }

    /// One signature for a whole batch: a JWS over every entry (in input order), so a batch
    /// of 500 costs one signature, not 500. Each item's receipt then carries no `sig`.
    /// `None` when no token of the batch has an entry.
    pub(super) fn sign_batch(
        &self,
        entries: &[Option<ChainEntry>],
    ) -> Result<(Vec<Option<Receipt>>, Option<String>), ApiError> {
        let listed: Vec<Value> = entries
            .iter()
            .flatten()
            .map(|e| json!({"jti": e.jti, "seq": e.seq, "chain_hash": e.chain_hash}))
            .collect();
        let receipts = entries.iter().map(|e| e.as_ref().map(unsigned)).collect();
        if listed.is_empty() {
            return Ok((receipts, None));
        }
        let claims = object(json!({
            "iss": self.iss,
            "iat": chrono::Utc::now().timestamp(),
            "entries": listed,
        }));
        let sig = self
            .key
            .sign(&claims, BATCH_RECEIPT_TYP)
            .map_err(ApiError::internal)?;
        Ok((receipts, Some(sig)))
    }
}

fn unsigned(entry: &ChainEntry) -> Receipt {
    Receipt {
        seq: entry.seq,
        chain_hash: entry.chain_hash.clone(),
        sig: None,
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The newest entry of the chain, signed.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerHead {
    /// Position of the newest entry (0: empty ledger).
    pub seq: i64,
    /// Its chain hash (32 zero bytes in hex for an empty ledger).
    pub chain_hash: String,
    /// Entries in the chain (positions have no gaps: equal to `seq`).
    pub count: i64,
    /// Compact JWS (coordinator key, `typ` `unwind-ledger-head+jwt`) over
    /// `{"iss","seq","chain_hash","count","iat"}`.
    pub sig: String,
}

/// The head of the ledger's hash chain, signed by Unwind.
#[utoipa::path(
    get, path = "/v1/ledger/head", tag = "ledger",
    responses(
        (status = 200, body = LedgerHead),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn head(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<LedgerHead>, ApiError> {
    caller.require(Role::Reader)?;
    let head = state.store.chain_head().await?;
    let signed = crate::ledger::heads::sign_head(
        &state.signing_key,
        &state.config.coordinator_id,
        &head,
        chrono::Utc::now().timestamp(),
    )
    .map_err(ApiError::internal)?;
    Ok(axum::Json(LedgerHead {
        seq: signed.seq,
        chain_hash: signed.chain_hash,
        count: signed.count,
        sig: signed.sig,
    }))
}

/// One entry and everything needed to recompute it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerProof {
    pub jti: String,
    pub seq: i64,
    /// Chain hash of entry `seq - 1` (32 zero bytes in hex for entry 1).
    pub prev_hash: String,
    /// SHA-256 of `token`, hex.
    pub token_hash: String,
    pub chain_hash: String,
    /// The compact JWS as stored.
    pub token: String,
    /// How `chain_hash` follows from `prev_hash` and `token`.
    pub rule: String,
    /// Unwind's signed receipt for the entry.
    pub receipt: Receipt,
}

/// A token's entry in the hash chain, with what recomputes it.
#[utoipa::path(
    get, path = "/v1/ledger/proof/{jti}", tag = "ledger",
    params(("jti" = String, Path, description = "Token id")),
    responses(
        (status = 200, body = LedgerProof),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn proof(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(jti): ApiPath<String>,
) -> Result<axum::Json<LedgerProof>, ApiError> {
    caller.require(Role::Reader)?;
    let not_found = || ApiError::not_found(format!("no ledger entry for jti {jti}"));
    let entry = state
        .store
        .chain_entries(std::slice::from_ref(&jti))
        .await?
        .into_iter()
        .next()
        .ok_or_else(not_found)?;
    let record = state.store.get_ect(&jti).await?.ok_or_else(not_found)?;
    let receipt = ReceiptSigner::new(&state).sign_one(&entry)?;
    Ok(axum::Json(LedgerProof {
        token_hash: chain::token_hash(&record.token),
        jti: entry.jti,
        seq: entry.seq,
        prev_hash: entry.prev_hash,
        chain_hash: entry.chain_hash,
        token: record.token,
        rule: CHAIN_RULE.to_string(),
        receipt,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    /// Entries with `seq` greater than this (default 0: from the first).
    pub after: Option<i64>,
    /// 1..=1000, default 100.
    pub limit: Option<u32>,
}

/// One chain entry with its token, for a client that recomputes the whole chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntry {
    pub seq: i64,
    pub jti: String,
    pub prev_hash: String,
    pub chain_hash: String,
    /// The compact JWS as stored (`null` if its row is missing: a finding in itself).
    pub token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntryPage {
    pub items: Vec<LedgerEntry>,
    /// Pass as `after` for the next page; `null` after the last entry.
    pub next_after: Option<i64>,
}

/// The chain in order, a page at a time, with the tokens (`unwind verify --live` reads it).
#[utoipa::path(
    get, path = "/v1/ledger/entries", tag = "ledger",
    params(EntriesQuery),
    responses(
        (status = 200, body = LedgerEntryPage),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn entries(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> Result<axum::Json<LedgerEntryPage>, ApiError> {
    caller.require(Role::Reader)?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::invalid_request("after must be 0 or more"));
    }
    let limit = super::page_limit(q.limit)?;
    let rows = state.store.chain_range(after, limit).await?;
    let next_after = match rows.last() {
        Some((last, _)) if rows.len() == limit as usize => Some(last.seq),
        _ => None,
    };
    let items = rows
        .into_iter()
        .map(|(e, token)| LedgerEntry {
            seq: e.seq,
            jti: e.jti,
            prev_hash: e.prev_hash,
            chain_hash: e.chain_hash,
            token,
        })
        .collect();
    Ok(axum::Json(LedgerEntryPage { items, next_after }))
}
