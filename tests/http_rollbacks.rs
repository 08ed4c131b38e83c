//! Rollbacks end to end: Unwind over real HTTP on both stores, against real agents built from
//! the `unwind-agent` crate, each an HTTP server on 127.0.0.1.

mod common;

use common::agents::*;
use common::server::*;
use serde_json::{Value, json};

#[tokio::test]
async fn the_seed_figure_rolls_back_b_then_a_with_signed_evidence() {
    for s in servers().await {
        let log: Log = std::sync::Arc::default();
        let a = start_agent(&s, "a", "prepared", 50, &log).await;
        // b is slow, so the first rollback is still running when the broader one arrives.
        let b = start_agent(&s, "b", "prepared", 400, &log).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let (cp_a, cp_b, b1) = seed_figure(&s, &a, &b, &wid).await;

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
            .rposition(|(n, p, _, _)| n == "b" && *p == "end")
            .unwrap();
        let start_a = log
            .iter()
            .rposition(|(n, p, _, _)| n == "a" && *p == "start")
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
                .filter(|(_, p, c, _)| *p == "start" && c == cp)
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
        let log: Log = std::sync::Arc::default();
        let a = start_agent(&s, "a", "prepared", 300, &log).await;
        let b = start_agent(&s, "b", "prepared", 300, &log).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let (cp_a, cp_b, b1) = seed_figure(&s, &a, &b, &wid).await;
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
            request(&s, json!({"checkpoint_id": b1})).await,
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
            request(&s, json!({"checkpoint_id": cp_a, "trigger_ect": b1})).await,
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
        let log: Log = std::sync::Arc::default();
        let a = start_agent(&s, "a", "cannot_prepare", 0, &log).await;
        let b = start_agent(&s, "b", "prepared", 0, &log).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let (cp_a, _, _) = seed_figure(&s, &a, &b, &wid).await;
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
            log.lock().unwrap().is_empty(),
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

#[tokio::test]
async fn a_completed_full_workflow_rollback_ends_the_workflow() {
    for s in servers().await {
        let log: Log = std::sync::Arc::default();
        let a = start_agent(&s, "a", "prepared", 0, &log).await;
        let b = start_agent(&s, "b", "prepared", 0, &log).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let figure = sign_figure(&a, &b, &wid).await;
        s.ingest_ok(&figure.tokens).await;
        // Before the rollback, the workflow takes new tokens.
        let (late_before, token) = a.action(&wid, "audit", std::slice::from_ref(&figure.b2));
        assert_eq!(s.post_token(&token).await.status(), 201, "{}", s.name);

        let id = accepted(
            &s,
            json!({"checkpoint_id": figure.cp_a, "scope": "full_workflow"}),
        )
        .await;
        let done = wait_for(&s, &id, &["completed", "partial", "failed"]).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);

        // After it, an agent's new token into that workflow is refused, alone or in a batch...
        let (_, late) = a.action(&wid, "audit", std::slice::from_ref(&late_before));
        let r = s.post_token(&late).await;
        assert_problem(r, 409, "workflow_terminated", s.name).await;
        let r = s
            .client
            .post(s.url("/v1/ects"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"tokens": [late.clone()]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", s.name);
        let batch: Value = r.json().await.unwrap();
        assert_eq!(batch["results"][0]["status"], "rejected");
        assert_eq!(batch["results"][0]["error"]["code"], "workflow_terminated");
        // ... while a retry of a token it already holds is still a duplicate, and other
        // workflows are not affected.
        assert_eq!(s.post_token(&figure.tokens[0]).await.status(), 200);
        let (_, other) = a.action("another-workflow", "plan", &[]);
        assert_eq!(s.post_token(&other).await.status(), 201, "{}", s.name);
        // Unwind's own evidence of the rollback was recorded in the ended workflow.
        let complete = done["evidence"]["rollback_complete"].as_str().unwrap();
        let (status, _) = s.get_json(&format!("/v1/ects/{complete}")).await;
        assert_eq!(status, 200);
    }
}

/// One event of a stream: (event, id, data).
fn sse_events(text: &str) -> Vec<(String, Option<i64>, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let (mut event, mut id, mut data) = (None, None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            Some((event?, id, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn the_event_stream_sends_the_whole_rollback_first_and_last_and_only_changed_steps_between() {
    for s in servers_with(short).await {
        let log: Log = std::sync::Arc::default();
        // Slow agents: every step changes at its own time.
        let a = start_agent(&s, "a", "prepared", 700, &log).await;
        let b = start_agent(&s, "b", "prepared", 700, &log).await;
        let wid = uuid::Uuid::new_v4().to_string();
        let (cp_a, _, _) = seed_figure(&s, &a, &b, &wid).await;
        let id = accepted(&s, json!({"checkpoint_id": cp_a})).await;
        let r = s
            .client
            .get(s.url(&format!("/v1/rollbacks/{id}/events")))
            .bearer_auth(READER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = tokio::time::timeout(std::time::Duration::from_secs(60), r.text())
            .await
            .expect("the stream ends after a terminal state")
            .unwrap();
        let events = sse_events(&text);
        let (first, last) = (&events[0], events.last().unwrap());
        assert_eq!(first.0, "rollback", "{}: {text}", s.name);
        assert_eq!(first.2["rollback_id"], id.as_str());
        assert_eq!(
            last.0, "rollback",
            "the last event is the whole rollback: {text}"
        );
        assert_eq!(last.2["status"], "completed", "{text}");
        let (_, now) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
        assert_eq!(last.2, now, "the last event is the resource as served");
        let total = now["steps"].as_array().unwrap().len();
        assert_eq!(total, 2);

        // In between: deltas, each with only the steps that changed since the event before.
        let middle = &events[1..events.len() - 1];
        assert!(!middle.is_empty(), "{}: no change streamed: {text}", s.name);
        let mut known: std::collections::HashMap<String, Value> = first.2["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|st| {
                (
                    st["checkpoint_id"].as_str().unwrap().to_string(),
                    st.clone(),
                )
            })
            .collect();
        let mut carried = 0;
        for (event, id, delta) in middle {
            assert_eq!(event, "rollback.delta", "{text}");
            let mut keys: Vec<&str> = delta
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                ["status", "steps", "updated_at", "version"],
                "{delta}"
            );
            assert_eq!(Some(delta["version"].as_i64().unwrap()), *id);
            for step in delta["steps"].as_array().unwrap() {
                let cp = step["checkpoint_id"].as_str().unwrap().to_string();
                assert_ne!(
                    known.get(&cp),
                    Some(step),
                    "an unchanged step was sent again: {text}"
                );
                known.insert(cp, step.clone());
                carried += 1;
            }
        }
        assert!(
            carried < middle.len() * total,
            "{}: some delta leaves out a step that did not change: {text}",
            s.name
        );
        assert!(
            events.windows(2).all(|w| w[0].1 < w[1].1),
            "{}: ids do not increase: {text}",
            s.name
        );
    }
}
