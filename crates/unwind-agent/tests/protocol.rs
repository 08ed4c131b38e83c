//! The agent protocol over real HTTP: answer shapes, idempotency per `rollback_id`, the
//! `Execution-Context` checks, expiry, irreversibility and snapshot integrity.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use serde_json::{Value, json};
use unwind_agent::store::now_unix;

const SNAPSHOT: &[u8] = b"bgp peers: 10.0.0.1, 10.0.0.2";
const URI: &str = "http://127.0.0.1:9/.well-known/cascade/rollback";

#[tokio::test]
async fn prepare_execute_happy_path_and_answer_shapes() {
    let fx = Fixture::new();
    let handler = Arc::new(CountingHandler::default());
    let agent = fx.agent(fx.store().await, handler.clone());
    let (cp, token) = agent
        .checkpoint(SNAPSHOT, 3600, Some("router-07"), true, WID, &[], Some(URI))
        .await
        .unwrap();
    let (base, _server) = serve(agent.router()).await;
    let verifier = fx.agent_verifier();

    // The checkpoint ECT verifies and carries the draft's claims.
    let ect = verify(&verifier, &token).await;
    assert_eq!(ect.exec_act, "checkpoint");
    assert_eq!(ect.jti, cp.jti);
    assert_eq!(ect.iss, AGENT);
    assert!(ect.claims.contains_key("par"));
    assert_eq!(
        ect.out_hash.as_deref(),
        Some(unwind_agent::out_hash(SNAPSHOT).as_str())
    );
    assert_eq!(ect.ext["cascade.reversible"], json!(true));
    assert_eq!(ect.ext["cascade.rollback_uri"], json!(URI));
    assert_eq!(ect.ext["cascade.ttl"], json!(3600));
    assert_eq!(ect.ext["cascade.target"], json!("router-07"));

    let rid = rollback_id();
    let ec = fx.rollback_start(&rid);
    let (status, body) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &cp.jti)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "prepared"}));

    let (status, body) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp.jti)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["state_hash_before"], "before");
    assert_eq!(body["state_hash_after"], unwind_agent::out_hash(SNAPSHOT));
    let result = verify(&verifier, body["ect"].as_str().unwrap()).await;
    assert_eq!(result.exec_act, "rollback_complete");
    assert_eq!(result.parents, vec![cp.jti.clone()]);
    assert_eq!(result.wid.as_deref(), Some(WID));
    assert_eq!(result.aud, vec![COORDINATOR.to_owned()]);
    assert_eq!(result.ext["cascade.rollback_id"], json!(rid));
    assert_eq!(result.ext["cascade.checkpoint_id"], json!(cp.jti));
    assert_eq!(result.ext["cascade.status"], json!("completed"));
    assert_eq!(
        result.ext["cascade.state_hash_after"],
        json!(unwind_agent::out_hash(SNAPSHOT))
    );
    assert_eq!(handler.restores.load(Ordering::SeqCst), 1);

    // Probe: the checkpoint ECT and its verification status.
    let (status, body) = get(
        &base,
        &format!("/.well-known/cascade/checkpoints/{}", cp.jti),
        Some(&ec),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"checkpoint": token, "verified": true}));
}

