//! The coordinator's client to agents over real HTTP on 127.0.0.1: real `unwind-agent`
//! routers for the protocol's answers, small axum stubs for faults (5xx, redirects, 4xx,
//! garbage, hangs, refused connections, hosts the issuer may not name).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use unwind::agents::{
    AgentClient, AttemptReport, Backoff, CallError, CallOutcome, CallSettings, ExecuteResult,
    Final, PrepareAnswer, StepCall,
};
use unwind::config::{TrustConfig, TrustIssuerConfig};
use unwind::ect::{KeyAlg, Profile, SigningKey, TrustStore};
use unwind_agent::store::now_unix;
use unwind_agent::{
    Agent, CheckpointCtx, CoordinatorKeys, HandlerError, RestoreOutcome, RollbackHandler,
    SnapshotKey, StoreOptions,
};

const COORDINATOR: &str = "spiffe://unwind.local/coordinator";
/// May name rollback URIs on 127.0.0.1 over http.
const AGENT: &str = "spiffe://example.com/agent/b";
/// May name only `localhost`.
const OTHER: &str = "spiffe://example.com/agent/other";
const WID: &str = "9b0c8a2e-2f0e-4f6b-9d43-0a1c6c8e1f00";
const SNAPSHOT: &[u8] = b"bgp peers: 10.0.0.1, 10.0.0.2";
const ROLLBACK_PATH: &str = "/.well-known/cascade/rollback";
const MS: Duration = Duration::from_millis(1);

fn trust() -> Arc<TrustStore> {
    // JWKS URLs are fetched on first use only; the client never needs keys.
    let issuer = |id: &str, host: &str| TrustIssuerConfig {
        id: id.into(),
        jwks_url: Some("http://127.0.0.1:9/jwks".into()),
        rollback_hosts: vec![host.into()],
        allow_http: true,
        ..Default::default()
    };
    Arc::new(
        TrustStore::from_config(&TrustConfig {
            issuers: vec![issuer(AGENT, "127.0.0.1"), issuer(OTHER, "localhost")],
            ..Default::default()
        })
        .unwrap(),
    )
}

/// Short limits so faults resolve in tens of milliseconds.
fn fast_settings() -> CallSettings {
    CallSettings {
        timeout: MS * 100,
        backoff: Backoff {
            initial: MS * 20,
            max: MS * 80,
            jitter: 0.2,
        },
    }
}

fn client() -> AgentClient {
    AgentClient::new(trust(), fast_settings()).unwrap()
}

fn rollback_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

fn step<'a>(uri: &'a str, rid: &'a str, cp: &'a str, ec: &'a str) -> StepCall<'a> {
    StepCall {
        agent: AGENT,
        rollback_uri: uri,
        rollback_id: rid,
        checkpoint_id: cp,
        scope: "sub_dag",
        context: ec,
        wid: "wf",
        start_jti: "start",
    }
}

fn deadline_in(d: Duration) -> Instant {
    Instant::now() + d
}

/// Collects the attempt reports of a retrying call.
#[derive(Default)]
struct Reports(Vec<AttemptReport>);

