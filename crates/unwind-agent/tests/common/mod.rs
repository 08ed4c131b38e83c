//! Shared helpers: keys, a coordinator that signs `rollback_start` ECTs, an agent served on
//! 127.0.0.1:0, a counting handler, and a verifier for the agent's own tokens.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use unwind_agent::store::now_unix;
use unwind_agent::{
    Agent, CheckpointCtx, CheckpointStore, CoordinatorKeys, HandlerError, RestoreOutcome,
    RollbackHandler, SnapshotKey, StoreOptions,
};
use unwind_ect::config::{TrustConfig, TrustIssuerConfig};
use unwind_ect::{KeyAlg, Profile, SigningKey, TrustStore, VerifiedEct, Verifier, VerifyPolicy};

pub const COORDINATOR: &str = "spiffe://unwind.local/coordinator";
pub const AGENT: &str = "spiffe://example.com/agent/b";
pub const WID: &str = "9b0c8a2e-2f0e-4f6b-9d43-0a1c6c8e1f00";
pub const PREPARE: &str = "/.well-known/cascade/rollback/prepare";
pub const EXECUTE: &str = "/.well-known/cascade/rollback";

pub fn key() -> SigningKey {
    SigningKey::generate(KeyAlg::ES256).unwrap()
}

pub fn rollback_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

/// A coordinator `rollback_start` ECT, with `edit` applied to its claims (`null` removes).
pub fn rollback_start_with(
    signer: &SigningKey,
    iss: &str,
    aud: &[&str],
    rollback_id: &str,
    edit: Value,
) -> String {
    let now = now_unix();
    let mut claims: Map<String, Value> = json!({
        "iss": iss,
        "aud": aud,
        "iat": now,
        "exp": now + 600,
        "jti": uuid::Uuid::new_v4().to_string(),
        "wid": WID,
        "exec_act": "rollback_start",
        "par": [],
        "ext": {"cascade.rollback_id": rollback_id, "cascade.scope": "sub_dag"},
    })
    .as_object()
    .unwrap()
    .clone();
    for (k, v) in edit.as_object().unwrap() {
        if v.is_null() {
            claims.remove(k);
        } else {
            claims.insert(k.clone(), v.clone());
        }
    }
    signer.sign_ect(&claims, Profile::Draft00).unwrap()
}

pub fn rollback_start(coord: &SigningKey, rollback_id: &str) -> String {
    rollback_start_with(
        coord,
        COORDINATOR,
        &[COORDINATOR, AGENT],
        rollback_id,
        json!({}),
    )
}

/// Counts restores; optionally slow, so concurrent duplicates overlap with it.
#[derive(Default)]
pub struct CountingHandler {
    pub restores: AtomicUsize,
    pub prepares: AtomicUsize,
    pub delay_ms: u64,
}

#[unwind_agent::async_trait]
impl RollbackHandler for CountingHandler {
    async fn prepare(&self, _ctx: &CheckpointCtx) -> unwind_agent::PrepareDecision {
        self.prepares.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        unwind_agent::PrepareDecision::Prepared
    }

    async fn restore(
        &self,
        _ctx: &CheckpointCtx,
        snapshot: Vec<u8>,
    ) -> Result<RestoreOutcome, HandlerError> {
        self.restores.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        Ok(RestoreOutcome::completed().with_hashes(
            Some("before".into()),
            Some(unwind_agent::out_hash(&snapshot)),
        ))
    }
}

pub struct Fixture {
    pub coord: SigningKey,
    pub agent_key: SigningKey,
    pub snapshot_key: SnapshotKey,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            coord: key(),
            agent_key: key(),
            snapshot_key: SnapshotKey::generate().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions::in_dir(self.dir.path(), AGENT, self.snapshot_key.clone())
    }

    pub async fn store(&self) -> CheckpointStore {
        CheckpointStore::open(self.store_options()).await.unwrap()
    }

    pub fn agent(&self, store: CheckpointStore, handler: Arc<dyn RollbackHandler>) -> Agent {
        Agent::builder()
            .id(AGENT)
            .signing_key(self.agent_key.clone())
            .coordinator(
                COORDINATOR,
                CoordinatorKeys::Static(self.coord.public_jwks()),
            )
            .store(store)
            .handler(handler)
            .build()
            .unwrap()
    }

    pub fn rollback_start(&self, rollback_id: &str) -> String {
        rollback_start(&self.coord, rollback_id)
    }

    /// A verifier trusting this agent's key, allowing http rollback URIs on 127.0.0.1.
    pub fn agent_verifier(&self) -> Verifier {
        agent_verifier(self.dir.path(), &self.agent_key)
    }
}

pub fn agent_verifier(dir: &Path, agent_key: &SigningKey) -> Verifier {
    let path = dir.join(format!("agent-{}.jwks.json", agent_key.kid()));
    std::fs::write(
        &path,
        serde_json::to_string(&agent_key.public_jwks()).unwrap(),
    )
    .unwrap();
    let trust = TrustStore::from_config(&TrustConfig {
        issuers: vec![TrustIssuerConfig {
            id: AGENT.into(),
            jwks_file: Some(path),
            rollback_hosts: vec!["127.0.0.1".into()],
            allow_http: true,
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap();
    Verifier::new(Arc::new(trust), VerifyPolicy::default())
}

pub async fn verify(verifier: &Verifier, token: &str) -> VerifiedEct {
    verifier
        .verify(token, now_unix())
        .await
        .unwrap_or_else(|e| panic!("agent ECT does not verify: {e}"))
}

/// Serves `router` on 127.0.0.1:0; returns the base URL and the server task.
pub async fn serve(router: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// POSTs `body` with `Execution-Context: ec` (none when `None`); returns (status, JSON).
pub async fn post(base: &str, path: &str, ec: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = client().post(format!("{base}{path}")).json(&body);
    if let Some(ec) = ec {
        req = req.header("Execution-Context", ec);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

pub async fn get(base: &str, path: &str, ec: Option<&str>) -> (u16, Value) {
    let mut req = client().get(format!("{base}{path}"));
    if let Some(ec) = ec {
        req = req.header("Execution-Context", ec);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

pub fn prepare_body(rollback_id: &str, checkpoint_id: &str) -> Value {
    json!({"rollback_id": rollback_id, "checkpoint_id": checkpoint_id, "scope": "sub_dag"})
}

pub fn execute_body(rollback_id: &str, checkpoint_id: &str) -> Value {
    json!({"rollback_id": rollback_id, "checkpoint_id": checkpoint_id, "phase": "execute"})
}
