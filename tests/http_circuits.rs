//! Circuit breakers and bulkheads end to end: a real server per back end, real agents over HTTP
//! (the `unwind-agent` reference handler, programmed to fail or to be slow), the breaker's
//! evidence read back from the ledger and its state from `/.well-known/cascade/circuits`.

mod common;

use std::time::{Duration, Instant};

use common::agents::*;
use common::server::*;
use serde_json::{Value, json};
use unwind::config::Config;

/// Small windows and cooldowns, and step deadlines long enough to outlive a cooldown.
fn breaker_config(cooldown_s: u64) -> impl Fn(&mut Config) {
    move |c: &mut Config| {
        short(c);
        c.rollback.step_deadline_s = 40;
        c.circuit.window_s = 30;
        c.circuit.min_calls = 3;
        c.circuit.error_threshold = 0.5;
        c.circuit.cooldown_s = cooldown_s;
        c.circuit.max_cooldown_s = cooldown_s * 2;
    }
}

/// The ECTs of `exec_act` in the ledger, oldest first.
async fn ects(s: &TestServer, exec_act: &str) -> Vec<Value> {
    let (status, body) = s
        .get_json(&format!("/v1/ects?exec_act={exec_act}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// Polls until the ledger holds an ECT of `exec_act`.
async fn wait_for_ect(s: &TestServer, exec_act: &str, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let items = ects(s, exec_act).await;
        if !items.is_empty() {
            return items;
        }
        assert!(Instant::now() < deadline, "{}: no {exec_act}", s.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The circuits endpoint's entry for `agent`.
async fn circuit(s: &TestServer, agent: &str) -> Value {
    let (status, body) = s.get_json("/.well-known/cascade/circuits").await;
    assert_eq!(status, 200, "{body}");
    body["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["downstream_agent"] == agent)
        .unwrap_or_else(|| panic!("{}: no circuit for {agent}: {body}", s.name))
        .clone()
}

/// Ingests a checkpoint of `a` and asks a `single` rollback of it; (checkpoint, rollback id).
async fn rollback_of_new_checkpoint(s: &TestServer, a: &TestAgent, wid: &str) -> (String, String) {
    rollback_on(s, s, a, wid).await
}

/// Like [`rollback_of_new_checkpoint`], ingesting on `ingest` (whose agent key signed it) and
/// asking on `ask` (a replica).
async fn rollback_on(
    ingest: &TestServer,
    ask: &TestServer,
    a: &TestAgent,
    wid: &str,
) -> (String, String) {
    let (cp, token) = a.checkpoint(wid, &[]).await;
    ingest.ingest_ok(&[token]).await;
    let id = accepted(ask, json!({"checkpoint_id": cp, "scope": "single"})).await;
    (cp, id)
}

#[tokio::test]
async fn a_failing_agent_opens_its_breaker_and_a_probe_closes_it() {
    for s in servers_with(breaker_config(3)).await {
        let log = Log::default();
        let a = start_agent(&s, "flaky", "fail:1000", 0, &log).await;
        let agent = agent_id("flaky");
        let wid = wid();

        let unauthenticated = s
            .client
            .get(s.url("/.well-known/cascade/circuits"))
            .send()
            .await
            .unwrap();
        assert_eq!(unauthenticated.status().as_u16(), 401, "{}", s.name);

        let (cp, id) = rollback_of_new_checkpoint(&s, &a, &wid).await;
        let opens = wait_for_ect(&s, "circuit_breaker_open", Duration::from_secs(15)).await;
        assert_eq!(opens.len(), 1, "{}: {opens:?}", s.name);
        let open = &opens[0];
        let (_, rollback) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
        let start = rollback["evidence"]["rollback_start"].as_str().unwrap();
        assert_eq!(open["iss"], json!(s.coordinator_id), "{}", s.name);
        assert_eq!(open["wid"], json!(wid));
        assert_eq!(open["par"], json!([start]), "par: the rollback_start");
        let ext = &open["claims"]["ext"];
        assert_eq!(ext["cascade.downstream_agent"], json!(agent));
        assert!(ext["cascade.error_rate"].as_f64().unwrap() > 0.5, "{ext}");
        assert_eq!(ext["cascade.window_s"], json!(30));
        assert_eq!(ext["cascade.cooldown_s"], json!(3));
        // It verifies: ingesting it again is a duplicate, not a refusal.
        let again = s.post_token(open["token"].as_str().unwrap()).await;
        assert_eq!(again.status().as_u16(), 200, "{}", s.name);

        // Open: the endpoint says so, and calls stop reaching the agent.
        let c = circuit(&s, &agent).await;
        assert_eq!(c["state"], "open", "{}: {c}", s.name);
        assert!(c["error_rate"].as_f64().unwrap() > 0.5, "{c}");
        assert_eq!(c["window_s"], json!(30));
        assert_eq!(c["last_failure_ect"], json!(start));
        let remaining = c["cooldown_remaining_s"].as_u64().unwrap();
        assert!((1..=3).contains(&remaining), "{c}");
        let calls = a.calls();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(a.calls(), calls, "{}: refused locally while open", s.name);
        let (_, rollback) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
        let st = step(&rollback, &cp);
        assert_eq!(st["error"]["code"], "circuit_open", "{}: {st}", s.name);

        // The agent recovers; after the cooldown one probe closes the breaker.
        a.behave("");
        let closes = wait_for_ect(&s, "circuit_breaker_close", Duration::from_secs(20)).await;
        assert_eq!(closes.len(), 1, "{}: {closes:?}", s.name);
        let close = &closes[0];
        let last_open = ects(&s, "circuit_breaker_open").await;
        let last_open = last_open.last().unwrap();
        assert_eq!(close["par"], json!([last_open["jti"]]), "{}", s.name);
        assert_eq!(close["wid"], json!(wid));
        let ext = &close["claims"]["ext"];
        assert_eq!(ext["cascade.downstream_agent"], json!(agent));
        assert!(
            ext["cascade.total_cooldown_s"].as_u64().unwrap() >= 3,
            "{ext}"
        );

        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        let c = circuit(&s, &agent).await;
        assert_eq!(c["state"], "closed", "{}: {c}", s.name);
        assert_eq!(c["cooldown_remaining_s"], json!(0));

        let metrics = s
            .client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for state in ["open", "half_open", "closed"] {
            let line = format!("unwind_circuit_transitions_total{{state=\"{state}\"}}");
            assert!(metrics.contains(&line), "{}: no {line}", s.name);
        }
        assert!(!metrics.contains(&agent), "no agent ids in metrics");
    }
}

#[tokio::test]
async fn replicas_agree_on_an_open_breaker() {
    let adjust = breaker_config(6);
    for s1 in servers_with(&adjust).await {
        let s2 = start_on_same_database(&s1, &adjust).await;
        let log = Log::default();
        let a = start_agent(&s1, "down", "fail:1000", 0, &log).await;
        let agent = agent_id("down");
        let wid = wid();

        rollback_of_new_checkpoint(&s1, &a, &wid).await;
        wait_for_ect(&s1, "circuit_breaker_open", Duration::from_secs(15)).await;
        for s in [&s1, &s2] {
            let c = circuit(s, &agent).await;
            assert_eq!(c["state"], "open", "{}: {c}", s.name);
            assert!(c["cooldown_remaining_s"].as_u64().unwrap() >= 3, "{c}");
        }

        // New rollbacks toward the agent, on either replica and driven by either worker, are
        // refused locally while the shared breaker is open.
        let calls = a.calls();
        rollback_on(&s1, &s2, &a, &wid).await;
        rollback_on(&s1, &s1, &a, &wid).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(a.calls(), calls, "{}: no replica called the agent", s1.name);
        assert_eq!(
            ects(&s1, "circuit_breaker_open").await.len(),
            1,
            "{}: one opening, one ECT",
            s1.name
        );
    }
}

#[tokio::test]
async fn one_workflows_big_rollbacks_leave_room_for_another_workflows_small_one() {
    let adjust = |c: &mut Config| {
        short(c);
        c.rollback.agent_timeout_ms = 3000;
        c.rollback.step_deadline_s = 30;
        c.rollback.max_active = 2;
        c.rollback.max_active_per_workflow = 1;
        c.rollback.max_calls_per_workflow = 4;
    };
    for s in servers_with(adjust).await {
        let log = Log::default();
        let big = start_agent(&s, "big", "", 400, &log).await;
        let small = start_agent(&s, "small", "", 0, &log).await;
        let (big_wid, small_wid) = (wid(), wid());

        // Two disjoint trees of a root and twelve checkpoints below it, in one workflow.
        let mut big_ids = Vec::new();
        for _ in 0..2 {
            let (root, token) = big.checkpoint(&big_wid, &[]).await;
            let mut tokens = vec![token];
            for _ in 0..12 {
                tokens.push(
                    big.checkpoint(&big_wid, std::slice::from_ref(&root))
                        .await
                        .1,
                );
            }
            s.ingest_ok(&tokens).await;
            big_ids.push(accepted(&s, json!({"checkpoint_id": root, "scope": "sub_dag"})).await);
        }
        let (_, small_id) = rollback_of_new_checkpoint(&s, &small, &small_wid).await;

        let done = wait_for(&s, &small_id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        let (_, first) = s.get_json(&format!("/v1/rollbacks/{}", big_ids[0])).await;
        assert!(
            !TERMINAL.contains(&first["status"].as_str().unwrap()),
            "{}: the small rollback finished while the big one still ran: {}",
            s.name,
            first["status"]
        );
        for id in &big_ids {
            let done = wait_for(&s, id, TERMINAL).await;
            assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        }
        // At most four restores of the big workflow ran at once.
        let mut running = 0i32;
        let mut peak = 0;
        let mut events: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(agent, ..)| agent == "big")
            .map(|(_, what, _, at)| (*at, *what == "start"))
            .collect();
        events.sort_by_key(|(at, start)| (*at, *start));
        for (_, start) in events {
            running += if start { 1 } else { -1 };
            peak = peak.max(running);
        }
        assert!(
            peak <= 4,
            "{}: {peak} calls of one workflow at once",
            s.name
        );
        assert!(peak >= 2, "{}: the calls ran concurrently", s.name);

        let metrics = s
            .client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("unwind_bulkhead_waits_total{kind=\"agent_calls\"}"),
            "{}: saturation counted",
            s.name
        );
    }
}

#[tokio::test]
async fn a_breaker_opening_toward_an_agent_of_two_workflows_escalates_in_both() {
    for s in servers_with(breaker_config(30)).await {
        let log = Log::default();
        let a = start_agent(&s, "shared", "fail:1000", 0, &log).await;
        let (w1, w2) = (wid(), wid());
        let (_, id1) = rollback_of_new_checkpoint(&s, &a, &w1).await;
        let (_, id2) = rollback_of_new_checkpoint(&s, &a, &w2).await;
        wait_for_ect(&s, "circuit_breaker_open", Duration::from_secs(15)).await;

        let deadline = Instant::now() + Duration::from_secs(15);
        let crossing = loop {
            let (status, body) = s.get_json("/v1/escalations?status=open").await;
            assert_eq!(status, 200, "{body}");
            let found: Vec<Value> = body["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "cross_workflow")
                .cloned()
                .collect();
            if found.len() >= 2 {
                break found;
            }
            assert!(Instant::now() < deadline, "{}: {body}", s.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(crossing.len(), 2, "{}: {crossing:?}", s.name);
        let wids: Vec<&Value> = crossing.iter().map(|e| &e["wid"]).collect();
        assert!(
            wids.contains(&&json!(w1)) && wids.contains(&&json!(w2)),
            "{crossing:?}"
        );
        for e in &crossing {
            assert_eq!(e["detail"]["agent"], json!(agent_id("shared")), "{e}");
            assert_eq!(e["detail"]["workflows"].as_array().unwrap().len(), 2, "{e}");
            let rollbacks = e["detail"]["rollbacks"].as_array().unwrap();
            assert!(
                rollbacks.contains(&json!(id1)) || rollbacks.contains(&json!(id2)),
                "{e}"
            );
        }
    }
}
