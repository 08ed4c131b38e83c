//! The demo's five reference agents: each a real HTTP server on loopback built from the
//! `unwind-agent` library, with its own signing key and encrypted checkpoint store, trusting
//! only the demo's coordinator. They record their work by posting their own ECTs to Unwind with
//! their token in `Execution-Context`, as any agent would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::watch;
use unwind_agent::reference::{self, Behaviour, Controls, ReferenceHandler};
use unwind_agent::{Agent, CheckpointStore, CoordinatorKeys, SnapshotKey, StoreOptions};

use crate::cli::CliError;
use crate::config::TrustIssuerConfig;
use crate::ect::{KeyAlg, SigningKey};

/// Trust domain of the demo agents' SPIFFE ids.
pub const AGENT_PREFIX: &str = "spiffe://demo.unwind.local/agent/";

/// The agents of the network change, in workflow order.
pub const NAMES: [&str; 5] = ["planner", "approver", "router", "dns", "notify"];

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("{what}: {e}"))
}

/// An agent's identity, made before the coordinator starts so that its configuration can
/// trust the agent's public key.
pub struct Identity {
    pub name: &'static str,
    pub id: String,
    key: SigningKey,
    dir: PathBuf,
    /// The public JWKS file the coordinator's `[[trust.issuers]]` entry names.
    pub jwks_file: PathBuf,
}

impl Identity {
    /// Generates the key and writes the public JWKS under `dir/<name>/`.
    pub async fn create(name: &'static str, dir: &Path) -> Result<Self, CliError> {
        let dir = dir.join(name);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| failed(&format!("creating {}", dir.display()), e))?;
        let key = SigningKey::generate(KeyAlg::ES256).map_err(|e| failed("agent key", e))?;
        let jwks_file = dir.join("jwks.json");
        let jwks = serde_json::to_string_pretty(&key.public_jwks())
            .map_err(|e| failed("agent JWKS", e))?;
        tokio::fs::write(&jwks_file, jwks)
            .await
            .map_err(|e| failed(&format!("writing {}", jwks_file.display()), e))?;
        Ok(Self {
            name,
            id: format!("{AGENT_PREFIX}{name}"),
            key,
            dir,
            jwks_file,
        })
    }

    /// The coordinator's trust entry for this agent: its own key only, rollback endpoints on
    /// loopback only, over plain http (loopback never leaves the machine).
    pub fn trust_entry(&self) -> TrustIssuerConfig {
        TrustIssuerConfig {
            id: self.id.clone(),
            jwks_file: Some(self.jwks_file.clone()),
            jwks_url: None,
            rollback_hosts: vec!["127.0.0.1".into()],
            allow_http: true,
            ..Default::default()
        }
    }
}

/// A running demo agent.
pub struct DemoAgent {
    pub name: &'static str,
    pub agent: Agent,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub rollback_uri: String,
    controls: Arc<Controls>,
}

impl DemoAgent {
    pub fn id(&self) -> &str {
        self.agent.id()
    }

    /// Signs an action ECT; returns (jti, token).
    pub fn action(
        &self,
        exec_act: &str,
        wid: &str,
        parents: &[String],
        ext: Map<String, Value>,
    ) -> Result<(String, String), CliError> {
        let token = self
            .agent
            .action_ect(exec_act, Some(wid), parents, ext)
            .map_err(|e| failed(exec_act, e))?;
        Ok((jti_of(&token)?, token))
    }

    /// Signs an error ECT (`cascade.error: true`); returns (jti, token).
    pub fn error(
        &self,
        exec_act: &str,
        reason: &str,
        wid: &str,
        parents: &[String],
    ) -> Result<(String, String), CliError> {
        let token = self
            .agent
            .error_ect(exec_act, reason, Some(wid), parents, Map::new())
            .map_err(|e| failed(exec_act, e))?;
        Ok((jti_of(&token)?, token))
    }

