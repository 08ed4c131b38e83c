//! Rollback outcomes through real behaviour: concurrency, retries, timeouts, unreachable and
//! refusing agents, irreversible and expired checkpoints, decisions, authorization, rate
//! limits, event streams and conflicts across two servers on one database. Every test runs on
//! each configured store, against in-process agents of the `unwind-agent` crate (behind a fault
//! proxy where a fault is needed). Only tests about deadlines use short call timeouts
//! ([`deadlines`]); the others keep the generous ones of [`short`].

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::agents::*;
use common::fault_proxy::{Call, Fault, FaultProxy};
use common::server::*;
use serde_json::{Value, json};

#[tokio::test]
async fn siblings_execute_concurrently_and_their_parent_after_both() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let p = start_agent(&s, "p", "", 200, &log).await;
        let c1 = start_agent(&s, "c1", "", 200, &log).await;
        let c2 = start_agent(&s, "c2", "", 200, &log).await;
        let wid = wid();
        let (cp_p, t_p) = p.checkpoint(&wid, &[]).await;
        let (act, t_act) = p.action(&wid, "fan_out", std::slice::from_ref(&cp_p));
        let (cp_1, t_1) = c1.checkpoint(&wid, std::slice::from_ref(&act)).await;
        let (cp_2, t_2) = c2.checkpoint(&wid, std::slice::from_ref(&act)).await;
        s.ingest_ok(&[t_p, t_act, t_1, t_2]).await;

        let id = accepted(&s, json!({"checkpoint_id": cp_p, "scope": "sub_dag"})).await;
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);

        let log = log.lock().unwrap().clone();
        let at = |cp: &str, phase: &str| {
            log.iter()
                .find(|(_, ph, c, _)| c == cp && *ph == phase)
                .map(|(_, _, _, t)| *t)
                .unwrap_or_else(|| panic!("{}: no {phase} of {cp}: {log:?}", s.name))
        };
        let (s1, e1, s2, e2) = (
            at(&cp_1, "start"),
            at(&cp_1, "end"),
            at(&cp_2, "start"),
            at(&cp_2, "end"),
        );
        assert!(
            s1 < e2 && s2 < e1,
            "{}: C1 and C2 did not overlap: {log:?}",
            s.name
        );
        assert!(
            at(&cp_p, "start") >= e1.max(e2),
            "{}: P started before its children ended: {log:?}",
            s.name
        );
    }
}

#[tokio::test]
async fn retried_calls_are_all_counted_in_attempts() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "fail:2", 0, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
        s.ingest_ok(&[t_a]).await;

        let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        let (prepare, execute) = a.calls();
        assert_eq!((prepare, execute), (3, 1), "{}", s.name);
        assert_eq!(
            step(&done, &cp_a)["attempts"],
            json!(prepare + execute),
            "{}: {done}",
            s.name
        );
    }
}

#[tokio::test]
async fn a_hanging_critical_execute_awaits_a_decision_and_abort_ends_it() {
    for s in servers_with(deadlines).await {
        let log: Log = Arc::default();
        // Restores never finish within the deadline.
        let a = start_agent(&s, "a", "", 3_600_000, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
        s.ingest_ok(&[t_a]).await;

        let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
        let waiting = wait_for(
            &s,
            &id,
            &["awaiting_decision", "completed", "partial", "failed"],
        )
        .await;
        assert_eq!(
            waiting["status"], "awaiting_decision",
            "{}: {waiting}",
            s.name
        );
        let st = step(&waiting, &cp_a);
        assert_eq!(st["prepare_status"], "prepared", "{st}");
        assert_eq!(st["execute_status"], "failed", "{st}");
        assert!(
            st["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{st}"
        );

        assert_eq!(decide(&s, &id, "abort").await.status(), 200);
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "aborted", "{}: {done}", s.name);
        assert_eq!(complete_status(&s, &done).await, "aborted", "{}", s.name);
    }
}

#[tokio::test]
async fn a_stopped_agent_is_unreachable_at_prepare() {
    for s in servers_with(deadlines).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
        s.ingest_ok(&[t_a]).await;
        a.task.abort();
        while !a.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
        let waiting = wait_for(
            &s,
            &id,
            &["awaiting_decision", "completed", "partial", "failed"],
        )
        .await;
        assert_eq!(
            waiting["status"], "awaiting_decision",
            "{}: {waiting}",
            s.name
        );
        let st = step(&waiting, &cp_a);
        assert_eq!(st["prepare_status"], "unreachable", "{}: {st}", s.name);
        assert_eq!(st["execute_status"], "pending", "{}: {st}", s.name);
        assert!(st["error"]["code"].is_string(), "{st}");
        assert!(st["attempts"].as_u64().unwrap() >= 1, "{st}");
    }
}

