//! The containment story of one workflow, end to end on each configured store, with reference
//! agents over real HTTP: a failing agent's breaker opens, a second reporter makes it a
//! cascade, an irreversible checkpoint is escalated through the signed webhook, an operator
//! decides, and the ledger holds the whole story as ECTs signed by Unwind.

mod common;

use std::time::{Duration, Instant};

use common::agents::*;
use common::receiver::{Receiver, SECRET, signature_verifies, with_webhook};
use common::server::*;
use serde_json::{Value, json};

/// Polls `path` until `pick` finds something in its JSON.
async fn wait_until<T>(s: &TestServer, path: &str, pick: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = s.get_json(path).await;
        assert_eq!(status, 200, "{body}");
        if let Some(found) = pick(&body) {
            return found;
        }
        assert!(Instant::now() < deadline, "{}: {path}: {body}", s.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn breaker_cascade_escalation_decision_and_rollback_are_all_in_the_ledger() {
    let receiver = Receiver::start().await;
    let webhook = with_webhook(receiver.url.clone());
    let adjust = move |c: &mut unwind::config::Config| {
        webhook(c);
        c.circuit.window_s = 30;
        c.circuit.min_calls = 3;
        c.circuit.cooldown_s = 30;
    };
    for s in servers_with(adjust).await {
        let log = Log::default();
        let router = start_agent(&s, "router", "fail:1000", 0, &log).await;
        let notify = start_agent(&s, "notify", "", 0, &log).await;
        let w = wid();

        // 1. The router fails every call: its breaker opens.
        let (cp_router, t) = router.checkpoint(&w, &[]).await;
        s.ingest_ok(&[t]).await;
        accepted(&s, json!({"checkpoint_id": cp_router, "scope": "single"})).await;
        let open_path = format!("/v1/ects?wid={w}&exec_act=circuit_breaker_open");
        let open = wait_until(&s, &open_path, |b| b["items"].get(0).cloned()).await;
        assert_eq!(
            open["ext"]["cascade.downstream_agent"],
            json!(agent_id("router"))
        );

        // 2. Another agent reports its own breaker towards the router: a cascade.
        let mut report = claims(
            "dns",
            &uuid::Uuid::new_v4().to_string(),
            &w,
            "circuit_breaker_open",
            &[],
        );
        report.insert(
            "ext".into(),
            json!({"cascade.downstream_agent": agent_id("router"), "cascade.error_rate": 0.9,
                   "cascade.window_s": 60, "cascade.cooldown_s": 30}),
        );
        s.ingest_ok(&[s.sign(&report)]).await;
        let cascade = wait_until(&s, &format!("/v1/cascades?wid={w}"), |b| {
            b["items"].get(0).cloned()
        })
        .await;
        assert_eq!(cascade["pattern"], "error_clustering", "{cascade}");
        assert!(!cascade["blast_radius"].as_array().unwrap().is_empty());

        // 3. An irreversible checkpoint on the critical path: escalated, with a signed webhook.
        let jti = uuid::Uuid::new_v4().to_string();
        let mut c = checkpoint_claims("notify", &jti, &w, &[]);
        c.insert(
            "ext".into(),
            json!({"cascade.reversible": false, "cascade.rollback_uri": notify.uri,
                   "cascade.ttl": 3600}),
        );
        s.ingest_ok(&[s.sign(&c)]).await;
        let id = accepted(&s, json!({"checkpoint_id": jti, "scope": "single"})).await;
        let waiting = wait_for(&s, &id, &["awaiting_decision", "completed", "failed"]).await;
        assert_eq!(waiting["status"], "awaiting_decision", "{waiting}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let received = loop {
            let hit = receiver.received().into_iter().find(|r| {
                serde_json::from_str::<Value>(&r.body).is_ok_and(|b| {
                    b["type"] == "checkpoint.irreversible" && b["rollback"]["rollback_id"] == id
                })
            });
            if let Some(hit) = hit {
                break hit;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no checkpoint.irreversible",
                s.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(signature_verifies(
            SECRET.as_bytes(),
            &received.signature,
            &received.body
        ));
        assert_eq!(
            notify.calls(),
            (0, 0),
            "the irreversible step is never called"
        );

        // 4. The operator decides; the rollback ends.
        assert_eq!(decide(&s, &id, "abort").await.status(), 200);
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "aborted", "{done}");

        // 5. The whole story is in the workflow's ledger, signed by Unwind.
        for exec_act in [
            "circuit_breaker_open",
            "cascade_detected",
            "rollback_start",
            "hitl_decision",
            "rollback_complete",
        ] {
            let (_, page) = s
                .get_json(&format!("/v1/ects?wid={w}&exec_act={exec_act}"))
                .await;
            // Agents' own reports (the dns agent's breaker) sit beside Unwind's.
            let ours: Vec<&Value> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["iss"] == json!(s.coordinator_id))
                .collect();
            assert!(
                !ours.is_empty(),
                "{}: no {exec_act} by Unwind in {w}",
                s.name
            );
            for ect in ours {
                assert_coordinator_signed(&s, ect["token"].as_str().unwrap()).await;
            }
        }
    }
}
