//! Retention on every configured store, through a real server, real agents and real webhook
//! receivers: old steps of finished rollbacks and old delivered webhook events go; young rows,
//! running rollbacks and undelivered events stay; the ledger is untouched and the workflow's
//! export still verifies with `unwind verify`. Rows are aged by rewriting their timestamps.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agents::*;
use common::process::{ServeOptions, ServeSetup, run_cli, unwind};
use common::receiver::*;
use common::server::*;
use serde_json::{Value, json};
use sqlx::Connection as _;
use unwind::retention::{Pruned, Pruner, RetentionSettings};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Every recorded attempt.
async fn attempts(s: &TestServer) -> Vec<Value> {
    let (status, body) = s.get_json("/v1/webhook-deliveries?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// The id of the event about `rollback_id`, once `receiver` has accepted it.
async fn delivered_event(s: &TestServer, receiver: &Receiver, rollback_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let event = receiver.received().iter().find_map(|r| {
            let body: Value = serde_json::from_str(&r.body).ok()?;
            (body["rollback"]["rollback_id"] == rollback_id)
                .then(|| body["id"].as_str().unwrap().to_string())
        });
        if let Some(id) = event {
            let recorded = attempts(s).await.iter().any(|a| {
                a["event_id"] == id.as_str()
                    && a["url"] == receiver.url.as_str()
                    && a["delivered"] == true
            });
            if recorded {
                return id;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: no delivered event for {rollback_id}",
            s.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Moves every timestamp retention looks at `days` into the past.
async fn age_everything(s: &TestServer, days: i64) {
    let old = chrono::Utc::now() - chrono::Duration::days(days);
    let statements = [
        "UPDATE rollbacks SET updated_at = $1, created_at = $1",
        "UPDATE rollback_steps SET updated_at = $1",
        "UPDATE webhook_outbox SET created_at = $1, \
         delivered_at = CASE WHEN delivered_at IS NULL THEN NULL ELSE $1 END",
        "UPDATE webhook_attempts SET attempted_at = $1",
    ];
    if s.name == "sqlite" {
        let mut c = sqlx::SqliteConnection::connect(s.database_url())
            .await
            .unwrap();
        for sql in statements {
            sqlx::query(sql).bind(old).execute(&mut c).await.unwrap();
        }
    } else {
        let mut c = sqlx::PgConnection::connect(s.database_url()).await.unwrap();
        for sql in statements {
            sqlx::query(sql).bind(old).execute(&mut c).await.unwrap();
        }
    }
}

fn pruner(s: &TestServer, batch: u32) -> Arc<Pruner> {
    Pruner::new(
        s.store.clone(),
        RetentionSettings {
            rollback_steps: Some(DAY * 30),
            webhook_deliveries: Some(DAY * 30),
            interval: Duration::from_secs(3600),
            batch,
        },
    )
}

async fn rollback(s: &TestServer, id: &str) -> Value {
    let (status, body) = s.get_json(&format!("/v1/rollbacks/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The workflow's export, written to a file, and `unwind verify`'s exit code and report.
async fn verify_export(s: &TestServer, wid: &str) -> (Option<i32>, String) {
    let r = s
        .client
        .get(s.url(&format!("/v1/workflows/{wid}/export")))
        .bearer_auth(READER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", s.name);
    let file = s.dir.join(format!("export-{wid}.json"));
    std::fs::write(&file, r.bytes().await.unwrap()).unwrap();
    let mut c = unwind();
    c.arg("verify").arg(&file);
    let out = run_cli(c).await;
    (out.code, format!("{}{}", out.stdout, out.stderr))
}

#[tokio::test]
async fn old_rows_of_finished_work_are_pruned_and_the_ledger_is_untouched() {
    let up = Receiver::start().await;
    // Events to this webhook stay pending: they must survive however old they are.
    let down = Receiver::down().await;
    let (up_url, down_url) = (up.url.clone(), down.url.clone());
    let servers = servers_with(move |c| {
        with_webhook(up_url.clone())(c);
        c.hitl.webhooks.push(unwind::config::WebhookConfig {
            url: down_url.clone(),
            secret: Some(SECRET.into()),
            secret_env: None,
        });
    })
    .await;
    for s in servers {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        let b = start_agent(&s, "b", "cannot_prepare", 0, &log).await;

        // Finished: partial (b cannot prepare, off the critical path).
        let wid_done = wid();
        let (cp_a, _, _) = seed_figure(&s, &a, &b, &wid_done).await;
        let done = accepted(&s, json!({ "checkpoint_id": cp_a })).await;
        assert_eq!(wait_for(&s, &done, TERMINAL).await["status"], "partial");
        let done_event = delivered_event(&s, &up, &done).await;

        // Not finished: a's critical step cannot prepare either, so it waits for a person.
        a.behave("cannot_prepare");
        let wid_waiting = wid();
        let (cp_a2, _, _) = seed_figure(&s, &a, &b, &wid_waiting).await;
        let waiting = accepted(&s, json!({ "checkpoint_id": cp_a2 })).await;
        let w = wait_for(&s, &waiting, &["awaiting_decision"]).await;
        assert!(!w["steps"].as_array().unwrap().is_empty(), "{w}");
        let waiting_event = delivered_event(&s, &up, &waiting).await;

        age_everything(&s, 40).await;

        // Young: finished just now.
        a.behave("");
        let wid_young = wid();
        let (cp_a3, _, _) = seed_figure(&s, &a, &b, &wid_young).await;
        let young = accepted(&s, json!({ "checkpoint_id": cp_a3 })).await;
        assert_eq!(wait_for(&s, &young, TERMINAL).await["status"], "partial");
        let young_event = delivered_event(&s, &up, &young).await;

        let before_count = s.count().await;
        let before_head = s.store.chain_head().await.unwrap();
        let before_attempts = attempts(&s).await;
        let done_steps = rollback(&s, &done).await["steps"].as_array().unwrap().len() as u64;
        assert!(done_steps >= 2, "{}", s.name);
        let old_delivered: Vec<&Value> = before_attempts
            .iter()
            .filter(|a| a["url"] == up.url.as_str())
            .filter(|a| a["event_id"] == done_event.as_str() || a["event_id"] == waiting_event)
            .collect();
        assert_eq!(old_delivered.len(), 2, "{}: {old_delivered:?}", s.name);

        // Two pruners at once (two replicas), one row per statement: together they delete each
        // row once.
        let (p1, p2) = (pruner(&s, 1), pruner(&s, 1));
        let (r1, r2) = tokio::join!(p1.prune_once(), p2.prune_once());
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        let total = Pruned {
            rollback_steps: r1.rollback_steps + r2.rollback_steps,
            webhook_outbox: r1.webhook_outbox + r2.webhook_outbox,
            webhook_attempts: r1.webhook_attempts + r2.webhook_attempts,
        };
        assert_eq!(
            total,
            Pruned {
                rollback_steps: done_steps,
                webhook_outbox: 2,
                webhook_attempts: 2,
            },
            "{}",
            s.name
        );

        // The finished rollback keeps its record and evidence, without its steps.
        let d = rollback(&s, &done).await;
        assert_eq!(d["status"], "partial", "{d}");
        assert_eq!(d["steps"], json!([]), "{}: {d}", s.name);
        assert!(d["evidence"]["rollback_complete"].is_string(), "{d}");
        // Running and young rollbacks keep theirs.
        for id in [&waiting, &young] {
            let r = rollback(&s, id).await;
            assert!(
                !r["steps"].as_array().unwrap().is_empty(),
                "{}: {r}",
                s.name
            );
        }
        // Old delivered attempts are gone; the young one and every pending one stay.
        let after_attempts = attempts(&s).await;
        let on = |event: &str, url: &str| {
            after_attempts
                .iter()
                .filter(|a| a["event_id"] == event && a["url"] == url)
                .count()
        };
        assert_eq!(on(&done_event, &up.url), 0, "{}", s.name);
        assert_eq!(on(&waiting_event, &up.url), 0, "{}", s.name);
        assert_eq!(on(&young_event, &up.url), 1, "{}", s.name);
        for event in [&done_event, &waiting_event, &young_event] {
            assert!(on(event, &down.url) >= 1, "{}: {event} pending", s.name);
        }

        // The ledger is as it was.
        assert_eq!(s.count().await, before_count, "{}", s.name);
        assert_eq!(
            s.store.chain_head().await.unwrap(),
            before_head,
            "{}",
            s.name
        );
        let (code, report) = verify_export(&s, &wid_done).await;
        assert_eq!(code, Some(0), "{}: {report}", s.name);

        // Nothing left to prune.
        assert_eq!(
            pruner(&s, 1000).prune_once().await.unwrap(),
            Pruned::default(),
            "{}",
            s.name
        );
    }
}

#[tokio::test]
async fn zero_days_keeps_everything() {
    for s in servers_with(short).await {
        let log: Log = Arc::default();
        let a = start_agent(&s, "a", "", 0, &log).await;
        let b = start_agent(&s, "b", "", 0, &log).await;
        let (cp_a, _, _) = seed_figure(&s, &a, &b, &wid()).await;
        let id = accepted(&s, json!({ "checkpoint_id": cp_a })).await;
        assert_eq!(wait_for(&s, &id, TERMINAL).await["status"], "completed");
        age_everything(&s, 4000).await;
        let settings = RetentionSettings::from_config(&unwind::config::RetentionConfig {
            rollback_steps_days: 0,
            webhook_deliveries_days: 0,
            ..Default::default()
        });
        let pruned = Pruner::new(s.store.clone(), settings)
            .prune_once()
            .await
            .unwrap();
        assert_eq!(pruned, Pruned::default(), "{}", s.name);
        let r = rollback(&s, &id).await;
        assert!(
            !r["steps"].as_array().unwrap().is_empty(),
            "{}: {r}",
            s.name
        );
    }
}

#[tokio::test]
async fn a_serving_process_prunes_every_interval() {
    for kind in common::test_kinds() {
        let setup = ServeSetup::new(ServeOptions {
            database: Some(kind),
            extra: "[retention]\ninterval_s = 1\n",
            ..ServeOptions::default()
        })
        .await;
        let s = setup.start("one").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        // At start, then once a second.
        while s.logs().matches("retention: prune run done").count() < 2 {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: no prune runs in\n{}",
                s.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let metrics = reqwest::get(s.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for table in ["rollback_steps", "webhook_outbox", "webhook_attempts"] {
            let series = format!("unwind_retention_pruned_total{{table=\"{table}\"}} 0");
            assert!(
                metrics.contains(&series),
                "{kind:?}: no {series} in\n{metrics}"
            );
        }
    }
}