#[tokio::test]
async fn cannot_prepare_off_the_critical_path_is_skipped() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        let b = start_agent(&s, "b", "cannot_prepare", 0, &log).await;
        let wid = wid();
        let (cp_a, cp_b, _) = seed_figure(&s, &a, &b, &wid).await;

        let id = accepted(&s, json!({"checkpoint_id": cp_a})).await;
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "partial", "{}: {done}", s.name);
        let sb = step(&done, &cp_b);
        assert_eq!(sb["prepare_status"], "cannot_prepare", "{sb}");
        assert_eq!(sb["execute_status"], "skipped", "{sb}");
        assert_eq!(step(&done, &cp_a)["execute_status"], "completed");
        assert_eq!(done["failed_agents"], json!([agent_id("b")]), "{done}");
        assert_eq!(b.calls().1, 0, "b was never asked to execute");
        assert_eq!(complete_status(&s, &done).await, "partial");
    }
}

/// A checkpoint by `agent/<name>` marked irreversible, its rollback endpoint at `uri`.
fn irreversible(
    s: &TestServer,
    name: &str,
    wid: &str,
    parents: &[&str],
    uri: &str,
) -> (String, String) {
    let jti = uuid::Uuid::new_v4().to_string();
    let mut c = checkpoint_claims(name, &jti, wid, parents);
    c.insert(
        "ext".into(),
        json!({
            "cascade.reversible": false,
            "cascade.rollback_uri": uri,
            "cascade.ttl": 3600,
            "cascade.target": "router-1",
        }),
    );
    (jti, s.sign(&c))
}

#[tokio::test]
async fn an_irreversible_checkpoint_is_never_called_and_escalated() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        let b = start_agent(&s, "b", "", 0, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
        let (a1, t_a1) = a.action(&wid, "reconfigure_router", std::slice::from_ref(&cp_a));
        let (cp_b, t_b) = irreversible(&s, "b", &wid, &[&a1], &b.uri);
        s.ingest_ok(&[t_a, t_a1, t_b]).await;

        // Off the critical path: the rest proceeds, partial.
        let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "sub_dag"})).await;
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "partial", "{}: {done}", s.name);
        assert_eq!(step(&done, &cp_b)["execute_status"], "escalated", "{done}");
        assert_eq!(step(&done, &cp_a)["execute_status"], "completed", "{done}");
        assert_eq!(done["failed_agents"], json!([agent_id("b")]), "{done}");

        // The critical one: a decision is needed.
        let id = accepted(&s, json!({"checkpoint_id": cp_b, "scope": "single"})).await;
        let waiting = wait_for(
            &s,
            &id,
            &["awaiting_decision", "completed", "partial", "failed"],
        )
        .await;
        assert_eq!(
            waiting["status"], "awaiting_decision",
            "{}: {waiting}",
            s.name
        );
        assert_eq!(step(&waiting, &cp_b)["execute_status"], "escalated");
        assert_eq!(
            b.calls(),
            (0, 0),
            "{}: the irreversible checkpoint was called",
            s.name
        );
    }
}