#[tokio::test]
async fn same_rollback_id_sequential_runs_the_hook_once() {
    let fx = Fixture::new();
    let handler = Arc::new(CountingHandler::default());
    let agent = fx.agent(fx.store().await, handler.clone());
    let (cp, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
        .await
        .unwrap();
    let (base, _server) = serve(agent.router()).await;
    let rid = rollback_id();
    let ec = fx.rollback_start(&rid);

    let (_, p1) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &cp.jti)).await;
    let (_, p2) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &cp.jti)).await;
    assert_eq!(p1, p2);
    assert_eq!(handler.prepares.load(Ordering::SeqCst), 1);

    let (s1, e1) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp.jti)).await;
    // A retry may carry a fresh token of the same rollback.
    let ec2 = fx.rollback_start(&rid);
    let (s2, e2) = post(&base, EXECUTE, Some(&ec2), execute_body(&rid, &cp.jti)).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(e1, e2, "identical answer, including the same signed ECT");
    assert_eq!(handler.restores.load(Ordering::SeqCst), 1);

    // Another rollback of the same checkpoint is a new request.
    let rid2 = rollback_id();
    let (s3, e3) = post(
        &base,
        EXECUTE,
        Some(&fx.rollback_start(&rid2)),
        execute_body(&rid2, &cp.jti),
    )
    .await;
    assert_eq!(s3, 200);
    assert_ne!(e3["ect"], e1["ect"]);
    assert_eq!(handler.restores.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn same_rollback_id_concurrent_runs_the_hook_once() {
    let fx = Fixture::new();
    let handler = Arc::new(CountingHandler {
        delay_ms: 300,
        ..Default::default()
    });
    let agent = fx.agent(fx.store().await, handler.clone());
    let (cp, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
        .await
        .unwrap();
    let (base, _server) = serve(agent.router()).await;
    let rid = rollback_id();
    let ec = fx.rollback_start(&rid);

    let calls = (0..8).map(|_| {
        let (base, ec, body) = (base.clone(), ec.clone(), execute_body(&rid, &cp.jti));
        async move { post(&base, EXECUTE, Some(&ec), body).await }
    });
    let answers = futures_join_all(calls).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body, &answers[0].1);
    }
    assert_eq!(answers[0].1["status"], "completed");
    assert_eq!(handler.restores.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn same_rollback_id_across_a_restart_runs_the_hook_once() {
    let fx = Fixture::new();
    let rid = rollback_id();
    let ec = fx.rollback_start(&rid);

    let first = Arc::new(CountingHandler::default());
    let store = fx.store().await;
    let agent = fx.agent(store.clone(), first.clone());
    let (cp, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
        .await
        .unwrap();
    let (base, server) = serve(agent.router()).await;
    let (_, prepared) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &cp.jti)).await;
    let (_, executed) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp.jti)).await;
    assert_eq!(first.restores.load(Ordering::SeqCst), 1);
    server.abort();
    let _ = server.await;
    drop(agent);
    store.close().await;

    // A new process on the same data directory.
    let second = Arc::new(CountingHandler::default());
    let agent = fx.agent(fx.store().await, second.clone());
    let (base, _server) = serve(agent.router()).await;
    let (_, prepared_again) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &cp.jti)).await;
    let (status, executed_again) =
        post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp.jti)).await;
    assert_eq!(status, 200);
    assert_eq!(prepared, prepared_again);
    assert_eq!(executed, executed_again);
    assert_eq!(second.restores.load(Ordering::SeqCst), 0);
    assert_eq!(second.prepares.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn execute_interrupted_by_a_restart_is_escalated_not_rerun() {
    let fx = Fixture::new();
    let rid = rollback_id();
    let ec = fx.rollback_start(&rid);
    let store = fx.store().await;
    let agent = fx.agent(store.clone(), Arc::new(CountingHandler::default()));
    let (cp, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
        .await
        .unwrap();
    // A process claimed the execute and stopped before answering.
    let key = unwind_agent::store::AnswerKey {
        rollback_id: rid.clone(),
        checkpoint_id: cp.jti.clone(),
        phase: "execute".into(),
    };
    assert!(matches!(
        store.claim(&key, std::time::Duration::ZERO).await.unwrap(),
        unwind_agent::store::Claim::Owned
    ));
    drop(agent);
    store.close().await;

    let handler = Arc::new(CountingHandler::default());
    let agent = fx.agent(fx.store().await, handler.clone());
    let (base, _server) = serve(agent.router()).await;
    let (status, body) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp.jti)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "escalated");
    assert_eq!(handler.restores.load(Ordering::SeqCst), 0);
    let (_, again) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp.jti)).await;
    assert_eq!(again, body);
}

/// Checks a 401 answer: a problem body and nothing signed (the caller is unknown, so a signed
/// token would make the agent a signing oracle).
async fn assert_refused(base: &str, path: &str, ec: Option<&str>, rid: &str, cp: &str) {
    let body = if path == PREPARE {
        prepare_body(rid, cp)
    } else {
        execute_body(rid, cp)
    };
    let mut req = client().post(format!("{base}{path}")).json(&body);
    if let Some(ec) = ec {
        req = req.header("Execution-Context", ec);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "unauthenticated", "{body}");
    assert_eq!(body["status"], 401, "{body}");
    assert!(
        body.get("ect").is_none(),
        "a signed token for an unknown caller: {body}"
    );
    let text = body.to_string();
    assert!(
        !text.contains("eyJ"),
        "nothing JWS-shaped in a refusal: {text}"
    );
}

