//! Escalations and decisions through real HTTP on every configured store: which rollback
//! outcome raises which escalation and webhook, decisions resolving them with a verifying
//! `hitl_decision` ECT, the resolve route and its authorization.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agents::*;
use common::receiver::*;
use common::server::*;
use serde_json::{Value, json};

async fn escalations(s: &TestServer, query: &str) -> Vec<Value> {
    let (status, body) = s.get_json(&format!("/v1/escalations{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

fn of_rollback<'a>(items: &'a [Value], id: &str, kind: &str) -> Vec<&'a Value> {
    items
        .iter()
        .filter(|e| e["rollback_id"] == id && e["kind"] == kind)
        .collect()
}

/// Waits for an event of `type` about rollback `id`.
async fn event(r: &Receiver, id: &str, event_type: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for got in r.received() {
            let body: Value = serde_json::from_str(&got.body).unwrap();
            if body["type"] == event_type && body["rollback"]["rollback_id"] == id {
                assert!(signature_verifies(
                    SECRET.as_bytes(),
                    &got.signature,
                    &got.body
                ));
                return body;
            }
        }
        assert!(Instant::now() < deadline, "no {event_type} for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `hitl_decision` ECT of rollback `id`, checked against the coordinator's keys.
async fn decision_ect(s: &TestServer, id: &str) -> Value {
    let (status, body) = s
        .get_json("/v1/ects?exec_act=hitl_decision&limit=1000")
        .await;
    assert_eq!(status, 200, "{body}");
    let ect = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["claims"]["ext"]["cascade.rollback_id"] == id)
        .unwrap_or_else(|| panic!("{}: no hitl_decision for {id}: {body}", s.name))
        .clone();
    assert_coordinator_signed(s, ect["token"].as_str().unwrap()).await;
    assert_eq!(ect["iss"], s.coordinator_id.as_str(), "{ect}");
    ect
}

async fn awaiting(s: &TestServer, id: &str) -> Value {
    let r = wait_for(
        s,
        id,
        &["awaiting_decision", "completed", "partial", "failed"],
    )
    .await;
    assert_eq!(r["status"], "awaiting_decision", "{}: {r}", s.name);
    r
}

async fn decide_409(s: &TestServer, id: &str, context: &str) {
    for d in ["proceed_partial", "abort", "retry"] {
        assert_problem(
            decide(s, id, d).await,
            409,
            "not_awaiting_decision",
            context,
        )
        .await;
    }
}

#[tokio::test]
async fn a_critical_cannot_prepare_awaits_a_decision_and_each_decision_is_recorded() {
    let receiver = Receiver::start().await;
    for s in servers_with(with_webhook(receiver.url.clone())).await {
        for decision in ["proceed_partial", "abort", "retry"] {
            let log: Log = Arc::default();
            let a = start_agent(&s, "a", "cannot_prepare", 0, &log).await;
            let wid = wid();
            let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
            s.ingest_ok(&[t_a]).await;
            let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
            let waiting = awaiting(&s, &id).await;

            let open = escalations(&s, "?status=open").await;
            let mine = of_rollback(&open, &id, "critical_cannot_prepare");
            assert_eq!(mine.len(), 1, "{}: {open:?}", s.name);
            let esc = mine[0].clone();
            assert_eq!(esc["status"], "open");
            assert_eq!(esc["wid"], wid.as_str());
            assert_eq!(esc["decision"], Value::Null);
            let ev = event(&receiver, &id, "rollback.awaiting_decision").await;
            let url = ev["decision_url"].as_str().unwrap();
            assert!(
                url.ends_with(&format!("/v1/rollbacks/{id}/decision")),
                "{ev}"
            );
            assert_eq!(ev["rollback"]["status"], "awaiting_decision", "{ev}");

            // The resolve route refuses what needs a decision.
            let r = s
                .client
                .post(s.url(&format!(
                    "/v1/escalations/{}/resolve",
                    esc["id"].as_str().unwrap()
                )))
                .bearer_auth(OPERATOR_TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_problem(r, 409, "decision_required", s.name).await;

            if decision == "retry" {
                a.behave("prepared");
            }
            let r = s
                .client
                .post(s.url(&format!("/v1/rollbacks/{id}/decision")))
                .bearer_auth(OPERATOR_TOKEN)
                .json(&json!({"decision": decision, "comment": "checked with the owner"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{} {decision}", s.name);
            let done = wait_for(&s, &id, TERMINAL).await;
            let expected = match decision {
                "abort" => "aborted",
                "retry" => "completed",
                _ => "failed",
            };
            assert_eq!(done["status"], expected, "{} {decision}: {done}", s.name);

            let resolved = escalations(&s, "?status=resolved").await;
            let esc = of_rollback(&resolved, &id, "critical_cannot_prepare");
            assert_eq!(esc.len(), 1, "{}: {resolved:?}", s.name);
            assert_eq!(esc[0]["decision"], decision);
            assert_eq!(esc[0]["decided_by"], "operator:ops");
            assert!(esc[0]["resolved_at"].is_string());

            let ect = decision_ect(&s, &id).await;
            let ext = &ect["claims"]["ext"];
            assert_eq!(ext["cascade.decision"], decision, "{ect}");
            assert_eq!(ext["cascade.decided_by"], "operator:ops", "{ect}");
            assert_eq!(ext["cascade.comment"], "checked with the owner", "{ect}");
            assert_eq!(
                ext["cascade.escalation_ids"],
                json!([esc[0]["id"]]),
                "{ect}"
            );
            assert_eq!(ect["wid"], wid.as_str(), "{ect}");
            assert_eq!(
                ect["par"],
                json!([waiting["evidence"]["rollback_start"]]),
                "{ect}"
            );

            match decision {
                "abort" => {
                    event(&receiver, &id, "rollback.aborted").await;
                }
                "proceed_partial" => {
                    event(&receiver, &id, "rollback.failed").await;
                    let open = escalations(&s, "?status=open").await;
                    assert_eq!(
                        of_rollback(&open, &id, "failed_rollback").len(),
                        1,
                        "{open:?}"
                    );
                }
                _ => {}
            }
            // A decision on a finished rollback is refused.
            decide_409(&s, &id, s.name).await;
        }
    }
}

#[tokio::test]
async fn irreversible_and_partial_rollbacks_escalate_and_resolve() {
    let receiver = Receiver::start().await;
    for s in servers_with(with_webhook(receiver.url.clone())).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        let b = start_agent(&s, "b", "", 0, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
        let (a1, t_a1) = a.action(&wid, "reconfigure_router", std::slice::from_ref(&cp_a));
        let jti = uuid::Uuid::new_v4().to_string();
        let mut c = checkpoint_claims("b", &jti, &wid, &[&a1]);
        c.insert(
            "ext".into(),
            json!({"cascade.reversible": false, "cascade.rollback_uri": b.uri, "cascade.ttl": 3600}),
        );
        s.ingest_ok(&[t_a, t_a1, s.sign(&c)]).await;
        let id = accepted(&s, json!({"checkpoint_id": cp_a})).await;
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "partial", "{}: {done}", s.name);
        // A decision where none is awaited.
        decide_409(&s, &id, s.name).await;

        let open = escalations(&s, "?status=open").await;
        let irr = of_rollback(&open, &id, "irreversible_checkpoint");
        assert_eq!(irr.len(), 1, "{}: {open:?}", s.name);
        assert_eq!(
            irr[0]["detail"]["checkpoints"][0]["checkpoint_id"],
            jti.as_str()
        );
        let ev = event(&receiver, &id, "checkpoint.irreversible").await;
        assert_eq!(ev["escalation"]["kind"], "irreversible_checkpoint", "{ev}");
        assert_eq!(ev["decision_url"], Value::Null, "{ev}");
        event(&receiver, &id, "rollback.partial").await;
        let partial = of_rollback(&open, &id, "partial_rollback");
        assert_eq!(partial.len(), 1, "{}: {open:?}", s.name);
        let esc_id = partial[0]["id"].as_str().unwrap().to_string();

        // Authorization, then 200 once and 409 after.
        let path = format!("/v1/escalations/{esc_id}/resolve");
        let post = |token: Option<&'static str>| {
            let mut rq = s.client.post(s.url(&path)).json(&json!({"comment": "ok"}));
            if let Some(t) = token {
                rq = rq.bearer_auth(t);
            }
            rq.send()
        };
        assert_problem(post(None).await.unwrap(), 401, "unauthenticated", s.name).await;
        assert_problem(
            post(Some(READER_TOKEN)).await.unwrap(),
            403,
            "forbidden",
            s.name,
        )
        .await;
        let r = post(Some(OPERATOR_TOKEN)).await.unwrap();
        assert_eq!(r.status(), 200, "{}", s.name);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "resolved", "{body}");
        assert_eq!(body["decided_by"], "operator:ops", "{body}");
        assert_eq!(body["decision"], Value::Null, "{body}");
        assert_problem(
            post(Some(OPERATOR_TOKEN)).await.unwrap(),
            409,
            "not_open",
            s.name,
        )
        .await;
        let r = s
            .client
            .post(s.url("/v1/escalations/nope/resolve"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_problem(r, 404, "not_found", s.name).await;

        // Listing needs a token; a reader may list.
        let r = s.client.get(s.url("/v1/escalations")).send().await.unwrap();
        assert_problem(r, 401, "unauthenticated", s.name).await;
        let r = s
            .client
            .get(s.url("/v1/webhook-deliveries"))
            .send()
            .await
            .unwrap();
        assert_problem(r, 401, "unauthenticated", s.name).await;
        let all = escalations(&s, "?limit=1").await;
        assert_eq!(all.len(), 1);
    }
}

#[tokio::test]
async fn a_decision_is_refused_while_a_rollback_runs() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 2000, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
        s.ingest_ok(&[t_a]).await;
        let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
        wait_for(&s, &id, &["executing"]).await;
        decide_409(&s, &id, s.name).await;
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{done}");
        decide_409(&s, &id, s.name).await;
        assert!(
            escalations(&s, "").await.is_empty(),
            "{}: a completed rollback escalates nothing",
            s.name
        );
    }
}