#[tokio::test]
async fn an_expired_checkpoint_cannot_prepare() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint_ttl(&wid, &[], 1).await;
        s.ingest_ok(&[t_a]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
        let waiting = wait_for(
            &s,
            &id,
            &["awaiting_decision", "completed", "partial", "failed"],
        )
        .await;
        let st = step(&waiting, &cp_a);
        assert_eq!(st["prepare_status"], "cannot_prepare", "{}: {st}", s.name);
        assert_eq!(
            st["error"]["code"], "checkpoint_expired",
            "{}: {st}",
            s.name
        );
        assert_eq!(a.calls(), (0, 0), "an expired checkpoint is not called");
    }
}

#[tokio::test]
async fn retry_after_cannot_prepare_completes() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "cannot_prepare", 0, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
        s.ingest_ok(&[t_a]).await;

        let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
        let waiting = wait_for(
            &s,
            &id,
            &["awaiting_decision", "completed", "partial", "failed"],
        )
        .await;
        assert_eq!(
            waiting["status"], "awaiting_decision",
            "{}: {waiting}",
            s.name
        );
        assert_eq!(step(&waiting, &cp_a)["prepare_status"], "cannot_prepare");
        a.behave("prepared");
        assert_eq!(decide(&s, &id, "retry").await.status(), 200);
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        let st = step(&done, &cp_a);
        assert_eq!(st["prepare_status"], "prepared", "{st}");
        assert_eq!(st["execute_status"], "completed", "{st}");
        assert_eq!(st["error"], Value::Null, "{st}");
        assert_eq!(st["attempts"], 3, "{st}");
        assert_eq!(done["failed_agents"], json!([]), "{done}");
        assert_eq!(complete_status(&s, &done).await, "completed");
    }
}

#[tokio::test]
async fn failed_or_escalated_execute_off_the_critical_path_is_partial() {
    for s in servers_with(short).await {
        for (answer, expected) in [("failed", "failed"), ("escalated", "escalated")] {
            let log: Log = Arc::default();
            let a = start_agent(&s, "a", "", 0, &log).await;
            let b = start_agent(&s, "b", &format!("execute={answer}"), 0, &log).await;
            let wid = wid();
            let (cp_a, cp_b, _) = seed_figure(&s, &a, &b, &wid).await;

            let id = accepted(&s, json!({"checkpoint_id": cp_a})).await;
            let done = wait_for(&s, &id, TERMINAL).await;
            assert_eq!(done["status"], "partial", "{} {answer}: {done}", s.name);
            assert_eq!(step(&done, &cp_b)["execute_status"], expected, "{done}");
            assert_eq!(step(&done, &cp_a)["execute_status"], "completed", "{done}");
            assert_eq!(done["failed_agents"], json!([agent_id("b")]), "{done}");
        }
    }
}

/// An `Execution-Context` token of `agent/<name>` in `wid`, addressed to Unwind.
fn context(s: &TestServer, name: &str, wid: &str) -> String {
    let mut c = claims(
        name,
        &uuid::Uuid::new_v4().to_string(),
        wid,
        "request_rollback",
        &[],
    );
    c.insert("aud".into(), json!([s.coordinator_id]));
    s.sign(&c)
}

