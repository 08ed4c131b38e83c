//! The coordinator's client to agents over real HTTP on 127.0.0.1: real `unwind-agent`
//! routers answer every call; faults (5xx, redirects, malformed answers, hangs) come from a
//! fault proxy in front of the real agent, refused connections from a closed port, and hosts
//! the issuer may not name are checked before anything is sent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fault_proxy::{Call, Fault, FaultProxy};
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

/// Short backoff so retries follow each other in tens of milliseconds, and calls that time out
/// after `timeout`.
fn settings(timeout: Duration) -> CallSettings {
    CallSettings {
        timeout,
        backoff: Backoff {
            initial: MS * 20,
            max: MS * 80,
            jitter: 0.2,
        },
    }
}

/// For tests not about timeouts: a call to a healthy agent never times out, even on a loaded
/// machine.
fn client() -> AgentClient {
    AgentClient::new(trust(), settings(MS * 10_000)).unwrap()
}

/// For tests about timeouts and deadlines: calls time out after 100 ms.
fn fast_client() -> AgentClient {
    AgentClient::new(trust(), settings(MS * 100)).unwrap()
}

/// A step deadline no healthy call comes near.
const PATIENT: Duration = Duration::from_secs(10);

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

/// A real agent with one reversible checkpoint, and a fault proxy in front of it.
async fn proxied() -> (RealAgent, String, FaultProxy) {
    let real = RealAgent::start().await;
    let cp = real.checkpoint(true).await;
    let proxy = FaultProxy::start(&real.uri).await;
    (real, cp, proxy)
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
        .prepare(&call, deadline_in(PATIENT), reports.record())
        .await;
    assert_eq!(prepared, Final::Answer(PrepareAnswer::Prepared));
    assert_eq!(reports.0.len(), 1);
    assert_eq!(reports.0[0].error, None);

    let mut reports = Reports::default();
    let first = match client
        .execute(&call, deadline_in(PATIENT), reports.record())
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
            deadline_in(PATIENT),
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

/// A forged context is refused with a plain 401: the agent signs nothing for a caller it cannot
/// verify, so there is no ECT to pass on.
#[tokio::test]
async fn real_agent_refusing_the_context_is_final_and_signs_nothing() {
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
            assert_eq!(ect, None, "the agent signed for a forged context");
        }
        other => panic!("{other:?}"),
    }
    let mut reports = Reports::default();
    match client
        .execute(&call, deadline_in(PATIENT), reports.record())
        .await
    {
        Final::Failed(e) => {
            assert_eq!(e.code, CallError::HTTP_4XX);
            assert_eq!(e.status, Some(401));
            assert_eq!(e.body_ect, None, "the agent signed for a forged context");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reports.attempts(), vec![1], "a 4xx is not retried");
}

// ---------------------------------------------------------------------------------------------
// Faults, injected by a proxy in front of the real agent

