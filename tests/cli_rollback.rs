//! The operator commands as a user runs them: a real `unwind serve` process on the embedded
//! default, real agents from the `unwind-agent` crate, and the `unwind` binary as the client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::agents::{Figure, TestAgent};
use common::process::{ServeOptions, ServeProcess, ServeSetup, free_port, unwind};
use common::server::AGENT_PREFIX;
use serde_json::Value;
use unwind_agent::{CheckpointCtx, HandlerError, PrepareDecision, RestoreOutcome, RollbackHandler};

/// A coordinator on the embedded default database, and its directory.
struct Server {
    setup: ServeSetup,
    process: ServeProcess,
}

/// Starts `unwind serve` trusting one agent key for `spiffe://example.com/agent/*`.
async fn serve() -> Server {
    let setup = ServeSetup::new(ServeOptions::default()).await;
    let process = setup.start("one").await;
    Server { setup, process }
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{}\n{}", self.stdout, self.stderr);
        self
    }
}

/// Runs the client binary in the server's directory, against its URL, with its data directory
/// as the source of the admin token.
async fn cli(s: &Server, args: &[&str]) -> Output {
    let out = tokio::process::Command::from({
        let mut c = unwind();
        c.args(args)
            .args(["--url", s.process.base()])
            .env("UNWIND_DATA_DIR", &s.process.data_dir)
            .current_dir(s.setup.dir.path());
        c
    })
    .output()
    .await
    .unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

struct Restorer {
    cannot_prepare: bool,
}

#[unwind_agent::async_trait]
impl RollbackHandler for Restorer {
    async fn prepare(&self, _ctx: &CheckpointCtx) -> PrepareDecision {
        if self.cannot_prepare {
            PrepareDecision::CannotPrepare("resource locked".into())
        } else {
            PrepareDecision::Prepared
        }
    }

    async fn restore(
        &self,
        _ctx: &CheckpointCtx,
        _snapshot: Vec<u8>,
    ) -> Result<RestoreOutcome, HandlerError> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(RestoreOutcome::completed())
    }
}