async fn agent_request(s: &TestServer, token: &str, body: Value) -> reqwest::Response {
    s.client
        .post(s.url("/v1/rollbacks"))
        .header("Execution-Context", token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn agents_may_ask_only_for_what_they_are_part_of() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        let b = start_agent(&s, "b", "", 0, &log).await;
        let wid = wid();
        let (cp_a, _, _) = seed_figure(&s, &a, &b, &wid).await;
        // z only posted an unrelated root ECT into the workflow.
        let z_root = claims(
            "z",
            &uuid::Uuid::new_v4().to_string(),
            &wid,
            "unrelated",
            &[],
        );
        s.ingest_ok(&[s.sign(&z_root)]).await;

        let b_ctx = context(&s, "b", &wid);
        let r = agent_request(
            &s,
            &b_ctx,
            json!({"checkpoint_id": cp_a, "scope": "full_workflow"}),
        )
        .await;
        assert_problem(r, 403, "forbidden", "full_workflow").await;
        let r = agent_request(
            &s,
            &b_ctx,
            json!({"checkpoint_id": cp_a, "on_cannot_prepare": "abort"}),
        )
        .await;
        assert_problem(r, 403, "forbidden", "on_cannot_prepare").await;
        let r = agent_request(&s, &context(&s, "z", &wid), json!({"checkpoint_id": cp_a})).await;
        assert_problem(r, 403, "forbidden", "unrelated root").await;
        let r = agent_request(
            &s,
            &context(&s, "b", &self::wid()),
            json!({"checkpoint_id": cp_a}),
        )
        .await;
        assert_problem(r, 403, "forbidden", "other wid").await;
        let mut forged = claims(
            "b",
            &uuid::Uuid::new_v4().to_string(),
            &wid,
            "request_rollback",
            &[],
        );
        forged.insert("aud".into(), json!([s.coordinator_id]));
        let forged = s
            .other_key
            .sign_ect(&forged, unwind::ect::Profile::Draft00)
            .unwrap();
        let r = agent_request(&s, &forged, json!({"checkpoint_id": cp_a})).await;
        assert_problem(r, 401, "unauthenticated", "forged").await;

        // b issued ECTs below A: it may ask for A's sub_dag.
        let r = agent_request(
            &s,
            &b_ctx,
            json!({"checkpoint_id": cp_a, "scope": "sub_dag"}),
        )
        .await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 202, "{}: {body}", s.name);
        assert_eq!(body["requested_by"], agent_id("b"), "{body}");
        let id = body["rollback_id"].as_str().unwrap().to_string();
        let done = wait_for(&s, &id, TERMINAL).await;

        // Unwind's own evidence names the coordinator in `aud`, and agents receive it: it must
        // not let its holder act as an agent (or as the coordinator).
        let start = done["evidence"]["rollback_start"].as_str().unwrap();
        let (_, record) = s.get_json(&format!("/v1/ects/{start}")).await;
        let token = record["token"].as_str().unwrap();
        let r = agent_request(&s, token, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
        assert_problem(
            r,
            401,
            "unauthenticated",
            "the coordinator's own rollback_start",
        )
        .await;
    }
}

#[tokio::test]
async fn rollback_requests_are_rate_limited_per_requester() {
    for s in servers_with(|c| {
        short(c);
        c.rollback.requests_per_s = 1;
        c.rollback.requests_burst = 2;
    })
    .await
    {
        let body = json!({"checkpoint_id": "no-such-checkpoint"});
        for i in 0..2 {
            assert_eq!(
                request(&s, body.clone()).await.status(),
                404,
                "{} #{i}",
                s.name
            );
        }
        let r = request(&s, body.clone()).await;
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert_problem(r, 429, "rate_limited", "third").await;
        assert!(retry_after.is_some_and(|n| n >= 1), "{retry_after:?}");
        // Another requester has its own budget.
        let r = agent_request(&s, &context(&s, "a", &wid()), body.clone()).await;
        assert_eq!(r.status(), 404, "{}", s.name);
    }
}

/// Parses an event stream into (event, id, data) triples.
fn parse_sse(text: &str) -> Vec<(String, i64, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
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
        if let Some(event) = event {
            out.push((
                event,
                id.expect("an id"),
                serde_json::from_str(&data).unwrap(),
            ));
        }
    }
    out
}

