//! Cascade detection from ingested ECTs, over real HTTP on each configured store: each pattern
//! raises one alert (not one per ingested token) with a verifying `cascade_detected` ECT, and
//! nothing is raised below the thresholds.
//!
//! Detection runs beside ingest, in ledger order; a test that expects no alert ingests the
//! quiet case first and a case that must alert last, then waits for the last one: by then the
//! quiet case has been examined too.

mod common;

use std::time::{Duration, Instant};

use common::receiver::{Receiver, SECRET, signature_verifies, with_webhook};
use common::server::*;
use serde_json::{Map, Value, json};

fn wid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// A token of `agent/<agent>` issued `age` seconds ago.
fn token(
    s: &TestServer,
    agent: &str,
    jti: &str,
    wid: &str,
    exec_act: &str,
    parents: &[&str],
    age: i64,
) -> String {
    s.sign(&aged(claims(agent, jti, wid, exec_act, parents), age))
}

fn aged(mut c: Map<String, Value>, age: i64) -> Map<String, Value> {
    c.insert("iat".into(), json!(now() - age));
    c
}

/// A token whose `ext` marks it an error (`cascade.error: true`).
fn flagged_error(s: &TestServer, agent: &str, jti: &str, wid: &str, parents: &[&str]) -> String {
    let mut c = aged(claims(agent, jti, wid, "transform", parents), 2);
    c.insert("ext".into(), json!({"cascade.error": true}));
    s.sign(&c)
}

fn breaker_open(
    s: &TestServer,
    agent: &str,
    jti: &str,
    wid: &str,
    downstream: &str,
    age: i64,
) -> String {
    let mut c = aged(claims(agent, jti, wid, "circuit_breaker_open", &[]), age);
    c.insert(
        "ext".into(),
        json!({"cascade.downstream_agent": downstream, "cascade.error_rate": 0.8,
               "cascade.window_s": 60, "cascade.cooldown_s": 30}),
    );
    s.sign(&c)
}