#[tokio::test]
async fn sends_the_context_header_and_bodies_of_the_protocol() {
    let (real, cp, proxy) = proxied().await;
    let client = client();
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    // A trailing slash does not make `//prepare`.
    let slashed = format!("{}/", proxy.uri);
    assert!(matches!(
        client.prepare_once(&step(&slashed, &rid, &cp, &ec)).await,
        CallOutcome::Answer(PrepareAnswer::Prepared)
    ));
    let call = step(&proxy.uri, &rid, &cp, &ec);
    match client.execute_once(&call).await {
        CallOutcome::Answer(a) => {
            assert_eq!(a.status, ExecuteResult::Completed);
            let token = a.ect.as_deref().expect("the agent's rollback_complete");
            let (_, claims) = unwind::ect::jws::decode_unverified(token).unwrap();
            assert_eq!(claims["iss"], AGENT, "{claims}");
        }
        other => panic!("{other:?}"),
    }
    // Execute goes to the URI as given (the agent has no route with the slash).
    match client.execute_once(&step(&slashed, &rid, &cp, &ec)).await {
        CallOutcome::Final(e) => assert_eq!(e.status, Some(404), "{e:?}"),
        other => panic!("{other:?}"),
    }
    let seen = proxy.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, format!("{ROLLBACK_PATH}/prepare"));
    assert_eq!(seen[1].path, ROLLBACK_PATH);
    assert_eq!(seen[2].path, format!("{ROLLBACK_PATH}/"));
    for s in &seen {
        assert_eq!(s.query, None);
        assert_eq!(s.context.as_deref(), Some(ec.as_str()));
        assert_eq!(s.content_type.as_deref(), Some("application/json"));
    }
    assert_eq!(
        seen[0].body,
        json!({"rollback_id": rid, "checkpoint_id": cp, "scope": "sub_dag"})
    );
    assert_eq!(
        seen[1].body,
        json!({"rollback_id": rid, "checkpoint_id": cp, "phase": "execute"})
    );
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
    let (real, cp, proxy) = proxied().await;
    proxy.plan(Call::Prepare, Fault::Status(500), Some(2));
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let mut reports = Reports::default();
    let result = client()
        .prepare(
            &step(&proxy.uri, &rid, &cp, &ec),
            deadline_in(PATIENT),
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
    let seen = proxy.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body["rollback_id"] == rid.as_str()));
}