#[tokio::test]
async fn bad_execution_context_is_401_and_signs_nothing() {
    let fx = Fixture::new();
    let handler = Arc::new(CountingHandler::default());
    let agent = fx.agent(fx.store().await, handler.clone());
    let (cp, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
        .await
        .unwrap();
    let (base, _server) = serve(agent.router()).await;
    let rid = rollback_id();
    let forger = key();

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("garbage", Some("not-a-token".into())),
        // Signed by a key the agent does not trust, claiming to be the coordinator.
        ("forged", Some(rollback_start(&forger, &rid))),
        (
            "wrong audience",
            Some(rollback_start_with(
                &fx.coord,
                COORDINATOR,
                &[COORDINATOR, "spiffe://example.com/agent/other"],
                &rid,
                json!({}),
            )),
        ),
        (
            "wrong issuer",
            Some(rollback_start_with(
                &fx.coord,
                "spiffe://evil.example/coordinator",
                &[AGENT],
                &rid,
                json!({}),
            )),
        ),
        (
            "other rollback",
            Some(rollback_start(&fx.coord, &rollback_id())),
        ),
        (
            "not a rollback_start",
            Some(rollback_start_with(
                &fx.coord,
                COORDINATOR,
                &[AGENT],
                &rid,
                json!({"exec_act": "tool_call"}),
            )),
        ),
        (
            "bound to no rollback",
            Some(rollback_start_with(
                &fx.coord,
                COORDINATOR,
                &[COORDINATOR, AGENT],
                &rid,
                json!({"ext": {"cascade.scope": "sub_dag"}}),
            )),
        ),
        (
            "expired",
            Some(rollback_start_with(
                &fx.coord,
                COORDINATOR,
                &[AGENT],
                &rid,
                json!({"iat": now_unix() - 7200, "exp": now_unix() - 3600}),
            )),
        ),
    ];
    for (name, ec) in &cases {
        for path in [PREPARE, EXECUTE] {
            eprintln!("case: {name} {path}");
            assert_refused(&base, path, ec.as_deref(), &rid, &cp.jti).await;
        }
        // Probes only for the trusted coordinator (no ECT needed there); any verifying
        // coordinator token addressed to the agent will do.
        let (status, body) = get(
            &base,
            &format!("/.well-known/cascade/checkpoints/{}", cp.jti),
            ec.as_deref(),
        )
        .await;
        let probe_ok = matches!(
            *name,
            "other rollback" | "not a rollback_start" | "bound to no rollback"
        );
        assert_eq!(status, if probe_ok { 200 } else { 401 }, "{name}: {body}");
    }
    assert_eq!(handler.restores.load(Ordering::SeqCst), 0);
    assert_eq!(handler.prepares.load(Ordering::SeqCst), 0);

    // Nothing was stored: the real coordinator's request still runs.
    let (status, body) = post(
        &base,
        EXECUTE,
        Some(&fx.rollback_start(&rid)),
        execute_body(&rid, &cp.jti),
    )
    .await;
    assert_eq!((status, body["status"].clone()), (200, json!("completed")));
}

#[tokio::test]
async fn unknown_or_foreign_checkpoint_is_404() {
    let fx = Fixture::new();
    let agent = fx.agent(fx.store().await, Arc::new(CountingHandler::default()));
    // Another agent's checkpoint in the same database.
    let mut other = fx.store_options();
    other.agent_id = "spiffe://example.com/agent/c".into();
    let other = unwind_agent::CheckpointStore::open(other).await.unwrap();
    let foreign = other.record(SNAPSHOT, 3600, None, true).await.unwrap();
    let (base, _server) = serve(agent.router()).await;
    let rid = rollback_id();
    let ec = fx.rollback_start(&rid);
    for cp in ["no-such-checkpoint", foreign.jti.as_str()] {
        let (status, body) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, cp)).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["code"], "not_found");
        let (status, _) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, cp)).await;
        assert_eq!(status, 404);
        let (status, _) = get(
            &base,
            &format!("/.well-known/cascade/checkpoints/{cp}"),
            Some(&ec),
        )
        .await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn malformed_body_is_400_and_wrong_workflow_is_403() {
    let fx = Fixture::new();
    let agent = fx.agent(fx.store().await, Arc::new(CountingHandler::default()));
    let (cp, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
        .await
        .unwrap();
    let (base, _server) = serve(agent.router()).await;
    let rid = rollback_id();
    let ec = fx.rollback_start(&rid);
    let (status, _) = post(
        &base,
        EXECUTE,
        Some(&ec),
        json!({"rollback_id": rid, "checkpoint_id": cp.jti, "phase": "prepare"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(&base, PREPARE, Some(&ec), json!({"rollback_id": rid})).await;
    assert_eq!(status, 400);

    let other_wf = rollback_start_with(
        &fx.coord,
        COORDINATOR,
        &[AGENT],
        &rid,
        json!({"wid": "another-workflow"}),
    );
    let (status, body) = post(&base, PREPARE, Some(&other_wf), prepare_body(&rid, &cp.jti)).await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn expired_and_irreversible_cannot_prepare() {
    let fx = Fixture::new();
    let handler = Arc::new(CountingHandler::default());
    let store = fx.store().await;
    let agent = fx.agent(store.clone(), handler.clone());
    let (irreversible, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, false, WID, &[], None)
        .await
        .unwrap();
    // Recorded an hour ago with a one-minute TTL (recording now would purge it at once).
    let expired = store
        .record_at(SNAPSHOT, 60, None, true, now_unix() - 3600)
        .await
        .unwrap();
    let (base, _server) = serve(agent.router()).await;
    let rid = rollback_id();
    let ec = fx.rollback_start(&rid);

    let (status, body) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &expired.jti)).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "cannot_prepare");
    assert_eq!(body["reason"], "checkpoint_expired");
    let ect = verify(&fx.agent_verifier(), body["ect"].as_str().unwrap()).await;
    assert_eq!(ect.ext["cascade.error"], json!(true));

    let (status, body) = post(
        &base,
        PREPARE,
        Some(&ec),
        prepare_body(&rid, &irreversible.jti),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "cannot_prepare", "reason": "irreversible"})
    );

    // Execute anyway: nothing is restored.
    let (_, body) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &expired.jti)).await;
    assert_eq!(body["status"], "failed");
    let (_, body) = post(
        &base,
        EXECUTE,
        Some(&ec),
        execute_body(&rid, &irreversible.jti),
    )
    .await;
    assert_eq!(body["status"], "escalated");
    assert_eq!(handler.restores.load(Ordering::SeqCst), 0);
    assert_eq!(handler.prepares.load(Ordering::SeqCst), 0);
}