async fn cascades(s: &TestServer, wid: &str) -> Vec<Value> {
    let (status, body) = s.get_json(&format!("/v1/cascades?wid={wid}")).await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// Waits until the workflow has an alert whose root cause is `root`; returns all its alerts.
async fn wait_alert(s: &TestServer, wid: &str, root: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let items = cascades(s, wid).await;
        if items.iter().any(|a| a["root_cause_ect"] == root) {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "{}: no cascade with root cause {root}: {items:?}",
            s.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cascade_escalations(s: &TestServer, cascade_id: &str) -> Vec<Value> {
    let (status, body) = s.get_json("/v1/escalations?status=open").await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["cascade_id"] == cascade_id)
        .cloned()
        .collect()
}

async fn wait_escalation(s: &TestServer, cascade_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = cascade_escalations(s, cascade_id).await.into_iter().next() {
            return e;
        }
        let (_, all) = s.get_json("/v1/escalations").await;
        assert!(
            Instant::now() < deadline,
            "{}: no escalation for {cascade_id}: {all}",
            s.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The alert's `cascade_detected` ECT: recorded in the root cause's workflow, signed by
/// Unwind, with the draft's types.
async fn check_evidence(s: &TestServer, alert: &Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let jti = alert["ect"].as_str().unwrap();
    let ect = loop {
        let (status, ect) = s.get_json(&format!("/v1/ects/{jti}")).await;
        if status == 200 {
            break ect;
        }
        assert!(Instant::now() < deadline, "{}: {jti} not recorded", s.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ect["exec_act"], "cascade_detected", "{ect}");
    assert_eq!(ect["iss"], json!(s.coordinator_id), "{ect}");
    assert_eq!(ect["wid"], alert["wid"], "{ect}");
    assert_eq!(ect["par"], json!([alert["root_cause_ect"]]), "{ect}");
    assert_eq!(ect["ext"]["cascade.pattern"], alert["pattern"], "{ect}");
    assert_eq!(
        ect["ext"]["cascade.root_cause_ect"], alert["root_cause_ect"],
        "{ect}"
    );
    // The ECT records the cascade as first detected; the alert's agents may have grown since.
    let counted = ect["ext"]["cascade.affected_agents"].as_u64().unwrap();
    let listed = alert["affected_agents"].as_array().unwrap();
    assert!(
        counted >= 2 && counted as usize <= listed.len(),
        "{ect} {alert}"
    );
    let radius_agents = ect["ext"]["cascade.blast_radius"].as_array().unwrap();
    assert!(radius_agents.len() as u64 >= counted, "{ect}");
    for agent in radius_agents {
        assert!(agent.as_str().unwrap().starts_with("spiffe://"), "{ect}");
    }
}

#[tokio::test]
async fn error_clustering_needs_distinct_reporters_and_alerts_once() {
    let receiver = Receiver::start().await;
    for s in servers_with(with_webhook(receiver.url.clone())).await {
        let w = wid();
        let db = format!("{AGENT_PREFIX}db");
        // One reporter twice: below the threshold.
        let (q1, q2) = (id("quiet"), id("quiet"));
        s.ingest_ok(&[breaker_open(&s, "a", &q1, &w, &db, 4)]).await;
        s.ingest_ok(&[breaker_open(&s, "a", &q2, &w, &db, 3)]).await;
        // A second reporter about another agent: no cluster either.
        s.ingest_ok(&[breaker_open(
            &s,
            "b",
            &id("quiet"),
            &w,
            "spiffe://x/cache",
            2,
        )])
        .await;
        // A second reporter about the database: the cluster, rooted at the first report.
        s.ingest_ok(&[breaker_open(&s, "c", &id("r"), &w, &db, 1)])
            .await;
        // A third one joins the same cascade: still one alert.
        s.ingest_ok(&[breaker_open(&s, "d", &id("r"), &w, &db, 0)])
            .await;
        let items = wait_alert(&s, &w, &q1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let items = {
            let later = cascades(&s, &w).await;
            assert!(later.len() >= items.len());
            later
        };
        assert_eq!(
            items.len(),
            1,
            "{}: one alert per cascade: {items:?}",
            s.name
        );
        let alert = &items[0];
        assert_eq!(alert["pattern"], "error_clustering", "{alert}");
        let affected: Vec<&str> = alert["affected_agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(affected.contains(&db.as_str()), "{alert}");
        assert!(
            affected.contains(&format!("{AGENT_PREFIX}a").as_str()),
            "{alert}"
        );
        assert!(
            affected.contains(&format!("{AGENT_PREFIX}c").as_str()),
            "{alert}"
        );
        assert_eq!(alert["blast_radius"][0], json!(q1), "{alert}");
        check_evidence(&s, alert).await;
        // Four agents, more than `cascade.escalate_above_agents` (3): a person is asked.
        let escalation = wait_escalation(&s, alert["id"].as_str().unwrap()).await;
        assert_eq!(escalation["kind"], "cascade", "{escalation}");
        assert_eq!(escalation["wid"], json!(w), "{escalation}");
        assert_eq!(
            escalation["detail"]["root_cause_ect"],
            json!(q1),
            "{escalation}"
        );
        // ...and told through the signed webhook.
        let deadline = Instant::now() + Duration::from_secs(15);
        let (event, received) = loop {
            let found = receiver.received().into_iter().find_map(|r| {
                let body: Value = serde_json::from_str(&r.body).ok()?;
                (body["type"] == "cascade.detected" && body["wid"] == json!(w)).then_some((body, r))
            });
            if let Some(found) = found {
                break found;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no cascade.detected webhook",
                s.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            signature_verifies(SECRET.as_bytes(), &received.signature, &received.body),
            "{}: {received:?}",
            s.name
        );
        assert_eq!(event["cascade"]["id"], alert["id"], "{event}");
        assert_eq!(event["decision_url"], Value::Null, "{event}");
    }
}

#[tokio::test]
async fn depth_first_propagation_along_one_chain_of_three_agents() {
    for s in servers().await {
        let w = wid();
        let (root, e1, hop, e2, e3) = (id("root"), id("e1"), id("hop"), id("e2"), id("e3"));
        s.ingest_ok(&[
            token(&s, "a", &root, &w, "plan", &[], 5),
            token(&s, "a", &e1, &w, "fetch_failed", &[&root], 4),
            token(&s, "b", &hop, &w, "transform", &[&e1], 3),
            flagged_error(&s, "b", &e2, &w, &[&hop]),
        ])
        .await;
        // Two agents so far: no alert. The third agent's error completes the chain.
        s.ingest_ok(&[token(&s, "c", &e3, &w, "error", &[&e2], 1)])
            .await;
        let items = wait_alert(&s, &w, &e1).await;
        assert_eq!(items.len(), 1, "{}: {items:?}", s.name);
        let alert = &items[0];
        assert_eq!(alert["pattern"], "depth_first", "{alert}");
        assert_eq!(
            alert["affected_agents"],
            json!([
                format!("{AGENT_PREFIX}a"),
                format!("{AGENT_PREFIX}b"),
                format!("{AGENT_PREFIX}c")
            ]),
            "{alert}"
        );
        let radius: Vec<&str> = alert["blast_radius"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j.as_str().unwrap())
            .collect();
        for jti in [&e1, &hop, &e2, &e3] {
            assert!(radius.contains(&jti.as_str()), "{jti}: {alert}");
        }
        assert!(!radius.contains(&root.as_str()), "{alert}");
        check_evidence(&s, alert).await;
        // Three agents are not more than the threshold: no escalation.
        assert!(
            cascade_escalations(&s, alert["id"].as_str().unwrap())
                .await
                .is_empty()
        );

        // Another error further down the same chain is the same cascade.
        let e4 = id("e4");
        s.ingest_ok(&[token(&s, "d", &e4, &w, "error", &[&e3], 0)])
            .await;
        let marker = id("m");
        let fan = id("fan");
        s.ingest_ok(&[token(&s, "x", &fan, &w, "dispatch", &[], 0)])
            .await;
        // A breadth-first cascade afterwards serves as the marker that e4 was examined.
        s.ingest_ok(&[
            token(&s, "x", &id("s"), &w, "error", &[&fan], 0),
            token(&s, "y", &id("s"), &w, "error", &[&fan], 0),
            token(&s, "z", &marker, &w, "error", &[&fan], 0),
        ])
        .await;
        let items = wait_alert(&s, &w, &fan).await;
        let depth: Vec<&Value> = items
            .iter()
            .filter(|a| a["pattern"] == "depth_first")
            .collect();
        assert_eq!(depth.len(), 1, "{}: {items:?}", s.name);
    }
}

#[tokio::test]
async fn breadth_first_propagation_needs_three_failing_siblings() {
    for s in servers().await {
        let w = wid();
        let (p, q) = (id("p"), id("q"));
        s.ingest_ok(&[
            token(&s, "o", &p, &w, "dispatch", &[], 5),
            token(&s, "o", &q, &w, "dispatch", &[], 5),
        ])
        .await;
        // Two failing children of q, and a healthy one: quiet.
        s.ingest_ok(&[
            token(&s, "a", &id("q"), &w, "call_failed", &[&q], 3),
            token(&s, "b", &id("q"), &w, "error", &[&q], 3),
            token(&s, "c", &id("q"), &w, "call", &[&q], 3),
        ])
        .await;
        // Three failing children of p: one alert.
        s.ingest_ok(&[
            token(&s, "a", &id("c"), &w, "call_failed", &[&p], 2),
            token(&s, "b", &id("c"), &w, "error", &[&p], 2),
            token(&s, "c", &id("c"), &w, "deploy_failed", &[&p], 1),
        ])
        .await;
        let items = wait_alert(&s, &w, &p).await;
        assert_eq!(items.len(), 1, "{}: {items:?}", s.name);
        let alert = &items[0];
        assert_eq!(alert["pattern"], "breadth_first", "{alert}");
        assert_eq!(alert["affected_agents"].as_array().unwrap().len(), 3);
        check_evidence(&s, alert).await;
        // Unknown query fields are refused like elsewhere.
        let (status, _) = s.get_json("/v1/cascades?colour=red").await;
        assert_eq!(status, 422, "{}", s.name);
    }
}

#[tokio::test]
async fn a_cascade_in_an_auto_rollback_workflow_rolls_back_from_its_root_cause() {
    use common::agents::{Log, TERMINAL, short, start_agent, wait_for};
    let auto = |c: &mut unwind::config::Config| {
        short(c);
        c.cascade.auto_rollback = vec!["*".into()];
    };
    for s in servers_with(auto).await {
        let log: Log = Default::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        let w = wid();
        let (cp, t_cp) = a.checkpoint(&w, &[]).await;
        let (e1, t_e1) = a.action(&w, "fetch_failed", std::slice::from_ref(&cp));
        let (e2, e3) = (id("e2"), id("e3"));
        s.ingest_ok(&[t_cp, t_e1]).await;
        s.ingest_ok(&[token(&s, "b", &e2, &w, "error", &[&e1], 0)])
            .await;
        s.ingest_ok(&[token(&s, "c", &e3, &w, "error", &[&e2], 0)])
            .await;
        let items = wait_alert(&s, &w, &e1).await;
        let alert = &items[0];

        let deadline = Instant::now() + Duration::from_secs(20);
        let id = loop {
            let (_, page) = s.get_json(&format!("/v1/rollbacks?wid={w}")).await;
            if let Some(rb) = page["items"].as_array().and_then(|i| i.first()) {
                break rb["rollback_id"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "{}: no rollback started", s.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        assert_eq!(done["checkpoint_id"], json!(cp), "{done}");
        assert_eq!(done["scope"], "sub_dag", "{done}");
        assert_eq!(done["requested_by"], "unwind:cascade", "{done}");
        let reason = done["reason"].as_str().unwrap();
        assert!(reason.contains(alert["id"].as_str().unwrap()), "{done}");
        assert_eq!(a.calls(), (1, 1), "{}", s.name);
    }
}

/// A process killed with error nodes still in its detection queue (kept in memory) has not
/// examined them. Here the tokens are appended by a ledger with no detector behind it, as such
/// a process would leave them: nothing is raised until a process starts on the same database,
/// examines the recent nodes again, and raises the cascade once.
#[tokio::test]
async fn a_cascade_left_unexamined_is_raised_when_the_next_process_starts() {
    use std::sync::Arc;
    use unwind::ect::{TrustStore, Verifier, VerifyPolicy};
    use unwind::ledger::Ledger;

    for s in servers().await {
        let trust = TrustStore::from_config(&s.config.trust).unwrap();
        let policy = VerifyPolicy::from_config(&s.config.ect).unwrap();
        let blind = Ledger::new(
            s.store.clone(),
            Arc::new(Verifier::new(Arc::new(trust), policy)),
            s.config.ect.clock_skew_s,
        );
        let w = wid();
        let (root, e1, e2, e3) = (id("root"), id("e1"), id("e2"), id("e3"));
        let tokens = vec![
            token(&s, "a", &root, &w, "plan", &[], 4),
            token(&s, "a", &e1, &w, "fetch_failed", &[&root], 3),
            token(&s, "b", &e2, &w, "error", &[&e1], 2),
            token(&s, "c", &e3, &w, "error", &[&e2], 1),
        ];
        for result in blind.ingest(&tokens).await.unwrap() {
            assert!(result.outcome.is_ok(), "{}: {result:?}", s.name);
        }
        // A cascade the running process sees completes after the unexamined one: once it is
        // raised, the first one would have been too, had anything examined it.
        let marker_wid = wid();
        let fan = id("fan");
        s.ingest_ok(&[token(&s, "x", &fan, &marker_wid, "dispatch", &[], 0)])
            .await;
        s.ingest_ok(&[
            token(&s, "x", &id("s"), &marker_wid, "error", &[&fan], 0),
            token(&s, "y", &id("s"), &marker_wid, "error", &[&fan], 0),
            token(&s, "z", &id("s"), &marker_wid, "error", &[&fan], 0),
        ])
        .await;
        wait_alert(&s, &marker_wid, &fan).await;
        assert!(cascades(&s, &w).await.is_empty(), "{}", s.name);

        let next = start_on_same_database(&s, &|_| {}).await;
        let items = wait_alert(&next, &w, &e1).await;
        assert_eq!(items.len(), 1, "{}: {items:?}", s.name);
        assert_eq!(items[0]["pattern"], "depth_first", "{}", s.name);
        check_evidence(&next, &items[0]).await;
        // The marker's cascade, examined again by the new process, is not raised twice.
        assert_eq!(cascades(&next, &marker_wid).await.len(), 1, "{}", s.name);
    }
}
