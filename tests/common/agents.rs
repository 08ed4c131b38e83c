//! Agents for rollback tests: real HTTP servers on 127.0.0.1 built from the `unwind-agent`
//! crate (the reference handler, with programmable behaviour and a log of when restores ran),
//! and the requests and polls the rollback tests share.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use unwind::config::Config;
use unwind::ect::SigningKey;
use unwind_agent::reference::{self, Behaviour, Controls, ReferenceHandler};
use unwind_agent::{
    Agent, AgentBuilder, CheckpointCtx, CheckpointStore, CoordinatorKeys, HandlerError,
    PrepareDecision, RestoreOutcome, RollbackHandler, SnapshotKey, StoreOptions,
};

use super::server::*;

/// Restores seen by the agents: (agent, "start" | "end", checkpoint id, when).
pub type Log = Arc<Mutex<Vec<(String, &'static str, String, Instant)>>>;

/// The reference handler, with a restore delay and a log of when restores ran.
pub struct Timed {
    pub name: String,
    pub inner: ReferenceHandler,
    pub log: Log,
    pub delay: Duration,
}

#[unwind_agent::async_trait]
impl RollbackHandler for Timed {
    async fn prepare(&self, ctx: &CheckpointCtx) -> PrepareDecision {
        self.inner.prepare(ctx).await
    }

    async fn restore(
        &self,
        ctx: &CheckpointCtx,
        snapshot: Vec<u8>,
    ) -> Result<RestoreOutcome, HandlerError> {
        let jti = ctx.checkpoint.jti.clone();
        self.log
            .lock()
            .unwrap()
            .push((self.name.clone(), "start", jti.clone(), Instant::now()));
        tokio::time::sleep(self.delay).await;
        let out = self.inner.restore(ctx, snapshot).await;
        self.log
            .lock()
            .unwrap()
            .push((self.name.clone(), "end", jti, Instant::now()));
        out
    }

    async fn compensate(&self, ctx: &CheckpointCtx) -> Result<RestoreOutcome, HandlerError> {
        self.inner.compensate(ctx).await
    }
}

/// An agent serving the rollback protocol on 127.0.0.1. `controls` is whatever the test steers
/// or watches its handler with (the reference handler's [`Controls`] by default).
pub struct TestAgent<C = Arc<Controls>> {
    pub agent: Agent,
    pub uri: String,
    pub controls: C,
    pub task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// The identity a test agent signs with and the coordinator it trusts.
pub struct AgentTrust<'a> {
    pub key: &'a SigningKey,
    pub coordinator_id: &'a str,
    pub coordinator_jwks: jsonwebtoken::jwk::JwkSet,
}

/// Serves agent `agent/<name>` on 127.0.0.1 with `handler`; `routes` makes its HTTP routes.
pub async fn serve_agent<C>(
    name: &str,
    trust: AgentTrust<'_>,
    handler: Arc<dyn RollbackHandler>,
    controls: C,
    routes: impl FnOnce(&Agent, &C) -> axum::Router,
) -> TestAgent<C> {
    serve_agent_with(name, trust, handler, controls, routes, |b| b).await
}

/// Like [`serve_agent`], with the agent's builder adjusted by `build` (e.g. its clock).
pub async fn serve_agent_with<C>(
    name: &str,
    trust: AgentTrust<'_>,
    handler: Arc<dyn RollbackHandler>,
    controls: C,
    routes: impl FnOnce(&Agent, &C) -> axum::Router,
    build: impl FnOnce(AgentBuilder) -> AgentBuilder,
) -> TestAgent<C> {
    let dir = tempfile::tempdir().unwrap();
    let id = format!("{AGENT_PREFIX}{name}");
    let store = CheckpointStore::open(StoreOptions::in_dir(
        dir.path(),
        id.clone(),
        SnapshotKey::generate().unwrap(),
    ))
    .await
    .unwrap();
    let agent = build(Agent::builder())
        .id(&id)
        .signing_key(trust.key.clone())
        .coordinator(
            trust.coordinator_id,
            CoordinatorKeys::Static(trust.coordinator_jwks),
        )
        .store(store)
        .handler(handler)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!(
        "http://{}/.well-known/cascade/rollback",
        listener.local_addr().unwrap()
    );
    let router = routes(&agent, &controls);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    TestAgent {
        agent,
        uri,
        controls,
        task,
        _dir: dir,
    }
}

/// Fast polling, with call timeouts and step deadlines no healthy agent comes near, even on a
/// loaded two-core machine: a call that times out counts against the agent's circuit breaker,
/// whose cooldown then outlasts the test. For tests that are not about timeouts.
pub fn short(c: &mut Config) {
    c.rollback.agent_timeout_ms = 10_000;
    c.rollback.step_deadline_s = 20;
    c.rollback.poll_ms = 100;
}

/// For tests about deadlines (an agent that hangs, is stopped or keeps failing): calls time out
/// after 1 s and steps give up after 3 s, well within [`wait_for`]'s patience.
pub fn deadlines(c: &mut Config) {
    short(c);
    c.rollback.agent_timeout_ms = 1000;
    c.rollback.step_deadline_s = 3;
}

/// The public keys the coordinator at `base` serves, as its agents trust them.
pub async fn served_jwks(client: &reqwest::Client, base: &str) -> jsonwebtoken::jwk::JwkSet {
    client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Checks that `token` verifies against the coordinator's served keys, addressed to it.
pub async fn assert_coordinator_signed(s: &TestServer, token: &str) {
    let jwks = served_jwks(&s.client, &s.base).await;
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[&s.coordinator_id]);
    if let Err(e) = jsonwebtoken::decode::<Value>(token, &key, &validation) {
        panic!(
            "{}: a coordinator token does not verify: {e}: {token}",
            s.name
        );
    }
}

/// An agent `agent/<name>` on 127.0.0.1 with the reference behaviour `behaviour` and restores
/// that take `delay_ms`.
pub async fn start_agent(
    s: &TestServer,
    name: &str,
    behaviour: &str,
    delay_ms: u64,
    log: &Log,
) -> TestAgent {
    start_agent_with(s, name, behaviour, delay_ms, log, |b| b).await
}

/// Like [`start_agent`], with the agent's builder adjusted by `build`.
pub async fn start_agent_with(
    s: &TestServer,
    name: &str,
    behaviour: &str,
    delay_ms: u64,
    log: &Log,
    build: impl FnOnce(AgentBuilder) -> AgentBuilder,
) -> TestAgent {
    let controls = Controls::new(behaviour.parse::<Behaviour>().unwrap());
    let handler = Arc::new(Timed {
        name: name.to_string(),
        inner: ReferenceHandler::new(controls.clone()),
        log: log.clone(),
        delay: Duration::from_millis(delay_ms),
    });
    let trust = AgentTrust {
        key: &s.agent_key,
        coordinator_id: &s.coordinator_id,
        coordinator_jwks: served_jwks(&s.client, &s.base).await,
    };
    serve_agent_with(
        name,
        trust,
        handler,
        controls,
        |agent, controls| reference::router(agent, controls.clone(), false),
        build,
    )
    .await
}

impl<C> TestAgent<C> {
    pub async fn checkpoint_ttl(
        &self,
        wid: &str,
        parents: &[String],
        ttl: u64,
    ) -> (String, String) {
        self.checkpoint_with(wid, parents, ttl, &self.uri).await
    }

    pub async fn checkpoint(&self, wid: &str, parents: &[String]) -> (String, String) {
        self.checkpoint_ttl(wid, parents, 3600).await
    }

    /// A checkpoint whose rollback endpoint is `uri` (e.g. a fault proxy in front of the agent).
    pub async fn checkpoint_at(
        &self,
        wid: &str,
        parents: &[String],
        uri: &str,
    ) -> (String, String) {
        self.checkpoint_with(wid, parents, 3600, uri).await
    }

    async fn checkpoint_with(
        &self,
        wid: &str,
        parents: &[String],
        ttl: u64,
        uri: &str,
    ) -> (String, String) {
        let (cp, token) = self
            .agent
            .checkpoint(
                b"router config v1",
                ttl,
                Some("router-1"),
                true,
                wid,
                parents,
                Some(uri),
            )
            .await
            .unwrap();
        (cp.jti, token)
    }

    pub fn action(&self, wid: &str, exec_act: &str, parents: &[String]) -> (String, String) {
        let token = self
            .agent
            .action_ect(exec_act, Some(wid), parents, Map::new())
            .unwrap();
        let (_, claims) = unwind::ect::jws::decode_unverified(&token).unwrap();
        (claims["jti"].as_str().unwrap().to_string(), token)
    }
}

impl TestAgent {
    pub fn behave(&self, spec: &str) {
        self.controls.set_behaviour(spec.parse().unwrap());
    }

    /// Protocol calls received: (prepare, execute).
    pub fn calls(&self) -> (u64, u64) {
        let c = self.controls.calls();
        (
            c["prepare"].as_u64().unwrap(),
            c["execute"].as_u64().unwrap(),
        )
    }
}

/// The seed figure, signed by its agents: Checkpoint A -> A1 -> Checkpoint B -> B1, B2; agent
/// a owns A and A1, agent b owns B, B1 and B2.
pub struct Figure {
    pub cp_a: String,
    pub a1: String,
    pub cp_b: String,
    pub b1: String,
    pub b2: String,
    /// The five tokens, parents first.
    pub tokens: Vec<String>,
}

pub async fn sign_figure<C>(a: &TestAgent<C>, b: &TestAgent<C>, wid: &str) -> Figure {
    let (cp_a, t_a) = a.checkpoint(wid, &[]).await;
    let (a1, t_a1) = a.action(wid, "reconfigure_router", std::slice::from_ref(&cp_a));
    let (cp_b, t_b) = b.checkpoint(wid, std::slice::from_ref(&a1)).await;
    let (b1, t_b1) = b.action(wid, "update_dns", std::slice::from_ref(&cp_b));
    let (b2, t_b2) = b.action(wid, "notify", std::slice::from_ref(&cp_b));
    Figure {
        cp_a,
        a1,
        cp_b,
        b1,
        b2,
        tokens: vec![t_a, t_a1, t_b, t_b1, t_b2],
    }
}

/// Signs and ingests the seed figure. Returns (A, B, B1).
pub async fn seed_figure(
    s: &TestServer,
    a: &TestAgent,
    b: &TestAgent,
    wid: &str,
) -> (String, String, String) {
    let figure = sign_figure(a, b, wid).await;
    s.ingest_ok(&figure.tokens).await;
    (figure.cp_a, figure.cp_b, figure.b1)
}

pub async fn request(s: &TestServer, body: Value) -> reqwest::Response {
    s.client
        .post(s.url("/v1/rollbacks"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Requests a rollback that must be accepted; returns its id.
pub async fn accepted(s: &TestServer, body: Value) -> String {
    let r = request(s, body).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{}: {body}", s.name);
    body["rollback_id"].as_str().unwrap().to_string()
}

pub async fn decide(s: &TestServer, id: &str, decision: &str) -> reqwest::Response {
    s.client
        .post(s.url(&format!("/v1/rollbacks/{id}/decision")))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({ "decision": decision }))
        .send()
        .await
        .unwrap()
}

pub const TERMINAL: &[&str] = &["completed", "partial", "failed", "aborted", "superseded"];

/// How long [`wait_for`] waits. It returns as soon as the state is reached, so this costs time
/// only when a test fails; a wide rollback on a loaded two-core machine (the test process runs
/// the service and every agent on one thread) takes well over 30 s.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// Polls the rollback until it reaches one of `states`, for at most [`WAIT_LIMIT`].
pub async fn wait_for(s: &TestServer, id: &str, states: &[&str]) -> Value {
    let path = format!("/v1/rollbacks/{id}");
    poll_rollback(
        || async {
            let (status, body) = s.get_json(&path).await;
            assert_eq!(status, 200, "{body}");
            body
        },
        states,
        (WAIT_LIMIT, Duration::from_millis(50)),
        |body| format!("{}: stuck in {}: {body}", s.name, body["status"]),
    )
    .await
}

/// Reads the rollback resource with `get` until its status is one of `states`, every
/// `pace.1`; panics with `stuck(resource)` once `pace.0` has passed.
pub async fn poll_rollback<F: std::future::Future<Output = Value>>(
    get: impl Fn() -> F,
    states: &[&str],
    pace: (Duration, Duration),
    stuck: impl Fn(&Value) -> String,
) -> Value {
    let deadline = Instant::now() + pace.0;
    loop {
        let body = get().await;
        if states.contains(&body["status"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(Instant::now() < deadline, "{}", stuck(&body));
        tokio::time::sleep(pace.1).await;
    }
}

pub fn step(rollback: &Value, checkpoint: &str) -> Value {
    rollback["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["checkpoint_id"] == checkpoint)
        .unwrap_or_else(|| panic!("no step for {checkpoint}: {rollback}"))
        .clone()
}

pub async fn complete_status(s: &TestServer, rollback: &Value) -> Value {
    let jti = rollback["evidence"]["rollback_complete"]
        .as_str()
        .unwrap_or_else(|| panic!("no rollback_complete: {rollback}"));
    let (status, ect) = s.get_json(&format!("/v1/ects/{jti}")).await;
    assert_eq!(status, 200, "{ect}");
    ect["ext"]["cascade.status"].clone()
}

pub fn agent_id(name: &str) -> String {
    format!("{AGENT_PREFIX}{name}")
}

pub fn wid() -> String {
    uuid::Uuid::new_v4().to_string()
}