/// Checks a signed refusal: the agent's error ECT for the coordinator, for this rollback, and
/// short-lived (at most 300 s) whatever the agent's evidence lifetime.
async fn assert_brief_refusal(fx: &Fixture, token: &str, rid: &str, reason: &str) {
    let ect = verify(&fx.agent_verifier(), token).await;
    assert_eq!(ect.iss, AGENT);
    assert_eq!(ect.aud, vec![COORDINATOR.to_owned()]);
    assert_eq!(ect.exec_act, "rollback_verification_failed");
    assert!(ect.is_error());
    assert_eq!(ect.ext["cascade.rollback_id"], json!(rid));
    assert!(
        ect.ext["cascade.reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(reason)),
        "{:?}",
        ect.ext
    );
    assert!(
        ect.exp - ect.iat <= 300 && ect.exp > ect.iat,
        "an error ECT valid {} s",
        ect.exp - ect.iat
    );
}

#[tokio::test]
async fn a_verified_call_that_fails_gets_a_short_lived_error_ect() {
    let fx = Fixture::new();
    let store = fx.store().await;
    let agent = fx.agent(store.clone(), Arc::new(CountingHandler::default()));
    let (tampered, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
        .await
        .unwrap();
    // Recorded last: recording purges expired checkpoints.
    let expired = store
        .record_at(SNAPSHOT, 60, None, true, now_unix() - 3600)
        .await
        .unwrap();
    tamper(
        &fx,
        "UPDATE checkpoints SET ciphertext = CAST(zeroblob(length(ciphertext)) AS BLOB) WHERE jti = ?",
        &tampered.jti,
    )
    .await;
    let (base, _server) = serve(agent.router()).await;
    let rid = rollback_id();
    let ec = fx.rollback_start(&rid);
    for (cp, reason) in [
        (&expired.jti, "checkpoint_expired"),
        (&tampered.jti, "checkpoint_integrity"),
    ] {
        let (status, body) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, cp)).await;
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("cannot_prepare")),
            "{body}"
        );
        assert_brief_refusal(&fx, body["ect"].as_str().unwrap(), &rid, reason).await;
        let (status, body) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, cp)).await;
        assert_eq!((status, &body["status"]), (200, &json!("failed")), "{body}");
        assert_brief_refusal(&fx, body["ect"].as_str().unwrap(), &rid, reason).await;
    }
}

/// Opens the agent's database file directly, as an attacker with disk access would.
async fn tamper(fx: &Fixture, sql: &str, jti: &str) {
    use std::str::FromStr;
    let url = format!("sqlite://{}", fx.dir.path().join("agent.db").display());
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url).unwrap();
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(jti)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);
    pool.close().await;
}