    /// Records `state` as an encrypted snapshot and signs its checkpoint ECT; an irreversible
    /// checkpoint names no rollback endpoint. Returns (jti, token).
    pub async fn checkpoint(
        &self,
        state: &[u8],
        target: &str,
        reversible: bool,
        wid: &str,
        parents: &[String],
    ) -> Result<(String, String), CliError> {
        let uri = reversible.then_some(self.rollback_uri.as_str());
        let (checkpoint, token) = self
            .agent
            .checkpoint(state, 3600, Some(target), reversible, wid, parents, uri)
            .await
            .map_err(|e| failed(&format!("{} checkpoint", self.name), e))?;
        Ok((checkpoint.jti, token))
    }

    /// Programs the reference agent's answers through its `/_test/behaviour` control.
    pub async fn behave(&self, http: &reqwest::Client, spec: &str) -> Result<(), CliError> {
        let url = format!("{}/_test/behaviour", self.base);
        let response = http
            .post(&url)
            .json(&serde_json::json!({ "behaviour": spec }))
            .send()
            .await
            .map_err(|e| failed(&url, e))?;
        if !response.status().is_success() {
            return Err(CliError::Failed(format!(
                "{url}: HTTP {}",
                response.status().as_u16()
            )));
        }
        Ok(())
    }

    /// Restores the agent ran, as counted by the reference handler.
    pub fn restores(&self) -> usize {
        self.controls.calls()["executed"]
            .as_array()
            .map_or(0, Vec::len)
    }
}

fn jti_of(token: &str) -> Result<String, CliError> {
    let (_, claims) = crate::ect::jws::decode_unverified(token).map_err(|e| failed("ECT", e))?;
    claims["jti"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| CliError::Failed("an ECT without jti".into()))
}

/// The running agents and their server tasks.
pub struct Fleet {
    pub agents: Vec<DemoAgent>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Starts one server per identity on 127.0.0.1, each trusting only `coordinator_id` with
    /// the keys the coordinator serves; all stop when `stop` turns true.
    pub async fn start(
        identities: Vec<Identity>,
        coordinator_id: &str,
        coordinator_jwks: jsonwebtoken::jwk::JwkSet,
        stop: &watch::Receiver<bool>,
    ) -> Result<Self, CliError> {
        let mut agents = Vec::new();
        let mut tasks = Vec::new();
        for identity in identities {
            let snapshot_key = SnapshotKey::generate().map_err(|e| failed("snapshot key", e))?;
            let store = CheckpointStore::open(StoreOptions::in_dir(
                &identity.dir,
                identity.id.clone(),
                snapshot_key,
            ))
            .await
            .map_err(|e| failed(&format!("{} store", identity.name), e))?;
            let controls = Controls::new(Behaviour::default());
            let agent = Agent::builder()
                .id(&identity.id)
                .signing_key(identity.key)
                .coordinator(
                    coordinator_id,
                    CoordinatorKeys::Static(coordinator_jwks.clone()),
                )
                .store(store)
                .handler(Arc::new(ReferenceHandler::new(controls.clone())))
                .build()
                .map_err(|e| failed(identity.name, e))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| failed(&format!("{} listener", identity.name), e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| failed(identity.name, e))?;
            let base = format!("http://{addr}");
            // Test controls on: the demo programs the router's failure over HTTP.
            let app = reference::router(&agent, controls.clone(), true);
            let mut rx = stop.clone();
            tasks.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await;
            }));
            agents.push(DemoAgent {
                name: identity.name,
                rollback_uri: format!("{base}{}", unwind_agent::http::ROLLBACK_PATH),
                base,
                agent,
                controls,
            });
        }
        Ok(Self { agents, tasks })
    }

    pub fn get(&self, name: &str) -> Result<&DemoAgent, CliError> {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| CliError::Failed(format!("no demo agent {name}")))
    }

    /// Waits for the servers to finish (after the stop signal) and closes the stores.
    pub async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        for a in &self.agents {
            a.agent.store().close().await;
        }
    }
}