async fn start_agent(s: &Server, name: &str, cannot_prepare: bool) -> TestAgent<()> {
    let handler = Arc::new(Restorer { cannot_prepare });
    s.setup.start_agent(&s.process, name, handler, ()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rolls_back_the_seed_figure_from_the_command_line() {
    let s = serve().await;
    let a = start_agent(&s, "a", false).await;
    let b = start_agent(&s, "b", false).await;
    let wid = uuid::Uuid::new_v4().to_string();
    let Figure {
        cp_a,
        a1,
        cp_b,
        b1,
        b2,
        ..
    } = s.process.seed_figure(&a, &b, &wid).await;

    // Blast radius of A: everything below it, both agents, both checkpoints.
    let radius = cli(&s, &["blast-radius", &cp_a, "--output", "json"])
        .await
        .ok()
        .json();
    let nodes: Vec<&str> = radius["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for jti in [&a1, &cp_b, &b1, &b2] {
        assert!(nodes.contains(&jti.as_str()), "{jti} missing: {radius}");
    }
    assert_eq!(
        radius["checkpoints"].as_array().unwrap().len(),
        2,
        "{radius}"
    );
    let text = cli(&s, &["blast-radius", &cp_a]).await.ok().stdout;
    assert!(text.contains(&format!("{AGENT_PREFIX}b")), "{text}");
    assert!(text.contains("checkpoints (2)"), "{text}");

    // Create and watch: one JSON event a line, ending completed, exit 0.
    let watched = cli(
        &s,
        &[
            "rollback",
            "create",
            "--checkpoint",
            &cp_a,
            "--reason",
            "router broke",
            "--watch",
            "--output",
            "json",
        ],
    )
    .await
    .ok();
    let events: Vec<Value> = watched
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = events.last().expect("at least one event");
    assert_eq!(last["status"], "completed", "{}", watched.stdout);
    let id = last["rollback_id"].as_str().unwrap().to_string();
    assert!(events.iter().all(|e| e["rollback_id"] == id));

    // Get: both steps, b's checkpoint first.
    let got = cli(&s, &["rollback", "get", &id, "--output", "json"])
        .await
        .ok()
        .json();
    let steps = got["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{got}");
    assert_eq!(steps[0]["checkpoint_id"], cp_b.as_str());
    assert_eq!(steps[1]["checkpoint_id"], cp_a.as_str());
    let table = cli(&s, &["rollback", "get", &id]).await.ok().stdout;
    assert!(table.contains("completed"), "{table}");
    assert!(
        table.contains("RANK") && table.contains(&cp_a) && table.contains(&cp_b),
        "{table}"
    );

    // Watching a finished rollback replays its final state and exits 0.
    let again = cli(&s, &["rollback", "watch", &id]).await.ok().stdout;
    assert!(again.contains(&format!("{id} completed")), "{again}");

    // List, filtered by workflow and status.
    let listed = cli(
        &s,
        &[
            "rollback",
            "list",
            "--wid",
            &wid,
            "--status",
            "completed",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    let ids: Vec<&Value> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["rollback_id"])
        .collect();
    assert_eq!(ids, vec![&Value::String(id.clone())], "{listed}");
    let text = cli(&s, &["rollback", "list"]).await.ok().stdout;
    assert!(text.contains(&id) && text.contains("STATUS"), "{text}");

    // A decision on a rollback that awaits none is refused: exit 1, the code named.
    let refused = cli(&s, &["rollback", "decide", &id, "--decision", "abort"]).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("not_awaiting_decision"),
        "{}",
        refused.stderr
    );

    // Refusals from the API name their code too.
    let refused = cli(&s, &["rollback", "create", "--checkpoint", &a1]).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("not_a_checkpoint"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_3_while_a_decision_is_awaited() {
    let s = serve().await;
    let a = start_agent(&s, "a", true).await;
    let b = start_agent(&s, "b", false).await;
    let wid = uuid::Uuid::new_v4().to_string();
    let Figure { cp_a, .. } = s.process.seed_figure(&a, &b, &wid).await;

    let waiting = cli(
        &s,
        &["rollback", "create", "--checkpoint", &cp_a, "--watch"],
    )
    .await;
    assert_eq!(
        waiting.code,
        Some(3),
        "{}\n{}",
        waiting.stdout,
        waiting.stderr
    );
    let id = waiting
        .stdout
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(id.starts_with("urn:uuid:"), "{}", waiting.stdout);
    assert!(
        waiting
            .stderr
            .contains(&format!("unwind rollback decide {id} --decision")),
        "{}",
        waiting.stderr
    );
    let listed = cli(
        &s,
        &[
            "rollback",
            "list",
            "--status",
            "awaiting_decision",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(listed["items"][0]["rollback_id"], id.as_str(), "{listed}");

    // What waits for a person is a gauge too, for alerts that fire while nobody decides.
    let metrics = reqwest::get(s.process.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(gauge("unwind_rollbacks_awaiting_decision"), 1.0);
    assert_eq!(gauge("unwind_escalations_open"), 1.0);
    assert!(gauge("unwind_rollback_decision_wait_seconds") >= 0.0);

    let decided = cli(
        &s,
        &[
            "rollback",
            "decide",
            &id,
            "--decision",
            "proceed_partial",
            "--comment",
            "a is fine",
        ],
    )
    .await
    .ok();
    assert!(decided.stdout.starts_with(&id), "{}", decided.stdout);
    // The requested checkpoint was not undone: the rollback fails, and watch says so with 1.
    let ended = cli(&s, &["rollback", "watch", &id]).await;
    assert_eq!(ended.code, Some(1), "{}\n{}", ended.stdout, ended.stderr);
    assert!(ended.stderr.contains("ended failed"), "{}", ended.stderr);
}

#[test]
fn a_missing_token_file_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = unwind()
        .args(["rollback", "list", "--data-dir", "nowhere"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere/admin.token"), "{err}");
    assert!(err.contains("--token"), "{err}");
}

#[test]
fn an_unreachable_coordinator_fails_naming_its_url() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = unwind()
        .args(["rollback", "get", "urn:uuid:0", "--url", &url])
        .env("UNWIND_TOKEN", "some-token")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url), "{err}");
}

#[test]
fn every_client_command_shows_an_example_in_its_help() {
    for args in [
        &["blast-radius", "--help"][..],
        &["rollback", "create", "--help"],
        &["rollback", "get", "--help"],
        &["rollback", "watch", "--help"],
        &["rollback", "decide", "--help"],
        &["rollback", "list", "--help"],
    ] {
        let out = unwind().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Example: unwind "), "{args:?}: {help}");
        assert!(help.contains("UNWIND_URL"), "{args:?}: {help}");
    }
}
