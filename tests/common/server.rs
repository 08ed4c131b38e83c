//! A real Unwind server for black-box tests: bound to 127.0.0.1:0, on a fresh store of each
//! kind, trusting a set of test agents whose keys the test holds.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use unwind::config::{AuthTokenConfig, Config, Role, TrustIssuerConfig};
use unwind::ect::{KeyAlg, Profile, SigningKey};
use unwind::store::Store;

use super::TestStore;

/// Issuer pattern the test agents live under.
pub const AGENT_PREFIX: &str = "spiffe://example.com/agent/";
/// Issuer of a second trust entry, with its own key and rollback host.
pub const OTHER_ISSUER: &str = "spiffe://other.example/agent/x";
pub const READER_TOKEN: &str = "reader-token-0123456789";
pub const OPERATOR_TOKEN: &str = "operator-token-0123456789";

pub struct TestServer {
    pub name: &'static str,
    pub base: String,
    pub client: reqwest::Client,
    pub admin_token: String,
    pub store: Arc<dyn Store>,
    /// Signs for any `spiffe://example.com/agent/*` issuer.
    pub agent_key: SigningKey,
    /// Signs for `OTHER_ISSUER`.
    pub other_key: SigningKey,
    pub coordinator_id: String,
    pub dir: PathBuf,
    /// The configuration it was started with (a restarted worker uses it again).
    pub config: Config,
    task: JoinHandle<()>,
    worker: JoinHandle<()>,
    delivery: JoinHandle<()>,
    _store: TestStore,
    _tmp: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
        self.worker.abort();
        self.delivery.abort();
    }
}

/// One server per store kind (SQLite always, PostgreSQL when configured).
pub async fn servers() -> Vec<TestServer> {
    servers_with(|_| {}).await
}

/// Like [`servers`], with the configuration adjusted first.
pub async fn servers_with(adjust: impl Fn(&mut Config)) -> Vec<TestServer> {
    let mut out = Vec::new();
    for store in super::test_stores().await {
        out.push(start(store, &adjust).await);
    }
    out
}

/// One server on SQLite only (tests whose subject does not depend on the store, such as the
/// console in a browser).
pub async fn sqlite_server() -> TestServer {
    start(super::test_store(super::DbKind::Sqlite).await, &|_| {}).await
}

