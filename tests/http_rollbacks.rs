//! Rollbacks end to end: Unwind over real HTTP on both stores, against real agents built from
//! the `unwind-agent` crate, each an HTTP server on 127.0.0.1.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::*;
use serde_json::{Map, Value, json};
use unwind_agent::{
    Agent, CheckpointCtx, CheckpointStore, CoordinatorKeys, HandlerError, PrepareDecision,
    RestoreOutcome, RollbackHandler, SnapshotKey, StoreOptions,
};

/// What the agents saw, in order: (agent, phase, checkpoint id).
type Log = Arc<Mutex<Vec<(String, &'static str, String)>>>;

struct Recorder {
    name: String,
    log: Log,
    cannot_prepare: bool,
    delay: Duration,
}

#[unwind_agent::async_trait]
impl RollbackHandler for Recorder {
    async fn prepare(&self, ctx: &CheckpointCtx) -> PrepareDecision {
        self.log
            .lock()
            .unwrap()
            .push((self.name.clone(), "prepare", ctx.checkpoint.jti.clone()));
        if self.cannot_prepare {
            PrepareDecision::CannotPrepare("resource locked".into())
        } else {
            PrepareDecision::Prepared
        }
    }

    async fn restore(
        &self,
        ctx: &CheckpointCtx,
        _snapshot: Vec<u8>,
    ) -> Result<RestoreOutcome, HandlerError> {
        self.log
            .lock()
            .unwrap()
            .push((self.name.clone(), "start", ctx.checkpoint.jti.clone()));
        tokio::time::sleep(self.delay).await;
        self.log
            .lock()
            .unwrap()
            .push((self.name.clone(), "end", ctx.checkpoint.jti.clone()));
        Ok(RestoreOutcome::completed()
            .with_hashes(Some("sha256:before".into()), Some("sha256:after".into())))
    }
}

struct TestAgent {
    agent: Agent,
    uri: String,
    _task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn coordinator_jwks(s: &TestServer) -> jsonwebtoken::jwk::JwkSet {
    s.client
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn start_agent(
    s: &TestServer,
    name: &str,
    log: &Log,
    cannot_prepare: bool,
    delay_ms: u64,
) -> TestAgent {
    let dir = tempfile::tempdir().unwrap();
    let id = format!("{AGENT_PREFIX}{name}");
    let store = CheckpointStore::open(StoreOptions::in_dir(
        dir.path(),
        id.clone(),
        SnapshotKey::generate().unwrap(),
    ))
    .await
    .unwrap();
    let handler = Arc::new(Recorder {
        name: name.to_string(),
        log: log.clone(),
        cannot_prepare,
        delay: Duration::from_millis(delay_ms),
    });
    let agent = Agent::builder()
        .id(&id)
        .signing_key(s.agent_key.clone())
        .coordinator(
            &s.coordinator_id,
            CoordinatorKeys::Static(coordinator_jwks(s).await),
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
    let router = agent.router();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    TestAgent {
        agent,
        uri,
        _task: task,
        _dir: dir,
    }
}

impl TestAgent {
    async fn checkpoint(&self, wid: &str, parents: &[String]) -> (String, String) {
        let (cp, token) = self
            .agent
            .checkpoint(
                b"router config v1",
                3600,
                Some("router-1"),
                true,
                wid,
                parents,
                Some(&self.uri),
            )
            .await
            .unwrap();
        (cp.jti, token)
    }

    fn action(&self, wid: &str, exec_act: &str, parents: &[String]) -> (String, String) {
        let token = self
            .agent
            .action_ect(exec_act, Some(wid), parents, Map::new())
            .unwrap();
        let (_, claims) = unwind::ect::jws::decode_unverified(&token).unwrap();
        (claims["jti"].as_str().unwrap().to_string(), token)
    }
}

/// The seed figure: Checkpoint A -> A1 -> Checkpoint B -> B1, B2; agent a owns A and A1, agent
/// b owns B, B1 and B2. Returns (A, A1, B, B1) jtis.
async fn seed_figure(
    s: &TestServer,
    a: &TestAgent,
    b: &TestAgent,
    wid: &str,
) -> (String, String, String, String) {
    let (cp_a, t_a) = a.checkpoint(wid, &[]).await;
    let (a1, t_a1) = a.action(wid, "reconfigure_router", std::slice::from_ref(&cp_a));
    let (cp_b, t_b) = b.checkpoint(wid, std::slice::from_ref(&a1)).await;
    let (b1, t_b1) = b.action(wid, "update_dns", std::slice::from_ref(&cp_b));
    let (_, t_b2) = b.action(wid, "notify", std::slice::from_ref(&cp_b));
    s.ingest_ok(&[t_a, t_a1, t_b, t_b1, t_b2]).await;
    (cp_a, a1, cp_b, b1)
}

async fn request(s: &TestServer, body: Value) -> reqwest::Response {
    s.client
        .post(s.url("/v1/rollbacks"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Polls the rollback until it reaches one of `states`.
async fn wait_for(s: &TestServer, id: &str, states: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
        assert_eq!(status, 200, "{body}");
        if states.contains(&body["status"].as_str().unwrap_or("")) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{}: stuck in {}: {body}",
            s.name,
            body["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_seed_figure_rolls_back_b_then_a_with_signed_evidence() {
    for s in servers().await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", &log, false, 50).await;
        // b is slow, so the first rollback is still running when the broader one arrives.
        let b = start_agent(&s, "b", &log, false, 400).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let (cp_a, _, cp_b, b1) = seed_figure(&s, &a, &b, &wid).await;

        let r = request(
            &s,
            json!({"trigger_ect": b1, "scope": "sub_dag", "reason": "DNS broke"}),
        )
        .await;
        assert_eq!(r.status(), 202, "{}", s.name);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let created: Value = r.json().await.unwrap();
        let id = created["rollback_id"].as_str().unwrap().to_string();
        assert_eq!(location, format!("/v1/rollbacks/{id}"));
        assert!(id.starts_with("urn:uuid:"));
        assert_eq!(
            created["checkpoint_id"], cp_b,
            "the trigger resolves to b's checkpoint"
        );

        // A broader rollback takes the first one over; b's finished step is reused, not re-run.
        let r = request(&s, json!({"checkpoint_id": cp_a, "scope": "full_workflow"})).await;
        assert_eq!(r.status(), 202, "{}", s.name);
        let full: Value = r.json().await.unwrap();
        let full_id = full["rollback_id"].as_str().unwrap().to_string();
        let done = wait_for(&s, &full_id, &["completed", "partial", "failed"]).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        let first = wait_for(&s, &id, &["superseded", "completed"]).await;
        assert!(
            first["status"] == "superseded" || first["status"] == "completed",
            "{first}"
        );

        let steps = done["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0]["checkpoint_id"], cp_b);
        assert_eq!(steps[0]["rank"], 0);
        assert_eq!(steps[1]["checkpoint_id"], cp_a);
        assert_eq!(steps[1]["rank"], 1);

        // Order: every prepare before any execute (of this rollback), b's execute before a's.
        let log = log.lock().unwrap().clone();
        let end_b = log
            .iter()
            .rposition(|(n, p, _)| n == "b" && *p == "end")
            .unwrap();
        let start_a = log
            .iter()
            .rposition(|(n, p, _)| n == "a" && *p == "start")
            .unwrap();
        assert!(
            end_b < start_a,
            "{}: a started before b finished: {log:?}",
            s.name
        );
        // No checkpoint restored twice, even across the two rollbacks.
        for cp in [&cp_a, &cp_b] {
            let n = log
                .iter()
                .filter(|(_, p, c)| *p == "start" && c == cp)
                .count();
            assert_eq!(n, 1, "{}: {cp} restored {n} times: {log:?}", s.name);
        }

        // Evidence is in the ledger, signed by Unwind.
        for key in ["rollback_start", "rollback_complete"] {
            let jti = done["evidence"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{key} missing: {done}"));
            let (status, ect) = s.get_json(&format!("/v1/ects/{jti}")).await;
            assert_eq!(status, 200, "{key}");
            assert_eq!(ect["iss"], s.coordinator_id);
            assert_eq!(ect["exec_act"], key);
            assert_eq!(ect["wid"], wid);
        }
        let (_, complete) = s
            .get_json(&format!(
                "/v1/ects/{}",
                done["evidence"]["rollback_complete"].as_str().unwrap()
            ))
            .await;
        assert_eq!(complete["ext"]["cascade.status"], "completed");
        // The agents' own rollback_complete ECTs were recorded too.
        let (_, page) = s
            .get_json(&format!("/v1/ects?wid={wid}&exec_act=rollback_complete"))
            .await;
        let issuers: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["iss"].as_str().unwrap())
            .collect();
        assert!(
            issuers.contains(&format!("{AGENT_PREFIX}a").as_str()),
            "{issuers:?}"
        );
    }
}

#[tokio::test]
async fn idempotency_conflicts_and_refusals() {
    for s in servers().await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", &log, false, 300).await;
        let b = start_agent(&s, "b", &log, false, 300).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let (cp_a, a1, cp_b, _) = seed_figure(&s, &a, &b, &wid).await;
        let id = format!("urn:uuid:{}", uuid::Uuid::new_v4());

        let body = json!({"rollback_id": id, "checkpoint_id": cp_a, "scope": "sub_dag"});
        assert_eq!(request(&s, body.clone()).await.status(), 202, "{}", s.name);
        // Same id, same request: the stored rollback, 200.
        let r = request(&s, body.clone()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["rollback_id"], id);
        // Same id, another request.
        let r = request(
            &s,
            json!({"rollback_id": id, "checkpoint_id": cp_a, "scope": "single"}),
        )
        .await;
        assert_problem(r, 409, "idempotency_mismatch", "mismatch").await;
        // A narrower rollback overlapping the active one loses.
        let r = request(&s, json!({"checkpoint_id": cp_b, "scope": "single"})).await;
        let p = assert_problem(r, 409, "rollback_conflict", "conflict").await;
        assert_eq!(p["conflicting_rollback_id"], id);
        // Refusals.
        assert_problem(
            request(&s, json!({"checkpoint_id": a1})).await,
            422,
            "not_a_checkpoint",
            "action",
        )
        .await;
        assert_problem(
            request(&s, json!({"checkpoint_id": "nope"})).await,
            404,
            "not_found",
            "unknown",
        )
        .await;
        assert_problem(
            request(&s, json!({"checkpoint_id": cp_a, "trigger_ect": a1})).await,
            422,
            "invalid_request",
            "both",
        )
        .await;
        assert_problem(
            request(&s, json!({"rollback_id": "42", "checkpoint_id": cp_a})).await,
            422,
            "invalid_request",
            "bad id",
        )
        .await;
        let r = s
            .client
            .post(s.url("/v1/rollbacks"))
            .bearer_auth(READER_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(r, 403, "forbidden", "reader").await;
        let r = s
            .client
            .post(s.url("/v1/rollbacks"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(r, 401, "unauthenticated", "anonymous").await;

        let done = wait_for(&s, &id, &["completed", "partial", "failed"]).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        // Decisions only for rollbacks awaiting one.
        let r = s
            .client
            .post(s.url(&format!("/v1/rollbacks/{id}/decision")))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"decision": "abort"}))
            .send()
            .await
            .unwrap();
        assert_problem(r, 409, "not_awaiting_decision", "decision").await;
    }
}

#[tokio::test]
async fn cannot_prepare_on_the_critical_path_waits_for_a_decision() {
    for s in servers().await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", &log, true, 0).await;
        let b = start_agent(&s, "b", &log, false, 0).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let (cp_a, _, _, _) = seed_figure(&s, &a, &b, &wid).await;
        let r = request(&s, json!({"checkpoint_id": cp_a})).await;
        let id = r.json::<Value>().await.unwrap()["rollback_id"]
            .as_str()
            .unwrap()
            .to_string();
        let waiting = wait_for(&s, &id, &["awaiting_decision"]).await;
        let step_a = waiting["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["checkpoint_id"] == cp_a)
            .unwrap()
            .clone();
        assert_eq!(step_a["prepare_status"], "cannot_prepare", "{waiting}");
        assert!(
            log.lock().unwrap().iter().all(|(_, p, _)| *p == "prepare"),
            "nothing executes before a decision"
        );

        let r = s
            .client
            .post(s.url(&format!("/v1/rollbacks/{id}/decision")))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"decision": "proceed_partial", "comment": "a is fine"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", s.name);
        let done = wait_for(&s, &id, &["completed", "partial", "failed"]).await;
        // The requested checkpoint was not undone: failed, with a's agent named.
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(done["failed_agents"], json!([format!("{AGENT_PREFIX}a")]));
        assert_eq!(done["decision"]["decided_by"], "operator:ops");
        let (_, complete) = s
            .get_json(&format!(
                "/v1/ects/{}",
                done["evidence"]["rollback_complete"].as_str().unwrap()
            ))
            .await;
        assert_eq!(complete["ext"]["cascade.status"], "failed");
    }
}