#[tokio::test]
async fn tampered_snapshot_is_never_restored() {
    for (what, sql) in [
        (
            "ciphertext",
            "UPDATE checkpoints SET ciphertext = CAST(zeroblob(length(ciphertext)) AS BLOB) WHERE jti = ?",
        ),
        (
            "out_hash",
            "UPDATE checkpoints SET out_hash = 'n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg' WHERE jti = ?",
        ),
    ] {
        let fx = Fixture::new();
        let handler = Arc::new(CountingHandler::default());
        let agent = fx.agent(fx.store().await, handler.clone());
        let (cp, _) = agent
            .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
            .await
            .unwrap();
        tamper(&fx, sql, &cp.jti).await;
        let (base, _server) = serve(agent.router()).await;
        let rid = rollback_id();
        let ec = fx.rollback_start(&rid);

        let (status, body) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &cp.jti)).await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(body["status"], "cannot_prepare", "{what}");
        assert_eq!(body["reason"], "checkpoint_integrity");
        assert!(body["ect"].is_string());

        let (status, body) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp.jti)).await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(body["status"], "failed", "{what}");
        let ect = verify(&fx.agent_verifier(), body["ect"].as_str().unwrap()).await;
        assert_eq!(ect.exec_act, "rollback_verification_failed");
        assert!(
            ect.ext["cascade.reason"]
                .as_str()
                .unwrap()
                .starts_with("checkpoint_integrity")
        );
        assert_eq!(
            handler.restores.load(Ordering::SeqCst),
            0,
            "{what}: nothing restored"
        );

        let (_, probe) = get(
            &base,
            &format!("/.well-known/cascade/checkpoints/{}", cp.jti),
            Some(&ec),
        )
        .await;
        assert_eq!(probe["verified"], Value::Bool(false), "{what}");
    }
}

#[tokio::test]
async fn compensation_returns_a_compensate_ect() {
    struct Compensating;
    #[unwind_agent::async_trait]
    impl unwind_agent::RollbackHandler for Compensating {
        async fn restore(
            &self,
            _ctx: &unwind_agent::CheckpointCtx,
            _snapshot: Vec<u8>,
        ) -> Result<unwind_agent::RestoreOutcome, unwind_agent::HandlerError> {
            Err(unwind_agent::HandlerError::NotRestorable(
                "external API call".into(),
            ))
        }
        async fn compensate(
            &self,
            _ctx: &unwind_agent::CheckpointCtx,
        ) -> Result<unwind_agent::RestoreOutcome, unwind_agent::HandlerError> {
            Ok(unwind_agent::RestoreOutcome::new(
                unwind_agent::RollbackStatus::Compensated,
            ))
        }
    }
    let fx = Fixture::new();
    let agent = fx.agent(fx.store().await, Arc::new(Compensating));
    let (cp, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
        .await
        .unwrap();
    let (base, _server) = serve(agent.router()).await;
    let rid = rollback_id();
    let (_, body) = post(
        &base,
        EXECUTE,
        Some(&fx.rollback_start(&rid)),
        execute_body(&rid, &cp.jti),
    )
    .await;
    assert_eq!(body["status"], "compensated");
    let ect = verify(&fx.agent_verifier(), body["ect"].as_str().unwrap()).await;
    assert_eq!(ect.exec_act, "compensate");
    assert_eq!(ect.ext["cascade.status"], json!("compensated"));
}

/// Joins futures without an extra dependency.
async fn futures_join_all<
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
>(
    futures: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn coordinator_keys_from_a_jwks_url() {
    let fx = Fixture::new();
    let jwks = serde_json::to_value(fx.coord.public_jwks()).unwrap();
    let (jwks_base, _jwks_server) = serve(axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    ))
    .await;
    let handler = Arc::new(CountingHandler::default());
    let agent = unwind_agent::Agent::builder()
        .id(AGENT)
        .signing_key(fx.agent_key.clone())
        .coordinator(
            COORDINATOR,
            unwind_agent::CoordinatorKeys::Url(format!("{jwks_base}/.well-known/jwks.json")),
        )
        .store(fx.store().await)
        .handler(handler.clone())
        .build()
        .unwrap();
    let (cp, _) = agent
        .checkpoint(SNAPSHOT, 3600, None, true, WID, &[], Some(URI))
        .await
        .unwrap();
    let (base, _server) = serve(agent.router()).await;
    let rid = rollback_id();
    let (status, body) = post(
        &base,
        PREPARE,
        Some(&fx.rollback_start(&rid)),
        prepare_body(&rid, &cp.jti),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "prepared"})));
    // A token of another key is still refused.
    let (status, _) = post(
        &base,
        PREPARE,
        Some(&rollback_start(&key(), &rid)),
        prepare_body(&rid, &cp.jti),
    )
    .await;
    assert_eq!(status, 401);
}