async fn start(test_store: TestStore, adjust: &impl Fn(&mut Config)) -> TestServer {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let agent_key = SigningKey::generate(KeyAlg::ES256).unwrap();
    let other_key = SigningKey::generate(KeyAlg::ES256).unwrap();
    let agents_jwks = dir.join("agents.jwks.json");
    std::fs::write(
        &agents_jwks,
        serde_json::to_string(&agent_key.public_jwks()).unwrap(),
    )
    .unwrap();
    let other_jwks = dir.join("other.jwks.json");
    std::fs::write(
        &other_jwks,
        serde_json::to_string(&other_key.public_jwks()).unwrap(),
    )
    .unwrap();

    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(test_store.url.clone()),
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.trust.issuers = vec![
        TrustIssuerConfig {
            id: format!("{AGENT_PREFIX}*"),
            jwks_file: Some(agents_jwks),
            rollback_hosts: vec![
                "127.0.0.1".into(),
                "localhost".into(),
                "agent.example".into(),
            ],
            allow_http: true,
            ..Default::default()
        },
        TrustIssuerConfig {
            id: OTHER_ISSUER.into(),
            jwks_file: Some(other_jwks),
            rollback_hosts: vec!["other.example".into()],
            allow_http: false,
            ..Default::default()
        },
    ];
    config.auth.tokens = vec![
        AuthTokenConfig {
            name: "viewer".into(),
            role: Role::Reader,
            sha256: unwind::ect::sha256_hex(READER_TOKEN.as_bytes()),
        },
        AuthTokenConfig {
            name: "ops".into(),
            role: Role::Operator,
            sha256: unwind::ect::sha256_hex(OPERATOR_TOKEN.as_bytes()),
        },
    ];
    adjust(&mut config);
    config.validate().unwrap();
    let coordinator_id = config.coordinator_id.clone();
    let admin_path = config.admin_token_path();

    let prepared = unwind::service::prepare(config.clone()).await.unwrap();
    let store = prepared.state.store.clone();
    let worker = tokio::spawn(
        prepared
            .coordinator
            .clone()
            .run(std::future::pending::<()>()),
    );
    let delivery = tokio::spawn(prepared.deliverer.clone().run(std::future::pending::<()>()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = unwind::api::router(prepared.state);
    let task = tokio::spawn(async move {
        let _ = unwind::service::serve(listener, app, std::future::pending()).await;
    });
    let admin_token = std::fs::read_to_string(admin_path)
        .unwrap()
        .trim()
        .to_string();
    TestServer {
        name: test_store.name,
        base,
        client: reqwest::Client::new(),
        admin_token,
        store,
        agent_key,
        other_key,
        coordinator_id,
        dir,
        config,
        task,
        worker,
        delivery,
        _store: test_store,
        _tmp: tmp,
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a valid -00 token from `agent/<agent>` in workflow `wid`, with `par` = `parents`.
pub fn claims(
    agent: &str,
    jti: &str,
    wid: &str,
    exec_act: &str,
    parents: &[&str],
) -> Map<String, Value> {
    let now = now();
    let v = json!({
        "iss": format!("{AGENT_PREFIX}{agent}"),
        "aud": ["spiffe://unwind.local/coordinator"],
        "iat": now - 10,
        "exp": now + 3600,
        "jti": jti,
        "wid": wid,
        "exec_act": exec_act,
        "par": parents,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Claims of a reversible checkpoint whose rollback endpoint is on an allowed host.
pub fn checkpoint_claims(
    agent: &str,
    jti: &str,
    wid: &str,
    parents: &[&str],
) -> Map<String, Value> {
    let mut c = claims(agent, jti, wid, "checkpoint", parents);
    c.insert(
        "ext".into(),
        json!({
            "cascade.reversible": true,
            "cascade.rollback_uri": "http://127.0.0.1:9/.well-known/cascade/rollback",
            "cascade.ttl": 3600,
            "cascade.target": "router-1",
        }),
    );
    c
}

impl TestServer {
    /// Stops serving and both workers, as a stopped process would; the database stays.
    pub fn stop(&self) {
        self.task.abort();
        self.worker.abort();
        self.delivery.abort();
    }

    /// Kills the rollback worker wherever it is (its agent calls in flight still reach the
    /// agents, as a crashed process's would) and starts a new one under another lease owner,
    /// which takes the rollbacks over once the dead worker's leases expire.
    pub async fn restart_worker(&mut self) {
        self.worker.abort();
        let prepared = unwind::service::prepare(self.config.clone()).await.unwrap();
        self.worker = tokio::spawn(
            prepared
                .coordinator
                .clone()
                .run(std::future::pending::<()>()),
        );
    }

    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        self.agent_key.sign_ect(claims, Profile::Draft00).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The URL of the database the server runs on.
    pub fn database_url(&self) -> &str {
        &self._store.url
    }

    /// POST one token as `application/jwt` with the operator token.
    pub async fn post_token(&self, token: &str) -> reqwest::Response {
        self.client
            .post(self.url("/v1/ects"))
            .bearer_auth(OPERATOR_TOKEN)
            .header("content-type", "application/jwt")
            .body(token.to_string())
            .send()
            .await
            .unwrap()
    }

    /// POST a batch with the operator token.
    pub async fn post_batch(&self, tokens: &[String]) -> reqwest::Response {
        self.client
            .post(self.url("/v1/ects"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({ "tokens": tokens }))
            .send()
            .await
            .unwrap()
    }

    /// GET with the reader token, returning status and JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(READER_TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Ingests tokens that must all be created.
    pub async fn ingest_ok(&self, tokens: &[String]) {
        assert_created(self.post_batch(tokens).await, self.name).await;
    }

    pub async fn count(&self) -> i64 {
        self.store.count_ects().await.unwrap()
    }
}

/// Asserts a batch ingest answered 200 with every token created.
pub async fn assert_created(response: reqwest::Response, context: &str) {
    assert_eq!(response.status(), 200, "{context}");
    let body: Value = response.json().await.unwrap();
    for item in body["results"].as_array().unwrap() {
        assert_eq!(item["status"], "created", "{context}: {item}");
    }
}

/// Asserts a problem+json answer with this status and code; returns the body.
pub async fn assert_problem(
    response: reqwest::Response,
    status: u16,
    code: &str,
    context: &str,
) -> Value {
    assert_eq!(response.status().as_u16(), status, "{context}: status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{context}: content-type {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{context}: {body}");
    assert_eq!(body["status"], status, "{context}: {body}");
    body
}

/// A second server (another replica) on the database of `first`; `first` keeps owning it.
pub async fn start_on_same_database(
    first: &TestServer,
    adjust: &impl Fn(&mut Config),
) -> TestServer {
    let shared = TestStore {
        name: first._store.name,
        kind: first._store.kind,
        url: first._store.url.clone(),
        store: first.store.clone(),
        _dir: None,
        _pg: None,
    };
    start(shared, adjust).await
}