async fn events(s: &TestServer, id: &str) -> reqwest::Response {
    s.client
        .get(s.url(&format!("/v1/rollbacks/{id}/events")))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn event_streams_follow_a_rollback_to_its_end() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 400, &log).await;
        let b = start_agent(&s, "b", "", 400, &log).await;
        let wid = wid();
        let (cp_a, _, _) = seed_figure(&s, &a, &b, &wid).await;
        let id = accepted(&s, json!({"checkpoint_id": cp_a})).await;

        let r = events(&s, &id).await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let text = tokio::time::timeout(Duration::from_secs(30), r.text())
            .await
            .expect("the stream ends after a terminal state")
            .unwrap();
        let evs = parse_sse(&text);
        assert!(evs.len() >= 2, "{}: {text}", s.name);
        // The whole rollback first and last, its changes in between.
        let ends = [&evs[0], &evs[evs.len() - 1]];
        assert!(
            ends.iter()
                .all(|(e, _, d)| e == "rollback" && d["rollback_id"] == id.as_str()),
            "{text}"
        );
        assert!(
            evs[1..evs.len() - 1]
                .iter()
                .all(|(e, _, _)| e == "rollback.delta"),
            "{text}"
        );
        assert!(
            evs.windows(2).all(|w| w[0].1 < w[1].1),
            "{}: ids do not increase: {text}",
            s.name
        );
        assert!(
            !TERMINAL.contains(&evs[0].2["status"].as_str().unwrap()),
            "{text}"
        );
        let last = &evs.last().unwrap().2;
        assert_eq!(last["status"], "completed", "{text}");

        // Opened after the end: the current state, then the stream ends.
        let (_, now) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
        let text = tokio::time::timeout(Duration::from_secs(10), events(&s, &id).await.text())
            .await
            .expect("the stream of a finished rollback ends")
            .unwrap();
        let evs = parse_sse(&text);
        assert_eq!(evs.len(), 1, "{text}");
        assert_eq!(evs[0].2, now);

        let unknown = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        assert_problem(events(&s, &unknown).await, 404, "not_found", "unknown").await;
    }
}

#[tokio::test]
async fn an_event_stream_whose_store_fails_ends_with_an_error_event() {
    use sqlx::Connection as _;

    let s = servers_with(short)
        .await
        .into_iter()
        .find(|s| s.name == "sqlite")
        .expect("a server on SQLite");
    let log: Log = Arc::default();
    let a = start_agent(&s, "a", "cannot_prepare", 0, &log).await;
    let b = start_agent(&s, "b", "", 0, &log).await;
    let wid = wid();
    let (cp_a, _, _) = seed_figure(&s, &a, &b, &wid).await;
    let id = accepted(&s, json!({"checkpoint_id": cp_a})).await;
    wait_for(&s, &id, &["awaiting_decision"]).await;

    // The stream stays open while the rollback waits: read up to its first event.
    let mut stream = events(&s, &id).await;
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("the current state first")
            .unwrap()
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: rollback"), "{text}");

    // Another connection takes the table away under the running server.
    let mut conn = sqlx::SqliteConnection::connect(s.database_url())
        .await
        .expect("open the server's database");
    sqlx::query("ALTER TABLE rollbacks RENAME TO rollbacks_gone")
        .execute(&mut conn)
        .await
        .expect("rename the rollbacks table");
    let _ = conn.close().await;

    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rest = String::new();
        while let Some(chunk) = stream.chunk().await.unwrap() {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        rest
    })
    .await
    .expect("the stream ends after the error event");
    let blocks: Vec<&str> = rest
        .split("\n\n")
        .map(str::trim)
        .filter(|b| !b.is_empty() && !b.starts_with(':'))
        .collect();
    let last = *blocks.last().expect("an event after the failure");
    let lines: Vec<&str> = last.lines().collect();
    assert!(
        lines.contains(&"event: error"),
        "not an error event: {rest}"
    );
    let data = lines
        .iter()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data: {rest}"));
    let problem: Value = serde_json::from_str(data).expect("the error event's data is JSON");
    assert_eq!(problem["code"], "internal", "{problem}");
    assert_eq!(problem["status"], 500, "{problem}");
    assert!(
        problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{problem}"
    );
    assert!(
        blocks
            .iter()
            .all(|b| b.starts_with("event: rollback") || *b == last),
        "only rollback events before the error: {rest}"
    );
}

