//! Webhook delivery through real HTTP on every configured store: signed events, retries while
//! the receiver fails or is down, every attempt recorded, nothing lost across a restart, a
//! redirect never followed, and a delivery whose worker died mid-send sent again once its lease
//! expires.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::agents::*;
use common::receiver::*;
use common::server::*;
use serde_json::{Value, json};

/// Every recorded attempt.
async fn attempts(s: &TestServer) -> Vec<Value> {
    let (status, body) = s.get_json("/v1/webhook-deliveries?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// Waits until the receiver holds `n` events.
async fn wait_received(r: &Receiver, n: usize, context: &str) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = r.received();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{context}: got {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A rollback that ends `partial` (b cannot prepare, off the critical path): one
/// `rollback.partial` event.
async fn partial_rollback(s: &TestServer, log: &Log) -> (String, TestAgent, TestAgent) {
    let a = start_agent(s, "a", "", 0, log).await;
    let b = start_agent(s, "b", "cannot_prepare", 0, log).await;
    let wid = wid();
    let (cp_a, _, _) = seed_figure(s, &a, &b, &wid).await;
    let id = accepted(s, json!({"checkpoint_id": cp_a})).await;
    let done = wait_for(s, &id, TERMINAL).await;
    assert_eq!(done["status"], "partial", "{}: {done}", s.name);
    (id, a, b)
}

#[tokio::test]
async fn events_are_signed_and_retried_until_the_receiver_accepts_them() {
    let receiver = Receiver::start().await;
    for s in servers_with(with_webhook(receiver.url.clone())).await {
        receiver.fail(true);
        let log: Log = Arc::default();
        let (id, _a, _b) = partial_rollback(&s, &log).await;
        // Failing attempts pile up while the receiver answers 500.
        let deadline = Instant::now() + Duration::from_secs(20);
        while attempts(&s).await.len() < 3 {
            assert!(Instant::now() < deadline, "{}: too few attempts", s.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = receiver.received().len();
        receiver.fail(false);
        let got = wait_received(&receiver, before + 1, s.name).await;
        let event = got.last().unwrap();
        assert_eq!(event.content_type, "application/json");
        assert!(
            signature_verifies(SECRET.as_bytes(), &event.signature, &event.body),
            "{}: {event:?}",
            s.name
        );
        assert!(!signature_verifies(b"wrong", &event.signature, &event.body));
        let body: Value = serde_json::from_str(&event.body).unwrap();
        assert_eq!(body["type"], "rollback.partial", "{body}");
        assert_eq!(body["rollback"]["rollback_id"], id.as_str(), "{body}");
        assert_eq!(body["rollback"]["status"], "partial", "{body}");
        assert_eq!(body["decision_url"], Value::Null, "{body}");
        assert_eq!(body["escalation"]["kind"], "partial_rollback", "{body}");
        assert!(body["id"].as_str().unwrap().starts_with("evt_"), "{body}");

        // Every attempt is recorded, with the same id and the same bytes as delivered.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all = attempts(&s).await;
        let mine: Vec<&Value> = all.iter().filter(|a| a["event_id"] == body["id"]).collect();
        assert!(mine.len() >= 3, "{}: {mine:?}", s.name);
        for (i, a) in mine.iter().enumerate() {
            assert_eq!(a["attempt"], i as i64 + 1, "{a}");
            assert_eq!(a["body"], event.body.as_str(), "{a}");
            assert_eq!(a["url"], receiver.url.as_str(), "{a}");
            assert!(a["duration_ms"].as_i64().unwrap() >= 0, "{a}");
            assert!(a["attempted_at"].is_string(), "{a}");
        }
        let (last, failed) = mine.split_last().unwrap();
        assert_eq!(last["delivered"], true, "{last}");
        assert_eq!(last["http_status"], 200, "{last}");
        for f in failed {
            assert_eq!(f["http_status"], 500, "{f}");
            assert_eq!(f["delivered"], false, "{f}");
        }
        // Delivered once: no attempt after the success.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = attempts(&s).await;
        assert_eq!(
            again.iter().filter(|a| a["event_id"] == body["id"]).count(),
            mine.len(),
            "{}",
            s.name
        );
    }
}

#[tokio::test]
async fn a_restart_while_the_receiver_is_down_loses_nothing() {
    for kind in common::test_kinds() {
        let receiver = Receiver::down().await;
        let adjust = with_webhook(receiver.url.clone());
        let first = servers_with(&adjust)
            .await
            .into_iter()
            .find(|s| s.name == kind.name())
            .unwrap();
        let log: Log = Arc::default();
        let (_id, _a, _b) = partial_rollback(&first, &log).await;
        let (_id2, _c, _d) = partial_rollback(&first, &log).await;
        // Attempts fail while nothing listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = attempts(&first).await;
            let events: BTreeSet<String> = all
                .iter()
                .map(|a| a["event_id"].as_str().unwrap().to_string())
                .collect();
            if events.len() >= 2 {
                for a in &all {
                    assert_eq!(a["http_status"], Value::Null, "{a}");
                    assert!(a["error"].is_string(), "{a}");
                }
                break;
            }
            assert!(Instant::now() < deadline, "{}: {all:?}", first.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        first.stop();
        receiver.up().await;
        let second = start_on_same_database(&first, &adjust).await;
        let got = wait_received(&receiver, 2, second.name).await;
        let all = attempts(&second).await;
        let ids: BTreeSet<String> = all
            .iter()
            .map(|a| a["event_id"].as_str().unwrap().to_string())
            .collect();
        let received: BTreeSet<String> = got
            .iter()
            .map(|r| {
                serde_json::from_str::<Value>(&r.body).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, received, "{}: every stored event arrived", second.name);
        for r in &got {
            assert!(signature_verifies(SECRET.as_bytes(), &r.signature, &r.body));
            assert!(
                all.iter().any(|a| a["body"] == r.body.as_str()),
                "{}: body differs from the recorded one",
                second.name
            );
        }
    }
}

/// A receiver answering every POST with a 307 to the real `receiver`: the event must not reach
/// it, whatever the redirect says (the receiver is the configured URL, nothing else).
#[tokio::test]
async fn a_redirect_from_the_receiver_is_not_followed() {
    let receiver = Receiver::start().await;
    let hits = Arc::new(AtomicUsize::new(0));
    let app = {
        let (target, hits) = (receiver.url.clone(), hits.clone());
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                async move {
                    (
                        axum::http::StatusCode::TEMPORARY_REDIRECT,
                        [(axum::http::header::LOCATION, target)],
                    )
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let redirector = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    for s in servers_with(with_webhook(url.clone())).await {
        let log: Log = Arc::default();
        let (_id, _a, _b) = partial_rollback(&s, &log).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let all = loop {
            let all = attempts(&s).await;
            if all.len() >= 2 {
                break all;
            }
            assert!(Instant::now() < deadline, "{}: {all:?}", s.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for a in &all {
            assert_eq!(a["http_status"], 307, "{}: {a}", s.name);
            assert_eq!(a["delivered"], false, "{}: {a}", s.name);
            assert_eq!(a["url"], url.as_str(), "{}: {a}", s.name);
        }
        assert!(hits.load(Ordering::SeqCst) >= 2, "{}", s.name);
        assert!(
            receiver.received().is_empty(),
            "{}: the redirect was followed",
            s.name
        );
    }
    redirector.abort();
}

/// The delivery worker dies while its POST is in flight (the receiver took the request and has
/// not answered): the row stays claimed under its lease, no attempt is recorded, and a worker
/// of the next start sends it once the lease has expired: once, with the same body.
#[tokio::test]
async fn a_delivery_whose_worker_died_mid_send_is_sent_after_its_lease() {
    for kind in common::test_kinds() {
        let receiver = Receiver::down().await;
        let port: u16 = receiver
            .url
            .trim_start_matches("http://127.0.0.1:")
            .trim_end_matches("/hook")
            .parse()
            .unwrap();
        // Takes each request and never answers (bound once the stopped receiver let go).
        let deadline = Instant::now() + Duration::from_secs(5);
        let hole = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => break listener,
                Err(e) => assert!(Instant::now() < deadline, "port {port}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let hole = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut tcp, _)) = hole.accept().await {
                let mut buf = [0u8; 1024];
                use tokio::io::AsyncReadExt;
                if matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = seen_tx.send(Instant::now());
                }
                held.push(tcp);
            }
        });
        let webhook = with_webhook(receiver.url.clone());
        // Lease: 2 x timeout + 5 s = 9 s.
        let adjust = move |c: &mut unwind::config::Config| {
            webhook(c);
            c.hitl.timeout_ms = 2000;
        };
        let first = servers_with(&adjust)
            .await
            .into_iter()
            .find(|s| s.name == kind.name())
            .unwrap();
        let log: Log = Arc::default();
        let (_id, _a, _b) = partial_rollback(&first, &log).await;
        let sent_at = tokio::time::timeout(Duration::from_secs(20), seen_rx.recv())
            .await
            .expect("the worker never sent")
            .unwrap();
        // Dies with the POST in flight.
        first.stop();
        hole.abort();
        let _ = hole.await;
        assert!(
            attempts(&first).await.is_empty(),
            "{}: an attempt was recorded by the dead worker",
            first.name
        );
        receiver.up().await;
        let second = start_on_same_database(&first, &adjust).await;
        let got = wait_received(&receiver, 1, second.name).await;
        let waited = sent_at.elapsed();
        assert!(
            waited >= Duration::from_secs(7),
            "{}: sent again after {waited:?}, inside the dead worker's lease",
            second.name
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(receiver.received().len(), 1, "{}: sent twice", second.name);
        let body: Value = serde_json::from_str(&got[0].body).unwrap();
        assert_eq!(body["type"], "rollback.partial", "{body}");
        let all = attempts(&second).await;
        assert_eq!(all.len(), 1, "{}: {all:?}", second.name);
        assert_eq!(all[0]["delivered"], true, "{}", second.name);
        assert_eq!(all[0]["attempt"], 1, "{}", second.name);
        assert_eq!(all[0]["body"], got[0].body.as_str(), "{}", second.name);
    }
}
