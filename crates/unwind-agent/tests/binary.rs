//! The reference binary as a real process: `serve` with programmed behaviour, and
//! `checkpoint` printing a token that verifies with the agent's key.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use unwind_ect::SigningKey;

const BIN: &str = env!("CARGO_BIN_EXE_unwind-agent");

struct Served {
    child: Child,
    base: String,
}

/// Starts `unwind-agent serve` and waits for its `listening on` line.
async fn start(dir: &Path, coord: &SigningKey, extra: &[&str]) -> Served {
    let jwks = dir.join("coordinator.jwks.json");
    std::fs::write(&jwks, serde_json::to_string(&coord.public_jwks()).unwrap()).unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--id",
            AGENT,
            "--coordinator-id",
            COORDINATOR,
        ])
        .arg("--key")
        .arg(dir.join("agent.jwk"))
        .arg("--coordinator-jwks")
        .arg(&jwks)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .env_remove("UNWIND_AGENT_SNAPSHOT_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("no listening line in time")
        .unwrap()
        .expect("serve exited before listening");
    let base = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    assert!(!base.ends_with(":0"), "the real port is printed: {base}");
    Served { child, base }
}

/// Runs `unwind-agent checkpoint` and returns the printed token.
async fn checkpoint(dir: &Path, snapshot: &[u8], rollback_uri: &str) -> String {
    let file = dir.join("snapshot.bin");
    std::fs::write(&file, snapshot).unwrap();
    let out = Command::new(BIN)
        .arg("checkpoint")
        .args([
            "--id",
            AGENT,
            "--wid",
            WID,
            "--rollback-uri",
            rollback_uri,
            "--target",
            "router-07",
        ])
        .args(["--par", "action-1", "--ttl", "600", "--aud", COORDINATOR])
        .arg("--key")
        .arg(dir.join("agent.jwk"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--snapshot")
        .arg(&file)
        .env_remove("UNWIND_AGENT_SNAPSHOT_KEY")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn agent_key(dir: &Path) -> SigningKey {
    SigningKey::from_private_jwk_json(&std::fs::read_to_string(dir.join("agent.jwk")).unwrap())
        .unwrap()
}

#[tokio::test]
async fn serve_fail_then_succeed_slow_and_checkpoint_token() {
    let dir = tempfile::tempdir().unwrap();
    let coord = key();
    let mut served = start(
        dir.path(),
        &coord,
        &["--behaviour", "fail:2", "--test-controls"],
    )
    .await;
    let base = served.base.clone();

    // Recorded by a second process while the server runs.
    let uri = format!("{base}/.well-known/cascade/rollback");
    let token = checkpoint(dir.path(), b"state v1", &uri).await;
    let verifier = agent_verifier(dir.path(), &agent_key(dir.path()));
    let ect = verify(&verifier, &token).await;
    assert_eq!(ect.exec_act, "checkpoint");
    assert_eq!(ect.iss, AGENT);
    assert_eq!(ect.wid.as_deref(), Some(WID));
    assert_eq!(ect.parents, vec!["action-1".to_owned()]);
    assert_eq!(ect.ext["cascade.rollback_uri"], json!(uri));
    assert_eq!(
        ect.out_hash.as_deref(),
        Some(unwind_agent::out_hash(b"state v1").as_str())
    );
    let cp = ect.jti;

    // fail:2 — two 500s, then the real answer.
    let rid = rollback_id();
    let ec = rollback_start(&coord, &rid);
    for _ in 0..2 {
        let (status, _) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &cp)).await;
        assert_eq!(status, 500);
    }
    let (status, body) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &cp)).await;
    assert_eq!((status, body), (200, json!({"status": "prepared"})));

    // slow: set at run time; every answer is delayed.
    let (status, _) = post(
        &base,
        "/_test/behaviour",
        None,
        json!({"behaviour": "slow:400"}),
    )
    .await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let (status, first) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp)).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(status, 200);
    assert_eq!(first["status"], "completed");
    assert_eq!(
        first["state_hash_after"],
        unwind_agent::out_hash(b"state v1")
    );
    verify(&verifier, first["ect"].as_str().unwrap()).await;
    let (_, second) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp)).await;
    assert_eq!(first, second);

    // The probe serves the token the checkpoint command printed.
    let (status, probe) = get(
        &base,
        &format!("/.well-known/cascade/checkpoints/{cp}"),
        Some(&ec),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(probe, json!({"checkpoint": token, "verified": true}));

    let (status, calls) = get(&base, "/_test/calls", None).await;
    assert_eq!(status, 200);
    assert_eq!(calls["prepare"], 3);
    assert_eq!(calls["execute"], 2);
    assert_eq!(
        calls["executed"],
        json!([[rid, cp]]),
        "no checkpoint executed twice"
    );

    // hang: never answers.
    post(
        &base,
        "/_test/behaviour",
        None,
        json!({"behaviour": "hang"}),
    )
    .await;
    let hung = client()
        .post(format!("{base}{PREPARE}"))
        .header("Execution-Context", &ec)
        .json(&prepare_body(&rid, &cp))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(hung.is_err_and(|e| e.is_timeout()));

    // A second server on the same data directory is refused.
    let second = Command::new(BIN)
        .arg("serve")
        .args(["--id", AGENT, "--coordinator-id", COORDINATOR])
        .arg("--key")
        .arg(dir.path().join("agent.jwk"))
        .arg("--coordinator-jwks")
        .arg(dir.path().join("coordinator.jwks.json"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .await
        .unwrap();
    assert!(!second.status.success());

    served.child.kill().await.unwrap();
}

#[tokio::test]
async fn serve_programmed_answers_and_no_test_controls_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let coord = key();
    let served = start(
        dir.path(),
        &coord,
        &["--behaviour", "cannot_prepare,execute=escalated"],
    )
    .await;
    let base = served.base.clone();
    let token = checkpoint(
        dir.path(),
        b"s",
        &format!("{base}/.well-known/cascade/rollback"),
    )
    .await;
    let cp = verify(&agent_verifier(dir.path(), &agent_key(dir.path())), &token)
        .await
        .jti;
    let rid = rollback_id();
    let ec = rollback_start(&coord, &rid);
    let (_, body) = post(&base, PREPARE, Some(&ec), prepare_body(&rid, &cp)).await;
    assert_eq!(
        body,
        json!({"status": "cannot_prepare", "reason": "agent_refused"})
    );
    let (_, body) = post(&base, EXECUTE, Some(&ec), execute_body(&rid, &cp)).await;
    assert_eq!(body["status"], "escalated");
    let (status, _) = get(&base, "/_test/calls", None).await;
    assert_eq!(status, 404);
    let (status, _) = post(
        &base,
        "/_test/behaviour",
        None,
        json!({"behaviour": "prepared"}),
    )
    .await;
    assert_eq!(status, 404);
    // The public keys are served, so a coordinator can trust the agent by URL.
    let (status, jwks) = get(&base, unwind_agent::reference::JWKS_PATH, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        jwks,
        serde_json::to_value(agent_key(dir.path()).public_jwks()).unwrap()
    );
}

/// The reference agent as deployed: a POST with no, a garbage or a forged `Execution-Context`
/// gets a plain problem, never a token signed by the agent (which the coordinator would
/// ingest as the agent's).
#[tokio::test]
async fn serve_signs_nothing_for_an_unauthenticated_caller() {
    let dir = tempfile::tempdir().unwrap();
    let coord = key();
    let served = start(dir.path(), &coord, &[]).await;
    let base = served.base.clone();
    let token = checkpoint(
        dir.path(),
        b"s",
        &format!("{base}/.well-known/cascade/rollback"),
    )
    .await;
    let cp = verify(&agent_verifier(dir.path(), &agent_key(dir.path())), &token)
        .await
        .jti;
    let rid = rollback_id();
    let forged = rollback_start(&key(), &rid);
    for ec in [None, Some("not-a-token"), Some(forged.as_str())] {
        for (path, body) in [
            (PREPARE, prepare_body(&rid, &cp)),
            (EXECUTE, execute_body(&rid, &cp)),
        ] {
            let mut req = client().post(format!("{base}{path}")).json(&body);
            if let Some(ec) = ec {
                req = req.header("Execution-Context", ec);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{path} {ec:?}");
            assert_eq!(
                resp.headers()["content-type"].to_str().unwrap(),
                "application/problem+json"
            );
            let text = resp.text().await.unwrap();
            let body: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["code"], "unauthenticated", "{text}");
            assert!(
                body.get("ect").is_none() && !text.contains("eyJ"),
                "{path} {ec:?}: the agent signed for an unknown caller: {text}"
            );
        }
    }
    // The coordinator's own call still works.
    let (status, body) = post(
        &base,
        PREPARE,
        Some(&rollback_start(&coord, &rid)),
        prepare_body(&rid, &cp),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "prepared"})));
}