#[tokio::test]
async fn concurrent_conflicts_on_two_servers_answer_like_a_serial_run() {
    let servers = servers_with(short).await;
    let Some(first) = servers.into_iter().find(|s| s.name == "postgres") else {
        return;
    };
    let second = start_on_same_database(&first, &short).await;
    let log: Log = Arc::default();
    // Slow restores keep the winners active while the requests race.
    let a = start_agent(&first, "a", "", 1500, &log).await;
    let b = start_agent(&first, "b", "", 1500, &log).await;
    let (w1, w2) = (wid(), wid());
    let (a1, b1, _) = seed_figure(&first, &a, &b, &w1).await;
    let (a2, b2, _) = seed_figure(&first, &a, &b, &w2).await;

    // Per workflow: A's sub_dag and B's sub_dag share B, and have equal scope.
    let mut bodies = Vec::new();
    for i in 0..20 {
        let cp = match i % 4 {
            0 => &a1,
            1 => &b1,
            2 => &a2,
            _ => &b2,
        };
        bodies.push(json!({"checkpoint_id": cp, "scope": "sub_dag"}));
    }
    let answers = futures::future::join_all(bodies.iter().enumerate().map(|(i, body)| {
        let s = if i % 2 == 0 { &first } else { &second };
        async move {
            let r = request(s, body.clone()).await;
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    }))
    .await;

    for (w, cps) in [(&w1, [&a1, &b1]), (&w2, [&a2, &b2])] {
        let mine: Vec<&(u16, Value)> = answers
            .iter()
            .zip(&bodies)
            .filter(|(_, body)| cps.iter().any(|cp| body["checkpoint_id"] == cp.as_str()))
            .map(|(a, _)| a)
            .collect();
        assert_eq!(mine.len(), 10);
        let winners: Vec<&Value> = mine
            .iter()
            .filter(|(s, _)| *s == 202)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(winners.len(), 1, "{w}: {answers:?}");
        let winner = winners[0]["rollback_id"].as_str().unwrap();
        for (status, body) in mine.iter().filter(|(s, _)| *s != 202) {
            assert_eq!(*status, 409, "{body}");
            assert_eq!(body["code"], "rollback_conflict", "{body}");
            assert_eq!(body["conflicting_rollback_id"], winner, "{body}");
        }
    }

    // No two non-terminal rollbacks share a checkpoint.
    let (_, page) = first.get_json("/v1/rollbacks?limit=1000").await;
    let mut held = std::collections::HashSet::new();
    for r in page["items"].as_array().unwrap() {
        if TERMINAL.contains(&r["status"].as_str().unwrap()) {
            continue;
        }
        for st in r["steps"].as_array().unwrap() {
            let cp = st["checkpoint_id"].as_str().unwrap().to_string();
            assert!(held.insert(cp.clone()), "{cp} held twice: {page}");
        }
    }
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
}

#[tokio::test]
async fn every_step_gets_its_own_deadline() {
    // Each restore fits in the deadline, but both together do not.
    for s in servers_with(|c| {
        deadlines(c);
        c.rollback.agent_timeout_ms = 2900;
    })
    .await
    {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 1700, &log).await;
        let b = start_agent(&s, "b", "", 1700, &log).await;
        let wid = wid();
        let (cp_a, _, _) = seed_figure(&s, &a, &b, &wid).await;
        let id = accepted(&s, json!({"checkpoint_id": cp_a})).await;
        let done = wait_for(
            &s,
            &id,
            &["awaiting_decision", "completed", "partial", "failed"],
        )
        .await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
    }
}

