//! The console in a real headless Chromium, against a real server and real agents: an operator
//! signs in, opens a workflow, sees its DAG, selects a checkpoint and its blast radius, starts a
//! rollback and watches it complete live, then decides an escalated rollback. A reader sees the
//! same pages without the actions. On failure a screenshot and the page source are kept in
//! target/console-artifacts/.

mod common;

use common::agents::*;
use common::browser::{self, path, wait_for_text};
use common::server::*;
use fantoccini::{Client, Locator};
use serde_json::json;

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/workflows")).await.unwrap();
    assert_eq!(
        path(c).await,
        "/ui/login",
        "an anonymous visit asks to sign in"
    );
    browser::type_into(c, "#token", token).await;
    browser::click(c, Locator::Css("form button[type=submit]")).await;
    wait_for_text(c, "h1", "Workflows").await;
}

/// A server with agents a and b and the seed figure ingested in a new workflow.
struct Seeded {
    s: TestServer,
    a: TestAgent,
    bee: TestAgent,
    wid: String,
    figure: Figure,
}

async fn seeded(b_delay_ms: u64) -> Seeded {
    let s = sqlite_server().await;
    let log = Log::default();
    let a = start_agent(&s, "a", "prepared", 0, &log).await;
    let bee = start_agent(&s, "b", "prepared", b_delay_ms, &log).await;
    let wid = wid();
    let figure = sign_figure(&a, &bee, &wid).await;
    s.ingest_ok(&figure.tokens).await;
    Seeded {
        s,
        a,
        bee,
        wid,
        figure,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rolls_back_from_the_dag_and_decides_an_escalation() {
    let Some(b) = browser::start().await else {
        return;
    };
    let Seeded {
        s,
        a,
        bee,
        wid,
        figure,
    } = seeded(300).await;

    let base = s.base.clone();
    b.run("operator_rolls_back", |c| async move {
        sign_in(&c, &base, OPERATOR_TOKEN).await;

        // The workflow list links to the workflow; its DAG has the five nodes.
        browser::click(&c, Locator::LinkText(&wid)).await;
        wait_for_text(&c, "h1", &wid).await;
        assert_eq!(
            browser::count(&c, "svg.dag a[data-jti]").await,
            5,
            "one drawn node per ECT"
        );
        assert_eq!(
            browser::count(&c, "svg.dag .k-checkpoint").await,
            2,
            "both checkpoints are drawn as checkpoints"
        );
        browser::save_screenshot(&c, "workflow-dag").await;

        // Selecting checkpoint B highlights B, B1 and B2: its blast radius.
        let node_b = format!("svg.dag a[data-jti='{}']", figure.cp_b);
        browser::click(&c, Locator::Css(&node_b)).await;
        wait_for_text(&c, "#blast-summary", "3 nodes").await;
        assert_eq!(browser::count(&c, "svg.dag .node.in-blast").await, 3);
        assert_eq!(browser::count(&c, "svg.dag .node.selected").await, 1);
        browser::save_screenshot(&c, "blast-radius").await;

        // Start a rollback from the node; the rollback page follows it to the end.
        browser::type_into(&c, "#reason", "DNS update broke resolution").await;
        browser::click(
            &c,
            Locator::XPath("//button[normalize-space()='Start rollback']"),
        )
        .await;
        wait_for_text(&c, "h1", "Rollback").await;
        assert!(path(&c).await.starts_with("/ui/rollbacks/urn"));
        wait_for_text(&c, "#rollback-status", "completed").await;
        let row = format!(
            "tr[data-checkpoint='{}'] [data-field=execute_status]",
            figure.cp_b
        );
        wait_for_text(&c, &row, "completed").await;
        wait_for_text(&c, ".panel", "rollback_complete").await;
        browser::save_screenshot(&c, "rollback-completed").await;

        // Back on the DAG the checkpoint shows as rolled back.
        browser::click(&c, Locator::LinkText(&wid)).await;
        wait_for_text(&c, "h1", &wid).await;
        assert_eq!(
            browser::count(&c, "svg.dag .st-rolled-back").await,
            1,
            "B is rolled back"
        );
    })
    .await;
    assert_eq!(bee.calls().1, 1, "agent b executed its restore once");

    // A rollback whose critical step cannot prepare waits for a person.
    a.behave("cannot_prepare");
    let wid2 = common::agents::wid();
    let (cp_a, _, _) = seed_figure(&s, &a, &bee, &wid2).await;
    let id = accepted(
        &s,
        json!({ "checkpoint_id": cp_a, "reason": "router misconfigured" }),
    )
    .await;
    let r = wait_for(&s, &id, &["awaiting_decision", "completed", "failed"]).await;
    assert_eq!(r["status"], "awaiting_decision", "{r}");

    let Some(b) = browser::start().await else {
        return;
    };
    let base = s.base.clone();
    let decided = id.clone();
    b.run("operator_decides", |c| async move {
        sign_in(&c, &base, OPERATOR_TOKEN).await;
        browser::click(&c, Locator::LinkText("Escalations")).await;
        wait_for_text(&c, "h1", "Escalations").await;
        wait_for_text(&c, "main", "critical cannot prepare").await;
        browser::save_screenshot(&c, "escalations").await;
        browser::type_into(
            &c,
            "textarea[name=comment]",
            "b is fine; roll back what we can",
        )
        .await;
        browser::click(&c, Locator::Css("button[value=proceed_partial]")).await;
        wait_for_text(&c, "main", "Nothing needs a person right now.").await;
        wait_for_text(&c, "main", "proceed_partial").await;

        // The rollback page shows the decision and the end.
        c.goto(&format!("{base}/ui/rollbacks/{decided}"))
            .await
            .unwrap();
        wait_for_text(&c, ".panel", "proceed_partial by operator:ops").await;
    })
    .await;
    let done = wait_for(&s, &id, &["partial", "failed", "completed"]).await;
    assert_ne!(done["status"], "awaiting_decision");
    assert_eq!(done["decision"]["decided_by"], "operator:ops", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_sees_the_console_without_its_actions() {
    let Some(b) = browser::start().await else {
        return;
    };
    let Seeded { s, wid, figure, .. } = seeded(0).await;
    let base = s.base.clone();
    b.run("reader_read_only", |c| async move {
        sign_in(&c, &base, READER_TOKEN).await;
        c.goto(&format!("{base}/ui/workflows/{wid}?node={}", figure.cp_a))
            .await
            .unwrap();
        wait_for_text(&c, "#blast-summary", "5 nodes").await;
        wait_for_text(&c, "aside", "actions need an operator token").await;
        assert!(
            browser::count(&c, "form[action='/ui/rollbacks']").await == 0,
            "no rollback form for a reader"
        );
        // Keyboard: the nodes are links, reachable with Tab.
        let focusable = c
            .execute(
                "return document.querySelectorAll('svg.dag a[href]').length",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(focusable, json!(5));
        for page in ["circuits", "cascades", "rollbacks", "escalations"] {
            c.goto(&format!("{base}/ui/{page}")).await.unwrap();
            wait_for_text(&c, "nav", "Workflows").await;
        }
    })
    .await;
}