#[tokio::test]
async fn execute_5xx_twice_then_completed() {
    let (real, cp, proxy) = proxied().await;
    proxy.plan(Call::Execute, Fault::Status(500), Some(1)).plan(
        Call::Execute,
        Fault::Answer {
            status: 503,
            content_type: "text/plain",
            body: "busy".into(),
        },
        Some(1),
    );
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let mut reports = Reports::default();
    let result = client()
        .execute(
            &step(&proxy.uri, &rid, &cp, &ec),
            deadline_in(PATIENT),
            reports.record(),
        )
        .await;
    assert!(
        matches!(&result, Final::Answer(a) if a.status == ExecuteResult::Completed),
        "{result:?}"
    );
    assert_eq!(reports.attempts(), vec![1, 2, 3]);
    assert_growing_delays(&reports);
    assert_eq!(proxy.seen().len(), 3, "same rollback_id every time");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (real, cp, target) = proxied().await;
    let stub = FaultProxy::start(&real.uri).await;
    stub.plan(Call::Any, Fault::Redirect(target.uri.clone()), None);
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let call = step(&stub.uri, &rid, &cp, &ec);
    let client = client();
    let mut reports = Reports::default();
    match client
        .prepare(&call, deadline_in(PATIENT), reports.record())
        .await
    {
        Final::Failed(e) => {
            assert_eq!((e.code, e.status), (CallError::REDIRECT, Some(302)));
            assert!(e.detail.contains(&target.uri), "{}", e.detail);
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

/// The real agent's 404 for an unknown checkpoint, with an `ect` member added, as an agent
/// that signs its refusals would answer.
fn with_error_ect(body: &Value) -> String {
    let mut body = body.clone();
    body["ect"] = json!("e.r.r");
    body.to_string()
}

#[tokio::test]
async fn not_found_is_cannot_prepare_at_prepare_and_final_at_execute() {
    let (real, _, proxy) = proxied().await;
    proxy.plan(Call::Any, Fault::Rewrite(with_error_ect), None);
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let call = step(&proxy.uri, &rid, "no-such-checkpoint", &ec);
    let client = client();
    let mut reports = Reports::default();
    match client
        .prepare(&call, deadline_in(PATIENT), reports.record())
        .await
    {
        Final::Answer(PrepareAnswer::CannotPrepare { reason, ect }) => {
            assert!(reason.starts_with("http 404: "), "{reason}");
            assert!(reason.contains("unknown checkpoint"), "{reason}");
            assert_eq!(ect.as_deref(), Some("e.r.r"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reports.attempts(), vec![1]);
    let mut reports = Reports::default();
    match client
        .execute(&call, deadline_in(PATIENT), reports.record())
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
    assert_eq!(proxy.seen().len(), 2);
}

fn html(_: &Value) -> String {
    "<html>ok</html>".into()
}

fn unknown_status(_: &Value) -> String {
    r#"{"status":"maybe"}"#.into()
}

fn oversized(answer: &Value) -> String {
    let mut answer = answer.clone();
    answer["pad"] = json!("x".repeat(70 * 1024));
    answer.to_string()
}

fn not_json(_: &Value) -> String {
    "not json".into()
}

#[tokio::test]
async fn unparseable_2xx_is_retried() {
    let (real, cp, proxy) = proxied().await;
    for rewrite in [html, unknown_status, oversized] {
        proxy.plan(Call::Prepare, Fault::Rewrite(rewrite), Some(1));
    }
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let mut reports = Reports::default();
    let result = client()
        .prepare(
            &step(&proxy.uri, &rid, &cp, &ec),
            deadline_in(PATIENT),
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

    let garbage = FaultProxy::start(&real.uri).await;
    garbage.plan(Call::Execute, Fault::Rewrite(not_json), None);
    match client()
        .execute_once(&step(&garbage.uri, &rid, &cp, &ec))
        .await
    {
        CallOutcome::Retryable(e) => assert_eq!(e.code, CallError::BAD_ANSWER),
        other => panic!("{other:?}"),
    }
}

fn partial(answer: &Value) -> String {
    let mut answer = answer.clone();
    answer["status"] = json!("partial");
    answer.to_string()
}

#[tokio::test]
async fn partial_maps_to_failed() {
    let (real, cp, proxy) = proxied().await;
    proxy.plan(Call::Execute, Fault::Rewrite(partial), None);
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    match client()
        .execute_once(&step(&proxy.uri, &rid, &cp, &ec))
        .await
    {
        CallOutcome::Answer(a) => {
            assert_eq!(a.status, ExecuteResult::Failed);
            assert_eq!(a.raw["status"], "partial");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_hanging_agent_times_out_until_the_deadline() {
    let (real, cp, proxy) = proxied().await;
    // Far longer than the calls' 100 ms timeout and the 400 ms budget below.
    proxy.plan(Call::Any, Fault::Delay(MS * 5000), None);
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let call = step(&proxy.uri, &rid, &cp, &ec);
    let client = fast_client();

    let started = Instant::now();
    match client.prepare_once(&call).await {
        CallOutcome::Retryable(e) => assert_eq!(e.code, CallError::TIMEOUT),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < MS * 2000, "{:?}", started.elapsed());

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
    // Well below the 5 s hang, with room for a loaded machine's scheduling.
    assert!(
        elapsed < budget + MS * 1000,
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
    let client = fast_client();
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
    let (real, cp, proxy) = proxied().await;
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let uri = proxy.uri.clone();
    let client = client();
    let call = StepCall {
        agent: OTHER,
        ..step(&uri, &rid, &cp, &ec)
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
        .execute(&call, deadline_in(PATIENT), reports.record())
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
            ..step(uri, &rid, &cp, &ec)
        };
        match client.prepare_once(&call).await {
            CallOutcome::Final(e) => assert_eq!(e.code, code, "{uri}"),
            other => panic!("{uri}: {other:?}"),
        }
    }
    match client
        .execute_once(&step(&uri, &rid, &cp, "bad\nheader"))
        .await
    {
        CallOutcome::Final(e) => assert_eq!(e.code, CallError::BAD_CONTEXT),
        other => panic!("{other:?}"),
    }
    assert!(proxy.seen().is_empty(), "the agent received nothing");
}

#[tokio::test]
async fn a_passed_deadline_makes_no_call() {
    let (real, cp, proxy) = proxied().await;
    let rid = rollback_id();
    let ec = real.rollback_start(&rid);
    let mut reports = Reports::default();
    match client()
        .prepare(
            &step(&proxy.uri, &rid, &cp, &ec),
            Instant::now(),
            reports.record(),
        )
        .await
    {
        Final::DeadlinePassed(e) => assert_eq!(e.code, CallError::DEADLINE),
        other => panic!("{other:?}"),
    }
    assert!(reports.0.is_empty());
    assert!(proxy.seen().is_empty());
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