#[tokio::test]
async fn retry_after_a_failed_critical_execute_runs_it_again() {
    // The failing calls open the agent's circuit breaker; a short cooldown lets the retried
    // step's probe through within its deadline.
    let adjust = |c: &mut unwind::config::Config| {
        deadlines(c);
        c.circuit.cooldown_s = 1;
    };
    for s in servers_with(adjust).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        // Every execute answers 503 (the agent never sees it) until the proxy heals.
        let proxy = FaultProxy::start(&a.uri).await;
        proxy.plan(Call::Execute, Fault::Status(503), None);
        let wid = wid();
        let (jti, token) = a.checkpoint_at(&wid, &[], &proxy.uri).await;
        s.ingest_ok(&[token]).await;

        let id = accepted(&s, json!({"checkpoint_id": jti, "scope": "single"})).await;
        let waiting = wait_for(
            &s,
            &id,
            &["awaiting_decision", "completed", "partial", "failed"],
        )
        .await;
        assert_eq!(
            waiting["status"], "awaiting_decision",
            "{}: {waiting}",
            s.name
        );
        assert_eq!(
            step(&waiting, &jti)["execute_status"],
            "failed",
            "{waiting}"
        );
        assert!(proxy.injected() >= 1, "{}", s.name);
        proxy.heal();
        assert_eq!(decide(&s, &id, "retry").await.status(), 200);
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        assert_eq!(step(&done, &jti)["execute_status"], "completed", "{done}");
        assert_eq!(a.calls().1, 1, "{}: the agent executed once", s.name);
    }
}

#[tokio::test]
async fn a_retrying_step_shows_its_attempts_and_last_error_while_it_retries() {
    let patient = |c: &mut unwind::config::Config| {
        short(c);
        c.rollback.step_deadline_s = 30;
    };
    for s in servers_with(patient).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "fail:1000", 0, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
        s.ingest_ok(&[t_a]).await;

        let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
        let started = std::time::Instant::now();
        let seen = loop {
            let (_, rb) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
            let st = step(&rb, &cp_a);
            if st["attempts"].as_u64().is_some_and(|n| n >= 2) {
                break rb;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{}: attempts never shown while retrying: {rb}",
                s.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(seen["status"], "preparing", "{}: {seen}", s.name);
        let st = step(&seen, &cp_a);
        assert_eq!(st["prepare_status"], "pending", "{st}");
        assert!(
            st["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{}: the last error is not shown: {st}",
            s.name
        );

        // The agent recovers: the step completes and every call is counted once.
        a.behave("");
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        let (prepare, execute) = a.calls();
        let st = step(&done, &cp_a);
        assert_eq!(
            st["attempts"],
            json!(prepare + execute),
            "{}: {done}",
            s.name
        );
        assert_eq!(st["error"], Value::Null, "{st}");
    }
}

#[tokio::test]
async fn a_rollback_past_its_evidence_lifetime_ends_failed() {
    let brief = |c: &mut unwind::config::Config| {
        short(c);
        c.rollback.evidence_ttl_s = 2;
    };
    for s in servers_with(brief).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "cannot_prepare", 0, &log).await;
        let wid = wid();
        let (cp_a, t_a) = a.checkpoint(&wid, &[]).await;
        s.ingest_ok(&[t_a]).await;

        // On the critical path: it waits for a decision that never comes.
        let id = accepted(&s, json!({"checkpoint_id": cp_a, "scope": "single"})).await;
        let waiting = wait_for(&s, &id, &["awaiting_decision", "failed", "completed"]).await;
        assert_eq!(
            waiting["status"], "awaiting_decision",
            "{}: {waiting}",
            s.name
        );

        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "failed", "{}: {done}", s.name);
        assert_eq!(complete_status(&s, &done).await, "failed", "{}", s.name);
        let st = step(&done, &cp_a);
        assert_eq!(st["error"]["code"], "rollback_expired", "{}: {st}", s.name);
        assert_eq!(done["failed_agents"], json!([agent_id("a")]), "{done}");
        // Too late for a decision.
        assert_eq!(decide(&s, &id, "retry").await.status(), 409, "{}", s.name);
    }
}