impl Reports {
    fn record(&mut self) -> impl FnMut(&AttemptReport) + '_ {
        |r| self.0.push(r.clone())
    }
    fn attempts(&self) -> Vec<u32> {
        self.0.iter().map(|r| r.attempt).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// A real agent

struct Restorer;

#[unwind_agent::async_trait]
impl RollbackHandler for Restorer {
    async fn restore(
        &self,
        _ctx: &CheckpointCtx,
        snapshot: Vec<u8>,
    ) -> Result<RestoreOutcome, HandlerError> {
        Ok(RestoreOutcome::completed().with_hashes(
            Some("before".into()),
            Some(unwind_agent::out_hash(&snapshot)),
        ))
    }
}

struct RealAgent {
    coord: SigningKey,
    agent: Agent,
    store: unwind_agent::CheckpointStore,
    uri: String,
    _dir: tempfile::TempDir,
}

impl RealAgent {
    async fn start() -> Self {
        let coord = SigningKey::generate(KeyAlg::ES256).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = unwind_agent::CheckpointStore::open(StoreOptions::in_dir(
            dir.path(),
            AGENT,
            SnapshotKey::generate().unwrap(),
        ))
        .await
        .unwrap();
        let agent = Agent::builder()
            .id(AGENT)
            .signing_key(SigningKey::generate(KeyAlg::ES256).unwrap())
            .coordinator(COORDINATOR, CoordinatorKeys::Static(coord.public_jwks()))
            .store(store.clone())
            .handler(Arc::new(Restorer))
            .build()
            .unwrap();
        let base = serve(agent.router()).await;
        Self {
            coord,
            agent,
            store,
            uri: format!("{base}{ROLLBACK_PATH}"),
            _dir: dir,
        }
    }

    async fn checkpoint(&self, reversible: bool) -> String {
        let (cp, _) = self
            .agent
            .checkpoint(SNAPSHOT, 3600, None, reversible, WID, &[], Some(&self.uri))
            .await
            .unwrap();
        cp.jti
    }

    /// The coordinator's `rollback_start` for `rid`, signed by `key`.
    fn rollback_start_by(&self, key: &SigningKey, rid: &str) -> String {
        let now = now_unix();
        let claims: Map<String, Value> = json!({
            "iss": COORDINATOR,
            "aud": [COORDINATOR, AGENT],
            "iat": now,
            "exp": now + 600,
            "jti": uuid::Uuid::new_v4().to_string(),
            "wid": WID,
            "exec_act": "rollback_start",
            "par": [],
            "ext": {"cascade.rollback_id": rid, "cascade.scope": "sub_dag"},
        })
        .as_object()
        .unwrap()
        .clone();
        key.sign_ect(&claims, Profile::Draft00).unwrap()
    }

    fn rollback_start(&self, rid: &str) -> String {
        self.rollback_start_by(&self.coord, rid)
    }
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn real_agent_prepares_executes_and_repeats_the_same_answer() {
    let real = RealAgent::start().await;
    let cp = real.checkpoint(true).await;
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let call = step(&real.uri, &rid, &cp, &ec);
    let client = client();

    assert_eq!(
        client.prepare_once(&call).await,
        CallOutcome::Answer(PrepareAnswer::Prepared)
    );
    let mut reports = Reports::default();
    let prepared = client
        .prepare(&call, deadline_in(MS * 2000), reports.record())
        .await;
    assert_eq!(prepared, Final::Answer(PrepareAnswer::Prepared));
    assert_eq!(reports.0.len(), 1);
    assert_eq!(reports.0[0].error, None);

    let mut reports = Reports::default();
    let first = match client
        .execute(&call, deadline_in(MS * 2000), reports.record())
        .await
    {
        Final::Answer(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(reports.attempts(), vec![1]);
    assert_eq!(first.status, ExecuteResult::Completed);
    assert_eq!(first.state_hash_before.as_deref(), Some("before"));
    assert_eq!(
        first.state_hash_after.as_deref(),
        Some(unwind_agent::out_hash(SNAPSHOT).as_str())
    );
    assert!(
        first
            .ect
            .as_deref()
            .is_some_and(|t| t.split('.').count() == 3)
    );
    assert_eq!(first.raw["status"], "completed");

    // A retry (with a fresh token of the same rollback) gets the stored answer, same ECT.
    let ec2 = real.rollback_start(&rid);
    let again = match client.execute_once(&step(&real.uri, &rid, &cp, &ec2)).await {
        CallOutcome::Answer(a) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(again, first);
}

#[tokio::test]
async fn real_agent_cannot_prepare_irreversible_or_expired() {
    let real = RealAgent::start().await;
    let irreversible = real.checkpoint(false).await;
    // Recorded an hour ago with a one-minute TTL.
    let expired = real
        .store
        .record_at(SNAPSHOT, 60, None, true, now_unix() - 3600)
        .await
        .unwrap()
        .jti;
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let client = client();

    assert_eq!(
        client
            .prepare_once(&step(&real.uri, &rid, &irreversible, &ec))
            .await,
        CallOutcome::Answer(PrepareAnswer::CannotPrepare {
            reason: "irreversible".into(),
            ect: None
        })
    );
    match client
        .prepare(
            &step(&real.uri, &rid, &expired, &ec),
            deadline_in(MS * 2000),
            |_| {},
        )
        .await
    {
        Final::Answer(PrepareAnswer::CannotPrepare { reason, ect }) => {
            assert_eq!(reason, "checkpoint_expired");
            assert!(ect.is_some(), "the agent's signed error ECT is passed on");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn real_agent_refusing_the_context_is_final_with_its_ect() {
    let real = RealAgent::start().await;
    let cp = real.checkpoint(true).await;
    let rid = rollback_id();
    let stranger = SigningKey::generate(KeyAlg::ES256).unwrap();
    let forged = real.rollback_start_by(&stranger, &rid);
    let call = step(&real.uri, &rid, &cp, &forged);
    let client = client();

    match client.prepare_once(&call).await {
        CallOutcome::Answer(PrepareAnswer::CannotPrepare { reason, ect }) => {
            assert!(reason.starts_with("http 401: "), "{reason}");
            assert!(reason.contains("unauthenticated"), "{reason}");
            assert!(ect.is_some());
        }
        other => panic!("{other:?}"),
    }
    let mut reports = Reports::default();
    match client
        .execute(&call, deadline_in(MS * 2000), reports.record())
        .await
    {
        Final::Failed(e) => {
            assert_eq!(e.code, CallError::HTTP_4XX);
            assert_eq!(e.status, Some(401));
            assert!(e.body_ect.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reports.attempts(), vec![1], "a 4xx is not retried");
}

// ---------------------------------------------------------------------------------------------
// Stubs

#[derive(Clone)]
enum Reply {
    Json(u16, &'static str),
    Body(u16, String),
    Redirect(String),
    /// Sleeps, then answers `prepared`.
    Hang(Duration),
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    context: Option<String>,
    content_type: Option<String>,
    body: Value,
}

#[derive(Clone)]
struct Stub {
    script: Arc<Mutex<VecDeque<Reply>>>,
    /// Answer once the script is used up.
    then: Reply,
    seen: Arc<Mutex<Vec<Seen>>>,
    base: String,
}

impl Stub {
    async fn start(script: Vec<Reply>, then: Reply) -> Self {
        let mut stub = Self {
            script: Arc::new(Mutex::new(script.into())),
            then,
            seen: Arc::default(),
            base: String::new(),
        };
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(stub.clone());
        stub.base = serve(router).await;
        stub
    }

    fn uri(&self) -> String {
        format!("{}{ROLLBACK_PATH}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(stub): State<Stub>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    stub.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        context: header("execution-context"),
        content_type: header("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let reply = stub
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| stub.then.clone());
    let status = |s: u16| StatusCode::from_u16(s).unwrap();
    match reply {
        Reply::Json(s, body) => (
            status(s),
            [("content-type", "application/json")],
            body.to_owned(),
        )
            .into_response(),
        Reply::Body(s, body) => (status(s), body).into_response(),
        Reply::Redirect(location) => (
            StatusCode::FOUND,
            [("location", location)],
            r#"{"status":"prepared"}"#,
        )
            .into_response(),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                r#"{"status":"prepared"}"#,
            )
                .into_response()
        }
    }
}

const PREPARED: Reply = Reply::Json(200, r#"{"status":"prepared"}"#);
const COMPLETED: Reply = Reply::Json(200, r#"{"status":"completed","ect":"a.b.c"}"#);
const BOOM: Reply = Reply::Json(500, r#"{"code":"internal"}"#);

#[tokio::test]
async fn sends_the_context_header_and_bodies_of_the_protocol() {
    let stub = Stub::start(vec![PREPARED], COMPLETED).await;
    let client = client();
    let rid = rollback_id();
    // A trailing slash does not make `//prepare`.
    let uri = format!("{}/", stub.uri());
    let call = step(&uri, &rid, "cp-1", "h.p.s");
    assert!(matches!(
        client.prepare_once(&call).await,
        CallOutcome::Answer(PrepareAnswer::Prepared)
    ));
    assert!(matches!(
        client.execute_once(&call).await,
        CallOutcome::Answer(a) if a.status == ExecuteResult::Completed && a.ect.as_deref() == Some("a.b.c")
    ));
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, format!("{ROLLBACK_PATH}/prepare"));
    assert_eq!(seen[1].path, format!("{ROLLBACK_PATH}/"));
    for s in &seen {
        assert_eq!(s.query, None);
        assert_eq!(s.context.as_deref(), Some("h.p.s"));
        assert_eq!(s.content_type.as_deref(), Some("application/json"));
    }
    assert_eq!(
        seen[0].body,
        json!({"rollback_id": rid, "checkpoint_id": "cp-1", "scope": "sub_dag"})
    );
    assert_eq!(
        seen[1].body,
        json!({"rollback_id": rid, "checkpoint_id": "cp-1", "phase": "execute"})
    );

    // Without the trailing slash.
    let plain = Stub::start(vec![], PREPARED).await;
    let uri = plain.uri();
    client.prepare_once(&step(&uri, &rid, "cp-1", "t")).await;
    assert_eq!(plain.seen()[0].path, format!("{ROLLBACK_PATH}/prepare"));
}

fn assert_growing_delays(reports: &Reports) {
    let delays: Vec<Duration> = reports.0.iter().filter_map(|r| r.next_delay).collect();
    assert_eq!(delays.len(), 2, "{:?}", reports.0);
    assert!(delays[0] >= MS * 16 && delays[0] <= MS * 24, "{delays:?}");
    assert!(delays[1] >= MS * 32 && delays[1] <= MS * 48, "{delays:?}");
    assert!(delays[1] > delays[0]);
}

#[tokio::test]
async fn prepare_5xx_twice_then_prepared() {
    let stub = Stub::start(vec![BOOM, BOOM], PREPARED).await;
    let (rid, uri) = (rollback_id(), stub.uri());
    let mut reports = Reports::default();
    let result = client()
        .prepare(
            &step(&uri, &rid, "cp", "t"),
            deadline_in(MS * 3000),
            reports.record(),
        )
        .await;
    assert_eq!(result, Final::Answer(PrepareAnswer::Prepared));
    assert_eq!(reports.attempts(), vec![1, 2, 3]);
    for r in &reports.0[..2] {
        let e = r.error.as_ref().unwrap();
        assert_eq!((e.code, e.status), (CallError::HTTP_5XX, Some(500)));
    }
    assert_eq!(reports.0[2].error, None);
    assert_eq!(reports.0[2].next_delay, None);
    assert_growing_delays(&reports);
    let seen = stub.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body["rollback_id"] == rid.as_str()));
}

#[tokio::test]
async fn execute_5xx_twice_then_completed() {
    let stub = Stub::start(vec![BOOM, Reply::Json(503, "busy")], COMPLETED).await;
    let (rid, uri) = (rollback_id(), stub.uri());
    let mut reports = Reports::default();
    let result = client()
        .execute(
            &step(&uri, &rid, "cp", "t"),
            deadline_in(MS * 3000),
            reports.record(),
        )
        .await;
    assert!(
        matches!(&result, Final::Answer(a) if a.status == ExecuteResult::Completed),
        "{result:?}"
    );
    assert_eq!(reports.attempts(), vec![1, 2, 3]);
    assert_growing_delays(&reports);
    assert_eq!(stub.seen().len(), 3, "same rollback_id every time");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Stub::start(vec![], PREPARED).await;
    let stub = Stub::start(vec![], Reply::Redirect(target.uri())).await;
    let (rid, uri) = (rollback_id(), stub.uri());
    let call = step(&uri, &rid, "cp", "t");
    let client = client();
    let mut reports = Reports::default();
    match client
        .prepare(&call, deadline_in(MS * 2000), reports.record())
        .await
    {
        Final::Failed(e) => {
            assert_eq!((e.code, e.status), (CallError::REDIRECT, Some(302)));
            assert!(e.detail.contains(&target.uri()), "{}", e.detail);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reports.attempts(), vec![1]);
    match client.execute_once(&call).await {
        CallOutcome::Final(e) => assert_eq!(e.code, CallError::REDIRECT),
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.seen().len(), 2);
    assert!(target.seen().is_empty(), "the redirect target got nothing");
}

#[tokio::test]
async fn not_found_is_cannot_prepare_at_prepare_and_final_at_execute() {
    let stub = Stub::start(
        vec![],
        Reply::Json(
            404,
            r#"{"code":"not_found","detail":"no such checkpoint","ect":"e.r.r"}"#,
        ),
    )
    .await;
    let (rid, uri) = (rollback_id(), stub.uri());
    let call = step(&uri, &rid, "cp", "t");
    let client = client();
    let mut reports = Reports::default();
    match client
        .prepare(&call, deadline_in(MS * 2000), reports.record())
        .await
    {
        Final::Answer(PrepareAnswer::CannotPrepare { reason, ect }) => {
            assert!(reason.starts_with("http 404: "), "{reason}");
            assert!(reason.contains("no such checkpoint"), "{reason}");
            assert_eq!(ect.as_deref(), Some("e.r.r"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reports.attempts(), vec![1]);
    let mut reports = Reports::default();
    match client
        .execute(&call, deadline_in(MS * 2000), reports.record())
        .await
    {
        Final::Failed(e) => {
            assert_eq!((e.code, e.status), (CallError::HTTP_4XX, Some(404)));
            assert_eq!(e.body_ect.as_deref(), Some("e.r.r"));
            assert!(!e.counts_against_circuit());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reports.attempts(), vec![1]);
    assert_eq!(stub.seen().len(), 2);
}

#[tokio::test]
async fn unparseable_2xx_is_retried() {
    let huge = format!(
        r#"{{"status":"prepared","pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let stub = Stub::start(
        vec![
            Reply::Body(200, "<html>ok</html>".into()),
            Reply::Json(200, r#"{"status":"maybe"}"#),
            Reply::Body(200, huge),
        ],
        PREPARED,
    )
    .await;
    let (rid, uri) = (rollback_id(), stub.uri());
    let mut reports = Reports::default();
    let result = client()
        .prepare(
            &step(&uri, &rid, "cp", "t"),
            deadline_in(MS * 3000),
            reports.record(),
        )
        .await;
    assert_eq!(result, Final::Answer(PrepareAnswer::Prepared));
    assert_eq!(reports.attempts(), vec![1, 2, 3, 4]);
    for r in &reports.0[..3] {
        let e = r.error.as_ref().unwrap();
        assert_eq!(e.code, CallError::BAD_ANSWER, "{e:?}");
        assert!(e.counts_against_circuit());
    }
    assert!(
        reports.0[2]
            .error
            .as_ref()
            .unwrap()
            .detail
            .contains("larger")
    );

    let garbage = Stub::start(vec![], Reply::Body(200, "not json".into())).await;
    let uri = garbage.uri();
    match client().execute_once(&step(&uri, &rid, "cp", "t")).await {
        CallOutcome::Retryable(e) => assert_eq!(e.code, CallError::BAD_ANSWER),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn partial_maps_to_failed() {
    let stub = Stub::start(vec![], Reply::Json(200, r#"{"status":"partial"}"#)).await;
    let (rid, uri) = (rollback_id(), stub.uri());
    match client().execute_once(&step(&uri, &rid, "cp", "t")).await {
        CallOutcome::Answer(a) => {
            assert_eq!(a.status, ExecuteResult::Failed);
            assert_eq!(a.raw["status"], "partial");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_hanging_agent_times_out_until_the_deadline() {
    let stub = Stub::start(vec![], Reply::Hang(MS * 2000)).await;
    let (rid, uri) = (rollback_id(), stub.uri());
    let call = step(&uri, &rid, "cp", "t");
    let client = client();

    let started = Instant::now();
    match client.prepare_once(&call).await {
        CallOutcome::Retryable(e) => assert_eq!(e.code, CallError::TIMEOUT),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < MS * 1000, "{:?}", started.elapsed());

    let budget = MS * 400;
    let started = Instant::now();
    let mut reports = Reports::default();
    match client
        .execute(&call, started + budget, reports.record())
        .await
    {
        Final::DeadlinePassed(e) => assert_eq!(e.code, CallError::TIMEOUT),
        other => panic!("{other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < budget + MS * 150,
        "calls stop at the deadline: {elapsed:?}"
    );
    assert!(reports.0.len() >= 2, "{:?}", reports.0);
    assert_eq!(reports.0.last().unwrap().next_delay, None);
    assert!(
        reports
            .0
            .iter()
            .all(|r| r.error.as_ref().unwrap().code == CallError::TIMEOUT)
    );
}

#[tokio::test]
async fn connection_refused_is_retried() {
    // Nothing listens on this port once the listener is dropped.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let uri = format!("http://{addr}{ROLLBACK_PATH}");
    let rid = rollback_id();
    let call = step(&uri, &rid, "cp", "t");
    let client = client();
    match client.prepare_once(&call).await {
        CallOutcome::Retryable(e) => {
            assert_eq!(e.code, CallError::CONNECT, "{e:?}");
            assert!(e.counts_against_circuit());
        }
        other => panic!("{other:?}"),
    }
    let mut reports = Reports::default();
    match client
        .execute(&call, deadline_in(MS * 200), reports.record())
        .await
    {
        Final::DeadlinePassed(e) => assert_eq!(e.code, CallError::CONNECT),
        other => panic!("{other:?}"),
    }
    assert!(reports.0.len() >= 3, "{:?}", reports.0);
    assert_eq!(
        reports.attempts(),
        (1..=reports.0.len() as u32).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn hosts_the_issuer_may_not_name_are_never_called() {
    let stub = Stub::start(vec![], PREPARED).await;
    let (rid, uri) = (rollback_id(), stub.uri());
    let client = client();
    let call = StepCall {
        agent: OTHER,
        ..step(&uri, &rid, "cp", "t")
    };
    match client.prepare_once(&call).await {
        CallOutcome::Final(e) => {
            assert_eq!(e.code, CallError::HOST_NOT_ALLOWED);
            assert_eq!(e.status, None);
        }
        other => panic!("{other:?}"),
    }
    let mut reports = Reports::default();
    match client
        .execute(&call, deadline_in(MS * 1000), reports.record())
        .await
    {
        Final::Failed(e) => assert_eq!(e.code, CallError::HOST_NOT_ALLOWED),
        other => panic!("{other:?}"),
    }
    assert!(reports.0.is_empty(), "no call was made, so no attempt");

    // Unknown issuers, https-only issuers' http URIs, queries and fragments: refused too.
    let with_query = format!("{uri}?next=/x");
    let with_fragment = format!("{uri}#frag");
    for (agent, uri, code) in [
        (
            "spiffe://unknown",
            uri.as_str(),
            CallError::HOST_NOT_ALLOWED,
        ),
        (AGENT, "file:///etc/passwd", CallError::HOST_NOT_ALLOWED),
        (AGENT, with_query.as_str(), CallError::BAD_URI),
        (AGENT, with_fragment.as_str(), CallError::BAD_URI),
    ] {
        let call = StepCall {
            agent,
            ..step(uri, &rid, "cp", "t")
        };
        match client.prepare_once(&call).await {
            CallOutcome::Final(e) => assert_eq!(e.code, code, "{uri}"),
            other => panic!("{uri}: {other:?}"),
        }
    }
    match client
        .execute_once(&step(&uri, &rid, "cp", "bad\nheader"))
        .await
    {
        CallOutcome::Final(e) => assert_eq!(e.code, CallError::BAD_CONTEXT),
        other => panic!("{other:?}"),
    }
    assert!(stub.seen().is_empty(), "the stub received nothing");
}

#[tokio::test]
async fn a_passed_deadline_makes_no_call() {
    let stub = Stub::start(vec![], PREPARED).await;
    let (rid, uri) = (rollback_id(), stub.uri());
    let mut reports = Reports::default();
    match client()
        .prepare(
            &step(&uri, &rid, "cp", "t"),
            Instant::now(),
            reports.record(),
        )
        .await
    {
        Final::DeadlinePassed(e) => assert_eq!(e.code, CallError::DEADLINE),
        other => panic!("{other:?}"),
    }
    assert!(reports.0.is_empty());
    assert!(stub.seen().is_empty());
}

#[test]
fn settings_from_config_and_validation() {
    let cfg = unwind::config::RollbackConfig {
        agent_timeout_ms: 1500,
        ..Default::default()
    };
    let settings = CallSettings::from_config(&cfg);
    assert_eq!(settings.timeout, MS * 1500);
    assert_eq!(settings.backoff, Backoff::default());
    assert_eq!(CallSettings::default().timeout, MS * 5000);
    let zero = CallSettings {
        timeout: Duration::ZERO,
        ..CallSettings::default()
    };
    assert!(AgentClient::new(trust(), zero).is_err());
}
