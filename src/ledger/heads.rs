//! Pinned heads: the chain's head, signed by Unwind, kept outside the database.
//!
//! A chain recomputed from the first edited entry onwards (with the new head written to
//! `ledger_head`) is consistent with itself; only a head saved earlier tells it apart. Every
//! `ledger.head_interval_s` the coordinator signs its head, appends it as one JSON line to
//! `<data_dir>/ledger-heads.jsonl` and hands it to its [`HeadSink`]s (the webhook event
//! `ledger.head`). `unwind verify --live --head FILE` then checks that the ledger still has
//! the pinned hash at the pinned position.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ect::{KeyError, SigningKey};
use crate::ledger::chain::ChainHead;
use crate::store::{Store, StoreError};

/// `typ` of a signed head (`GET /v1/ledger/head`, the heads file, the `ledger.head` event).
pub const HEAD_TYP: &str = "unwind-ledger-head+jwt";

/// The head of the chain with Unwind's signature over `{"iss","seq","chain_hash","count","iat"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub seq: i64,
    pub chain_hash: String,
    /// Entries in the chain (positions have no gaps: equal to `seq`).
    pub count: i64,
    /// When it was signed (Unix seconds).
    pub iat: i64,
    /// Compact JWS (coordinator key, `typ` [`HEAD_TYP`]).
    pub sig: String,
}

/// Signs `head` as Unwind (`iss`) at `iat`.
pub fn sign_head(
    key: &SigningKey,
    iss: &str,
    head: &ChainHead,
    iat: i64,
) -> Result<SignedHead, KeyError> {
    let claims: Map<String, Value> = match json!({
        "iss": iss,
        "seq": head.seq,
        "chain_hash": head.chain_hash,
        "count": head.seq,
        "iat": iat,
    }) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    Ok(SignedHead {
        seq: head.seq,
        chain_hash: head.chain_hash.clone(),
        count: head.seq,
        iat,
        sig: key.sign(&claims, HEAD_TYP)?,
    })
}

/// Where a pinned head goes besides the file (the webhook outbox).
#[async_trait::async_trait]
pub trait HeadSink: Send + Sync {
    async fn head_signed(&self, head: &SignedHead) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot sign the head: {0}")]
    Sign(#[from] KeyError),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot send the head: {0}")]
    Sink(String),
}

/// Signs and publishes the head periodically; one per process.
pub struct HeadPinner {
    store: Arc<dyn Store>,
    key: Arc<SigningKey>,
    iss: String,
    file: PathBuf,
    interval: Duration,
    sinks: Vec<Arc<dyn HeadSink>>,
}

impl HeadPinner {
    /// A pinner writing to `file` every `interval` (zero: never).
    pub fn new(
        store: Arc<dyn Store>,
        key: Arc<SigningKey>,
        iss: impl Into<String>,
        file: PathBuf,
        interval: Duration,
    ) -> Self {
        Self {
            store,
            key,
            iss: iss.into(),
            file,
            interval,
            sinks: Vec::new(),
        }
    }

    pub fn with_sink(mut self, sink: Arc<dyn HeadSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Signs the current head, appends it to the file, then hands it to the sinks.
    pub async fn pin_once(&self) -> Result<SignedHead, PinError> {
        let head = self.store.chain_head().await?;
        let signed = sign_head(&self.key, &self.iss, &head, chrono::Utc::now().timestamp())?;
        let mut line = serde_json::to_string(&signed).map_err(|e| PinError::Sink(e.to_string()))?;
        line.push('\n');
        self.append(line.as_bytes()).await?;
        for sink in &self.sinks {
            sink.head_signed(&signed).await.map_err(PinError::Sink)?;
        }
        Ok(signed)
    }

    async fn append(&self, line: &[u8]) -> Result<(), PinError> {
        use tokio::io::AsyncWriteExt;
        let failed = |source| PinError::File {
            path: self.file.display().to_string(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .await
            .map_err(failed)?;
        // One write of a whole line: a reader never sees half a head.
        file.write_all(line).await.map_err(failed)?;
        file.sync_data().await.map_err(failed)
    }

    /// Pins a head every interval (the first one interval after start) until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if self.interval.is_zero() {
            tracing::info!("ledger heads: not pinned (ledger.head_interval_s = 0)");
            return;
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.interval) => {},
            }
            tokio::select! {
                _ = &mut shutdown => return,
                result = self.pin_once() => match result {
                    Ok(head) => tracing::debug!(seq = head.seq, "ledger head pinned"),
                    Err(e) => tracing::warn!(error = %e, "ledger head: not pinned"),
                },
            }
        }
    }
}