/// More agents than one `rollback_start` can name within the token limit: each agent gets its
/// own context, recorded in the ledger, and verifies it.
#[tokio::test]
async fn agents_beyond_one_audience_get_their_own_verified_context() {
    let narrow = |c: &mut unwind::config::Config| {
        short(c);
        c.ect.max_token_bytes = 1500;
    };
    for s in servers_with(narrow).await {
        let log: Log = Arc::default();
        let long = |i: usize| format!("agent-{i}-{}", "x".repeat(100));
        let mut agents = Vec::new();
        for i in 0..5 {
            agents.push(start_agent(&s, &long(i), "", 0, &log).await);
        }
        let wid = wid();
        let (root, t_root) = agents[0].checkpoint(&wid, &[]).await;
        let (act, t_act) = agents[0].action(&wid, "fan_out", std::slice::from_ref(&root));
        let mut tokens = vec![t_root, t_act];
        for a in &agents[1..] {
            tokens.push(a.checkpoint(&wid, std::slice::from_ref(&act)).await.1);
        }
        s.ingest_ok(&tokens).await;

        let id = accepted(&s, json!({"checkpoint_id": root, "scope": "sub_dag"})).await;
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        assert_eq!(done["steps"].as_array().unwrap().len(), 5, "{done}");
        for a in &agents {
            assert_eq!(
                a.calls(),
                (1, 1),
                "{}: each agent prepared and executed once",
                s.name
            );
        }

        let start_jti = done["evidence"]["rollback_start"].as_str().unwrap();
        let (_, start) = s.get_json(&format!("/v1/ects/{start_jti}")).await;
        assert_eq!(start["claims"]["aud"], json!([s.coordinator_id]), "{start}");
        assert_eq!(start["ext"]["cascade.audience"], "per_agent", "{start}");
        assert_eq!(start["ext"]["cascade.agents"], 5, "{start}");
        let (_, starts) = s
            .get_json(&format!("/v1/ects?wid={wid}&exec_act=rollback_start"))
            .await;
        let contexts: Vec<&Value> = starts["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["jti"] != start_jti)
            .collect();
        assert_eq!(
            contexts.len(),
            5,
            "{}: one context per agent: {starts}",
            s.name
        );
        for c in contexts {
            assert_eq!(c["par"], json!([start_jti]), "{c}");
            assert_eq!(c["ext"]["cascade.context_of"], json!(start_jti), "{c}");
            let aud = c["claims"]["aud"].as_array().unwrap();
            assert_eq!(aud.len(), 2, "{c}");
            assert_eq!(aud[0], json!(s.coordinator_id), "{c}");
            assert!(c["token"].as_str().unwrap().len() <= 1500, "{c}");
        }
    }
}

/// More concurrent calls than the store has connections: calls keep moving while the driver
/// writes their results (they once waited for the driver, which waited for a connection
/// that a suspended call held).
#[tokio::test]
async fn a_rollback_wider_than_the_connection_pool_completes() {
    let wide = |c: &mut unwind::config::Config| {
        short(c);
        c.rollback.step_deadline_s = 60;
        c.rollback.max_concurrency = 64;
        c.rollback.max_calls_per_workflow = 64;
    };
    for s in servers_with(wide).await {
        let log: Log = Arc::default();
        let mut agents = Vec::new();
        for i in 0..40 {
            agents.push(start_agent(&s, &format!("w{i}"), "", 0, &log).await);
        }
        let wid = wid();
        let (root, t_root) = agents[0].checkpoint(&wid, &[]).await;
        let (act, t_act) = agents[0].action(&wid, "fan_out", std::slice::from_ref(&root));
        let mut tokens = vec![t_root, t_act];
        let mut checkpoints = std::collections::BTreeSet::from([root.clone()]);
        for i in 0..80 {
            let (cp, t) = agents[i % agents.len()]
                .checkpoint(&wid, std::slice::from_ref(&act))
                .await;
            checkpoints.insert(cp);
            tokens.push(t);
        }
        s.ingest_ok(&tokens).await;
        let id = accepted(&s, json!({"checkpoint_id": root, "scope": "sub_dag"})).await;
        let done = wait_for(&s, &id, TERMINAL).await;
        assert_eq!(done["status"], "completed", "{}: {done}", s.name);
        let steps = done["steps"].as_array().unwrap().len();
        assert_eq!(steps, checkpoints.len(), "{done}");
        assert!(steps > 40, "wider than the pool: {steps}");
    }
}
